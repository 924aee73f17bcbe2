import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from pricing.management.commands._options import parse_month
from pricing.reports import margin_report_csv, margin_report_dict, margin_report_table
from pricing.selectors import margin_report


class Command(BaseCommand):
    help = (
        "Customers' revenue, compute cost and margin in a period, worst margin first, with "
        "totals, as of the last refresh (refresh_margins runs one now)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--period", required=True, metavar="YYYY-MM")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.add_argument("--flagged", action="store_true", help="only flagged customers")

    def handle(self, *args: Any, **options: Any) -> None:
        report = margin_report(period=parse_month(options["period"]), flagged=options["flagged"])
        if options["format"] == "json":
            self.stdout.write(json.dumps(margin_report_dict(report), indent=2))
        elif options["format"] == "csv":
            self.stdout.write(margin_report_csv(report), ending="")
        else:
            self.stdout.write(margin_report_table(report))
