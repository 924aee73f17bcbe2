import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pricing.management.commands._options import parse_month
from pricing.reports import simulation_dict, simulation_table
from pricing.simulate import SimulationError, plan_simulate


class Command(BaseCommand):
    help = (
        "Re-rate every customer's actual usage of a past period under a candidate plan: "
        "revenue then and now, cost, margin then and now, and who moves into or out of "
        "negative margin. Writes nothing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--plan", required=True, metavar="CODE")
        parser.add_argument("--plan-version", type=int, help="default: the latest version")
        parser.add_argument("--period", required=True, metavar="YYYY-MM")
        parser.add_argument("--format", choices=["table", "json"], default="table")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = plan_simulate(
                plan_code=options["plan"],
                plan_version=options["plan_version"],
                period=parse_month(options["period"]),
            )
        except SimulationError as exc:
            raise CommandError(str(exc)) from exc
        if options["format"] == "json":
            self.stdout.write(json.dumps(simulation_dict(result), indent=2))
        else:
            self.stdout.write(simulation_table(result))
