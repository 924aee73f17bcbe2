from argparse import ArgumentParser
from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from billing.tasks import invoices_dispatch


class Command(BaseCommand):
    help = (
        "Generate invoices for every billing period ended before --as-of (default: now): "
        "drafts are refreshed, and those past the grace period are finalized. The same "
        "service the hourly beat task runs; safe to re-run."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--as-of", help="YYYY-MM-DD or an RFC 3339 date-time (UTC)")

    def handle(self, *args: Any, **options: Any) -> None:
        raw = options["as_of"]
        try:
            if raw is None:
                as_of = datetime.now(UTC)
            elif len(raw) == 10:
                as_of = datetime.combine(datetime.fromisoformat(raw).date(), time.min, tzinfo=UTC)
            else:
                as_of = datetime.fromisoformat(raw.replace("Z", "+00:00"))
                if as_of.tzinfo is None:
                    as_of = as_of.replace(tzinfo=UTC)
        except ValueError as exc:
            raise CommandError(f"--as-of: {exc}") from exc
        with transaction.atomic():
            chunks = invoices_dispatch(as_of=as_of)
        self.stdout.write(f"Dispatched {chunks} invoice chunks as of {as_of.isoformat()}.")
