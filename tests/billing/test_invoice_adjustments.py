"""Late usage for a finalized period: an adjustment line on the next invoice, exactly once."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing import invoicing
from billing.invoicing import invoice_finalize, invoice_void
from billing.models import Invoice, InvoiceLine, Plan
from tests.billing.helpers import (
    APRIL,
    JUNE,
    MAY,
    at,
    customer,
    ev,
    fresh,
    lines,
    per_unit,
    plan,
    store,
    subscribe,
    tiered_plan,
)

pytestmark = pytest.mark.django_db
D = Decimal


def adjustments(invoice: Invoice) -> list[tuple[str, Decimal, Decimal, int | None]]:
    """(metric, quantity, amount, adjusted invoice id) of each adjustment line."""
    return [
        (line.metric, line.quantity, line.amount, line.adjusts_invoice_id)
        for line in lines(invoice)
        if line.kind == InvoiceLine.Kind.ADJUSTMENT
    ]


def cycle(subscription_id: int, period_start: date, as_of: str) -> None:
    invoicing.invoices_generate_chunk(
        subscription_ids=[subscription_id], period_start=period_start, as_of=at(as_of)
    )


@pytest.fixture(name="tiered_plan")
def tiered_plan_fixture() -> Plan:
    return tiered_plan()


def test_late_usage_becomes_one_adjustment_line_per_charge_on_the_next_invoice(
    tiered_plan,
) -> None:
    sub = subscribe(customer(), tiered_plan)
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_500_000, input_tokens=800_000))
    cycle(sub.id, APRIL, "2026-05-02 00:00")  # past the 24 h grace: finalized
    april = Invoice.objects.get(period_start=APRIL)
    # 10 + (1.5M - 1M included) * $10/M + 0.8M * $2/M = 10 + 5.00 + 1.60
    assert (april.status, april.number, april.total) == ("finalized", "INV-000001", D("16.60"))

    store(ev("acme", "2026-04-20 00:00", output_tokens=700_000, input_tokens=400_000))  # late
    store(ev("acme", "2026-05-05 00:00", output_tokens=100_000))
    for as_of in ("2026-05-03", "2026-05-20", "2026-06-01 12:00"):  # re-runs: one draft
        cycle(sub.id, MAY, as_of)
    may = Invoice.objects.get(period_start=MAY)
    assert may.status == "draft"
    # output: 2.2M now, 1.5M billed: rate(2.2M) - rate(1.5M) = 12.00 - 5.00 = 7.00
    # input: 1.2M now, 0.8M billed: (2.00 + 0.20) - 1.60 = 0.60 (crosses into tier 2)
    assert adjustments(may) == [
        ("output_tokens", D(700_000), D("7.00"), april.id),
        ("input_tokens", D(400_000), D("0.60"), april.id),
    ]
    descriptions = [line.description for line in lines(may) if line.kind == "adjustment"]
    assert descriptions[0] == "Output: late usage for 2026-04-01–2026-05-01 (INV-000001)"
    # May itself: 10 flat + 100k output within the included 1M + nothing of input
    assert may.total == D("17.60")
    assert fresh(april).total == D("16.60")  # the finalized invoice never changes

    cycle(sub.id, MAY, "2026-06-02 00:00")
    may = fresh(may)
    assert (may.status, may.total) == ("finalized", D("17.60"))

    # More late April usage, after May is final: only the new part, on June's invoice.
    store(ev("acme", "2026-04-29 00:00", output_tokens=100_000))
    for as_of in ("2026-07-01 01:00", "2026-07-01 02:00"):
        cycle(sub.id, JUNE, as_of)
    june = Invoice.objects.get(period_start=JUNE)
    assert adjustments(june) == [("output_tokens", D(100_000), D("1.00"), april.id)]
    assert june.total == D("11.00")
    cycle(sub.id, JUNE, "2026-07-02 00:00")
    assert fresh(june).status == "finalized"
    # Σ billed for April: 16.60 + 7.60 + 1.00 = rate of April's full usage now
    # (10 + (2.3M - 1M) * $10/M + 2.00 + 0.20 = 25.20).
    billed = sum(
        line.amount
        for line in InvoiceLine.objects.filter(adjusts_invoice=april).exclude(invoice=april)
    )
    assert april.total + billed == D("25.20")


def test_no_adjustments_without_late_usage(tiered_plan) -> None:
    sub = subscribe(customer(), tiered_plan)
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_500_000))
    cycle(sub.id, APRIL, "2026-05-02")
    store(ev("acme", "2026-05-10 00:00", output_tokens=1_500_000))
    cycle(sub.id, MAY, "2026-06-02")
    may = Invoice.objects.get(period_start=MAY)
    assert adjustments(may) == []
    assert may.total == D("15.00")


def test_late_usage_of_the_old_plan_after_a_plan_change() -> None:
    acme = customer()
    old = subscribe(acme, plan("old", charges=[per_unit("output_tokens", "10")]), start=APRIL)
    new = subscribe(acme, plan("new", charges=[per_unit("output_tokens", "1")]), start=MAY)
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_000_000))
    cycle(old.id, APRIL, "2026-05-02")
    april = Invoice.objects.get(subscription=old)
    assert (april.status, april.total) == ("finalized", D("10.00"))
    store(ev("acme", "2026-04-30 23:59", output_tokens=2_000_000))  # late, old plan's price
    store(ev("acme", "2026-05-10 00:00", output_tokens=3_000_000))
    cycle(new.id, MAY, "2026-06-01 01:00")
    may = Invoice.objects.get(subscription=new)
    assert adjustments(may) == [("output_tokens", D(2_000_000), D("20.00"), april.id)]
    assert may.total == D("23.00")  # 3M * $1/M + the old plan's 2M * $10/M


def test_a_void_invoice_is_not_adjusted(tiered_plan) -> None:
    sub = subscribe(customer(), tiered_plan)
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_500_000))
    cycle(sub.id, APRIL, "2026-05-02")
    april = Invoice.objects.get(period_start=APRIL)
    invoice_void(invoice_id=april.id)
    store(ev("acme", "2026-04-20 00:00", output_tokens=700_000))
    cycle(sub.id, MAY, "2026-06-01 01:00")
    assert adjustments(Invoice.objects.get(period_start=MAY)) == []


def test_adjustments_on_a_voided_invoice_move_to_the_next_one(tiered_plan) -> None:
    sub = subscribe(customer(), tiered_plan)
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_500_000))
    cycle(sub.id, APRIL, "2026-05-02")
    april = Invoice.objects.get(period_start=APRIL)
    store(ev("acme", "2026-04-20 00:00", output_tokens=700_000))
    cycle(sub.id, MAY, "2026-06-02")
    may = Invoice.objects.get(period_start=MAY)
    assert adjustments(may) == [("output_tokens", D(700_000), D("7.00"), april.id)]
    invoice_void(invoice_id=may.id)  # May's bill is cancelled, and with it the adjustment
    cycle(sub.id, JUNE, "2026-07-01 01:00")
    june = Invoice.objects.get(period_start=JUNE)
    assert adjustments(june) == [("output_tokens", D(700_000), D("7.00"), april.id)]


def test_late_usage_under_a_minimum_commitment_only_fills_the_commitment() -> None:
    """April's minimum is 100.00; usage below it was lifted by a true-up. Late usage
    that stays under the minimum owes nothing more; past it, only the excess."""
    sub = subscribe(customer(), plan(minimum="100.00", charges=[per_unit("output_tokens", "10")]))
    store(ev("acme", "2026-04-10 00:00", output_tokens=5_000_000))
    cycle(sub.id, APRIL, "2026-05-02")
    april = Invoice.objects.get(period_start=APRIL)
    assert [(line.kind, line.amount) for line in lines(april)] == [
        ("usage", D("50.00")),
        ("minimum", D("50.00")),
    ]
    store(ev("acme", "2026-04-20 00:00", output_tokens=3_000_000))  # usage now 80.00
    cycle(sub.id, MAY, "2026-06-02")
    may = Invoice.objects.get(period_start=MAY)
    assert may.status == "finalized"
    # usage +30.00 and the true-up down from 50.00 to 20.00: nothing more to pay
    may_adjustments = [line for line in lines(may) if line.adjusts_invoice_id == april.id]
    # usage +30.00 on an adjustment line, the true-up -30.00 on a minimum line
    assert [(line.kind, line.amount) for line in may_adjustments] == [
        ("adjustment", D("30.00")),
        ("minimum", D("-30.00")),
    ]
    assert may.total == D("100.00")  # May's own usage 0, May's true-up 100
    store(ev("acme", "2026-04-25 00:00", output_tokens=4_000_000))  # usage now 120.00
    cycle(sub.id, JUNE, "2026-07-02")
    june = Invoice.objects.get(period_start=JUNE)
    june_adjustments = [line for line in lines(june) if line.adjusts_invoice_id == april.id]
    # usage +40.00, true-up 20.00 -> 0: April billed 120.00 in all, its usage
    assert [(line.kind, line.amount) for line in june_adjustments] == [
        ("adjustment", D("40.00")),
        ("minimum", D("-20.00")),
    ]
    april_billed = april.total + sum(
        line.amount for line in InvoiceLine.objects.filter(adjusts_invoice=april)
    )
    assert april_billed == D("120.00")


def test_late_usage_of_two_finalized_periods_on_one_invoice(tiered_plan) -> None:
    """Late usage for two finalized periods lands on one invoice, one line per period."""
    sub = subscribe(customer(), tiered_plan, start=date(2026, 3, 1))
    store(ev("acme", "2026-03-10 00:00", output_tokens=1_000_000))
    cycle(sub.id, date(2026, 3, 1), "2026-04-02")
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_000_000))
    cycle(sub.id, APRIL, "2026-05-02")
    march, april = Invoice.objects.order_by("period_start")
    store(
        ev("acme", "2026-03-31 00:00", output_tokens=200_000),
        ev("acme", "2026-04-30 00:00", output_tokens=300_000),
    )
    cycle(sub.id, MAY, "2026-06-02")
    may = Invoice.objects.get(period_start=MAY)
    assert adjustments(may) == [
        ("output_tokens", D(200_000), D("2.00"), march.id),
        ("output_tokens", D(300_000), D("3.00"), april.id),
    ]
    assert invoice_finalize(invoice_id=may.id).total == D("15.00")


def test_minimum_adjustments_of_a_period_ignore_its_own_adjustments_of_earlier_ones() -> None:
    sub = subscribe(
        customer(),
        plan(minimum="100.00", charges=[per_unit("output_tokens", "10")]),
        start=date(2026, 3, 1),
    )
    store(ev("acme", "2026-03-10 00:00", output_tokens=5_000_000))  # March usage 50.00
    cycle(sub.id, date(2026, 3, 1), "2026-04-02")
    store(ev("acme", "2026-03-20 00:00", output_tokens=7_000_000))  # late March: +70.00
    cycle(sub.id, APRIL, "2026-05-02")
    april = Invoice.objects.get(period_start=APRIL)
    # April: no usage of its own (true-up 100.00); March: usage +70.00, true-up 50 -> 0.
    assert sorted(line.amount for line in lines(april)) == [
        D("-50.00"),
        D("0.00"),
        D("70.00"),
        D("100.00"),
    ]
    assert april.total == D("120.00")
    store(ev("acme", "2026-04-20 00:00", output_tokens=2_000_000))  # late April: +20.00
    cycle(sub.id, MAY, "2026-06-02")
    may = Invoice.objects.get(period_start=MAY)
    april_adjustments = [line.amount for line in lines(may) if line.adjusts_invoice_id == april.id]
    assert sorted(april_adjustments) == [D("-20.00"), D("20.00")]
    assert may.total == D("100.00")


def test_fractional_sums_beyond_six_places_are_not_adjusted_forever() -> None:
    """A quantity is stored to 6 decimal places; the billed one must compare equal to
    the one recomputed later, or every next invoice grows a spurious adjustment."""
    sub = subscribe(
        customer(),
        plan(charges=[per_unit("sum:chars", "1000", unit_size=D(1), display_name="chars")]),
    )
    store(ev("acme", "2026-04-10 00:00", properties={"chars": 0.1234567}))
    cycle(sub.id, APRIL, "2026-05-02")
    april = Invoice.objects.get(period_start=APRIL)
    (line,) = lines(april)
    assert line.quantity == D("0.123457")
    assert line.amount == D("123.46")  # the line prices what it shows: 0.123457 * 1000
    cycle(sub.id, MAY, "2026-06-02")
    assert adjustments(Invoice.objects.get(period_start=MAY)) == []
