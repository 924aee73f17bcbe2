from typing import Any

from django.core.management.base import BaseCommand

from metering.rollup import usage_rollup_fold


class Command(BaseCommand):
    help = (
        "Fold newly stored events into the hourly usage rollups now (what beat runs every minute)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = usage_rollup_fold()
        self.stdout.write(f"Folded {result.batches} ingest batches in {result.rounds} rounds.")
