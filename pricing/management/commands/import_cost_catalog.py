from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from pricing.management.commands._options import parse_moment
from pricing.services import cost_rates_import_litellm, litellm_catalog_read


class Command(BaseCommand):
    help = (
        "Load per-token cost rates from a LiteLLM-format price file (model name → "
        "input_cost_per_token, output_cost_per_token, cache_read_input_token_cost, "
        "cache_creation_input_token_cost, output_cost_per_reasoning_token). A model new to "
        "Inferbill gets rates from the beginning; a changed price gets a new rate from the "
        "next hour (past cost never changes). Re-running it changes nothing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--litellm", required=True, metavar="PATH", help="the price file")
        parser.add_argument(
            "--provider",
            action="append",
            default=[],
            metavar="P",
            help="only entries whose litellm_provider is P (repeatable)",
        )
        parser.add_argument(
            "--model", nargs="+", action="extend", default=[], metavar="M", help="only these models"
        )
        parser.add_argument(
            "--effective-from",
            metavar="WHEN",
            help="YYYY-MM-DD or RFC 3339: when new and changed rates take effect",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            catalog = litellm_catalog_read(options["litellm"])
        except (OSError, ValueError) as exc:
            raise CommandError(f"--litellm: {exc}") from exc
        effective_from = None
        if options["effective_from"]:
            effective_from = parse_moment(options["effective_from"], name="--effective-from")
        bar = tqdm(
            total=len(catalog),
            desc="models",
            unit=" models",
            file=self.stderr._out,
            disable=options["no_progress"],
        )
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            bar.update(n - done)
            done = n

        report = cost_rates_import_litellm(
            catalog=catalog,
            providers=options["provider"],
            models=options["model"],
            effective_from=effective_from,
            progress=progress,
        )
        bar.update(len(catalog) - done)
        bar.close()
        self.stdout.write(
            f"{report.entries} catalog entries: {report.created} models created, "
            f"{report.changed} changed, {report.unchanged} unchanged, {report.skipped} skipped "
            f"(no per-token price, or filtered out); {report.rates_created} rates written."
        )
        for line in report.refused:
            self.stderr.write(f"refused: {line}")
