"""Plain helpers for the billing tests: events in, plans and subscriptions, lines out.

Events go in through the real write path (`metering.ingest.events_store`), which takes
any timestamp, so the tests can use fixed months in the past and hand-compute every
number (April 2026 has 30 days, March and May 31).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from billing import invoicing
from billing.models import Customer, Invoice, InvoiceLine, Plan, Subscription
from billing.services import ChargeInput, plan_create, subscription_create
from metering.ingest import IngestResult
from metering.normalize import NormalizedEvent
from tests import factories
from tests.factories import MILLION as MILLION

# Re-exported: the tests import them from here.
from tests.factories import at as at
from tests.factories import customer as customer
from tests.factories import ev as ev
from tests.factories import per_unit as per_unit

D = Decimal
APRIL = date(2026, 4, 1)
MAY = date(2026, 5, 1)
JUNE = date(2026, 6, 1)


def store(*events: NormalizedEvent) -> IngestResult:
    """Store events as one ingest batch through the real ingest path."""
    return factories.store(*events, source="billing-tests")


def plan(code: str = "p", *, flat_fee: str = "0", minimum: str | None = None, **kw: Any) -> Plan:
    return plan_create(
        code=code,
        name=kw.pop("name", code.title()),
        flat_fee=D(flat_fee),
        minimum=None if minimum is None else D(minimum),
        **kw,
    )


def tiered_plan(code: str = "p", *, top_tier_flat_fee: str | None = None) -> Plan:
    """$10 a month; output $10/M beyond 1M included; input graduated, $2/M up to 1M then
    $1/M (plus `top_tier_flat_fee` once a unit enters the second tier)."""
    top_tier: dict[str, Any] = {"up_to": None, "unit_price": "1.00"}
    if top_tier_flat_fee is not None:
        top_tier["flat_fee"] = top_tier_flat_fee
    return plan(
        code,
        flat_fee="10.00",
        charges=[
            per_unit("output_tokens", "10", included_units=D(1_000_000), display_name="Output"),
            ChargeInput(
                metric="input_tokens",
                price_model="graduated",
                unit_size=MILLION,
                tiers=[{"up_to": 1_000_000, "unit_price": "2.00"}, top_tier],
                display_name="Input",
            ),
        ],
    )


def subscribe(cust: Customer, p: Plan, start: date = APRIL, **kw: Any) -> Subscription:
    return subscription_create(customer=cust, plan=p, start_date=start, **kw)


def generate(sub: Subscription, period_start: date = APRIL) -> Invoice:
    return invoicing.invoice_generate(subscription_id=sub.id, period_start=period_start)


def lines(invoice: Invoice) -> list[InvoiceLine]:
    return list(InvoiceLine.objects.filter(invoice=invoice).order_by("position"))


def amounts(invoice: Invoice) -> list[tuple[str, str, Decimal]]:
    """(kind, description, amount) of each line, in order."""
    return [(line.kind, line.description, line.amount) for line in lines(invoice)]


def usage_amounts(invoice: Invoice) -> dict[str, Decimal]:
    """Usage line amount by description."""
    return {
        line.description: line.amount
        for line in lines(invoice)
        if line.kind == InvoiceLine.Kind.USAGE
    }


def quantities(invoice: Invoice) -> dict[str, Decimal]:
    return {
        line.description: line.quantity
        for line in lines(invoice)
        if line.kind == InvoiceLine.Kind.USAGE
    }


def fresh(invoice: Invoice) -> Invoice:
    return Invoice.objects.get(pk=invoice.pk)
