"""The chunk path (many invoices in one transaction, history read once) writes exactly
what invoice_generate and invoice_finalize write one invoice at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from billing import invoicing
from billing.invoicing import invoice_finalize, invoice_void
from billing.models import Invoice, InvoiceLine, Subscription
from tests.billing.helpers import (
    APRIL,
    MAY,
    at,
    customer,
    ev,
    generate,
    per_unit,
    plan,
    store,
    subscribe,
    tiered_plan,
)

pytestmark = pytest.mark.django_db
D = Decimal
MARCH = date(2026, 3, 1)


def _snapshot() -> list[tuple[Any, ...]]:
    invoices = {
        i.id: (i.subscription_id, i.period_start, i.status, i.total, i.service_start, i.service_end)
        for i in Invoice.objects.all()
    }
    return sorted(
        (
            *invoices[line.invoice_id],
            line.position,
            line.kind,
            line.description,
            line.metric,
            line.quantity,
            line.billable_quantity,
            line.amount_exact,
            line.amount,
            line.charge_id,
            None if line.adjusts_invoice_id is None else invoices[line.adjusts_invoice_id][:2],
        )
        for line in InvoiceLine.objects.all()
    )


def _history() -> list[Subscription]:
    """Customers with finalized March and April invoices, late usage of both, a voided
    invoice, a minimum commitment, a plan change in April, and one new in May."""
    tiered = tiered_plan("tiered", top_tier_flat_fee="3.00")
    committed = plan(
        "committed",
        flat_fee="5.00",
        minimum="50.00",
        charges=[
            per_unit("output_tokens", "20", display_name="Output", filter={"model": "gpt-4o"}),
            per_unit("output_tokens", "4", display_name="Output, other models"),
            per_unit("gpu_seconds", "0.001", unit_size=D(1), display_name="GPU"),
        ],
    )
    a, b, c, d = (customer(name) for name in "abcd")
    subs = [
        subscribe(a, tiered, start=MARCH),
        subscribe(b, committed, start=MARCH),
        subscribe(c, tiered, start=MARCH),
        subscribe(d, tiered, start=MARCH),
    ]
    subs.append(subscribe(c, committed, start=date(2026, 4, 16)))  # c moves mid-April
    subs.append(subscribe(customer("e"), committed, start=MAY))  # nothing to adjust
    for name in "abcd":
        store(
            ev(name, "2026-03-10", output_tokens=700_000, input_tokens=600_000),
            ev(name, "2026-04-10", output_tokens=300_000, input_tokens=900_000),
            ev(name, "2026-04-20", "llama", output_tokens=200_000, gpu_seconds="12.5"),
        )
    for month, late in ((MARCH, "2026-03-20"), (APRIL, None)):
        # March is finalized, then late March usage lands on April's invoice.
        for sub in Subscription.objects.filter(start_date__lt=MAY).order_by("id"):
            for period in invoicing.subscription_periods(sub, ended_before=MAY):
                if period.start == month:
                    invoice_finalize(invoice_id=generate(sub, period.start).id)
        if late:
            store(*(ev(name, late, output_tokens=250_000, input_tokens=300_000) for name in "abcd"))
    invoice_void(invoice_id=Invoice.objects.get(customer__external_id="d", period_start=APRIL).id)
    # Late usage of finalized periods, and May's usage.
    for name in "abcde":
        store(
            ev(name, "2026-03-30", output_tokens=2_000_000, input_tokens=800_000),
            ev(name, "2026-04-02", output_tokens=1_100_000, input_tokens=50_000),
            ev(name, "2026-04-25", "llama", output_tokens=10_000, gpu_seconds="0.75"),
            ev(name, "2026-05-05", output_tokens=400_000, input_tokens=400_000),
        )
    return list(Subscription.objects.order_by("id"))


def _both_ways(
    one_by_one: Callable[[list[Subscription]], None],
    chunk: Callable[[list[Subscription]], None],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    subs = _history()
    with transaction.atomic():
        point = transaction.savepoint()
        one_by_one(subs)
        expected = _snapshot()
        transaction.savepoint_rollback(point)
    chunk(subs)
    return expected, _snapshot()


@pytest.mark.parametrize("as_of", ["2026-05-31 12:00", "2026-06-03 00:00"])
def test_chunk_equals_one_by_one(as_of: str) -> None:
    finalize = at(as_of) >= at("2026-06-02")

    def one_by_one(subs: list[Subscription]) -> None:
        for sub in subs:
            if sub.end_date is not None and sub.end_date <= MAY:
                continue
            invoice = generate(sub, MAY)
            if finalize:
                invoice_finalize(invoice_id=invoice.id)

    def chunk(subs: list[Subscription]) -> None:
        invoicing.invoices_generate_chunk(
            subscription_ids=[s.id for s in subs], period_start=MAY, as_of=at(as_of)
        )

    expected, got = _both_ways(one_by_one, chunk)
    may = [row for row in expected if row[1] == MAY]
    assert {row[7] for row in may} >= {"usage", "adjustment", "minimum", "flat_fee"}
    assert got == expected
    statuses = set(Invoice.objects.filter(period_start=MAY).values_list("status", flat=True))
    assert statuses == {"finalized" if finalize else "draft"}
