from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from inferbill.demo import demo_load
from pricing.demo import demo_cost_rates_load
from pricing.models import ReferencePlan
from pricing.selectors import month_start, previous_month
from pricing.services import margins_refresh


class Command(BaseCommand):
    help = (
        "Load the demo: a product with an API key, four customers on three plans (one flat "
        "'unlimited' subscriber is a heavy user of an expensive model), last month's and this "
        "month's usage, cost rates, last month's invoices and every margin. Safe to run twice."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        demo_cost_rates_load()
        result = demo_load()
        if not ReferencePlan.objects.filter(pk=1).exists():
            # Flagged flat customers are compared with what pay-as-you-go would bill.
            ReferencePlan(plan_code="usage").save()
        now = timezone.now()
        this_month = month_start(now.date())
        last_month = previous_month(this_month)
        for period in (last_month, this_month):
            margins_refresh(period=period, as_of=now)
        self.stdout.write(
            f"Demo loaded: {result.events_stored} new events, {result.invoices} invoices.\n"
            "Try:\n"
            '  curl -s -H "Authorization: Bearer $KEY" '
            "http://127.0.0.1:8000/v1/customers/initech/usage?group_by=model\n"
            '  curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/invoices\n'
            f"  .venv/bin/python manage.py margin_report --period {last_month:%Y-%m} --flagged\n"
            "API key for source 'demo-assistant' (ingest, read, billing), shown once:"
        )
        self.stdout.write(result.api_key)
