from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from inferbill.db import uuid_array_register

        # The ingest claim sends its keys as binary uuid[] (inferbill.db.UuidArray).
        connection_created.connect(uuid_array_register, dispatch_uid="uuid_array_register")
