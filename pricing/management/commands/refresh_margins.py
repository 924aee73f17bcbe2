from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from pricing.management.commands._options import parse_moment, parse_month
from pricing.services import margins_refresh, margins_refresh_open


class Command(BaseCommand):
    help = (
        "Recompute margins and raise or clear flags now: what the hourly beat task runs "
        "(every customer's open period), or one --period. Finance is notified of new flags."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--period", help="YYYY-MM (default: the open periods)")
        parser.add_argument("--as-of", help="YYYY-MM-DD or RFC 3339 (default: now)")

    def handle(self, *args: Any, **options: Any) -> None:
        as_of = parse_moment(options["as_of"], name="--as-of") if options["as_of"] else None
        if options["period"]:
            results = [margins_refresh(period=parse_month(options["period"]), as_of=as_of)]
        else:
            results = margins_refresh_open(as_of=as_of)
        for r in results:
            if not r.customers and r is not results[0]:
                continue
            self.stdout.write(
                f"{r.period:%Y-%m}: {r.customers} customers as of {r.as_of:%Y-%m-%d %H:%M} UTC, "
                f"{r.flagged} flagged ({len(r.raised)} raised, {r.cleared} cleared) "
                f"in {r.seconds:.1f} s"
            )
