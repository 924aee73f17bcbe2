from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from metering.models import ALL_SCOPES, DEFAULT_SCOPES
from metering.services import api_key_create


class Command(BaseCommand):
    help = (
        "Create an API key for a source (creating the source if needed). The raw key is "
        "printed once, alone on the last line; only its hash is stored."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--source", required=True, help="Source (product) name")
        parser.add_argument(
            "--scope",
            action="append",
            choices=ALL_SCOPES,
            help=f"Repeat for several; default: {' and '.join(DEFAULT_SCOPES)}",
        )
        parser.add_argument("--name", default="", help="A label for the key")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = options["scope"] or DEFAULT_SCOPES
        try:
            key, raw = api_key_create(
                source_name=options["source"], scopes=scopes, name=options["name"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Created key {key.prefix} for source '{key.source.name}' with scopes "
            f"{', '.join(key.scopes)}. Store it now: it is not shown again."
        )
        self.stdout.write(raw)
