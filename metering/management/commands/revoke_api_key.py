from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from metering.models import ApiKey
from metering.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key, by its raw value or its prefix. Takes effect on the next request."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("key", help="The raw key (ib_<prefix>_<secret>) or its prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        parts = ApiKey.split(options["key"])
        prefix = parts[0] if parts else options["key"]
        try:
            key = api_key_revoke(prefix=prefix)
        except ApiKey.DoesNotExist as exc:
            raise CommandError(f"No API key with prefix '{prefix}'.") from exc
        self.stdout.write(f"Revoked key {key.prefix} at {key.revoked_at.isoformat()}.")
