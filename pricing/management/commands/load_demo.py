from typing import Any

from django.core.management.base import BaseCommand

from inferbill.demo import demo_load


def _cost_rates() -> None:
    # The pricing catalogue of the demo; absent until the pricing app provides it.
    try:
        from pricing.demo import demo_cost_rates_load
    except ImportError:
        return
    demo_cost_rates_load()


class Command(BaseCommand):
    help = (
        "Load the demo: a product with an API key, four customers on three plans (one flat "
        "'unlimited' subscriber is a heavy user of an expensive model), last month's and this "
        "month's usage, cost rates, and last month's invoices. Safe to run twice."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = demo_load(cost_rates=_cost_rates)
        self.stdout.write(
            f"Demo loaded: {result.events_stored} new events, {result.invoices} invoices.\n"
            "Try:\n"
            '  curl -s -H "Authorization: Bearer $KEY" '
            "http://127.0.0.1:8000/v1/customers/initech/usage?group_by=model\n"
            '  curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/invoices\n'
            "  python manage.py margin_report --period <last month YYYY-MM> --flagged\n"
            "API key for source 'demo-assistant' (ingest, read, billing), shown once:"
        )
        self.stdout.write(result.api_key)
