"""Subscriptions: billing periods, one active per customer, mid-period plan changes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing.invoicing import BillingPeriod, period_for, subscription_periods
from billing.models import Invoice, InvoiceLine, Subscription
from billing.services import ValidationError
from tests.billing.helpers import (
    APRIL,
    MAY,
    amounts,
    customer,
    ev,
    generate,
    lines,
    per_unit,
    plan,
    quantities,
    store,
    subscribe,
)

pytestmark = pytest.mark.django_db
D = Decimal


def periods(sub: Subscription, ended_before: date | None = None) -> list[tuple[date, ...]]:
    return [
        (p.start, p.end, p.service_start, p.service_end)
        for p in subscription_periods(sub, ended_before=ended_before)
    ]


def test_calendar_month_periods_from_a_mid_month_start() -> None:
    sub = subscribe(customer(), plan(), start=date(2026, 1, 15))
    assert periods(sub, ended_before=date(2026, 4, 1)) == [
        (date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 15), date(2026, 2, 1)),
        (date(2026, 2, 1), date(2026, 3, 1), date(2026, 2, 1), date(2026, 3, 1)),
        (date(2026, 3, 1), date(2026, 4, 1), date(2026, 3, 1), date(2026, 4, 1)),
    ]
    # A period that ends after the cut-off is not listed yet.
    assert len(periods(sub, ended_before=date(2026, 3, 31))) == 2


def test_anchor_day_periods_and_end_date() -> None:
    sub = subscribe(customer(), plan(), start=date(2025, 12, 20), anchor_day=15)
    sub.end_date = date(2026, 2, 20)
    assert periods(sub) == [
        (date(2025, 12, 15), date(2026, 1, 15), date(2025, 12, 20), date(2026, 1, 15)),
        (date(2026, 1, 15), date(2026, 2, 15), date(2026, 1, 15), date(2026, 2, 15)),
        (date(2026, 2, 15), date(2026, 3, 15), date(2026, 2, 15), date(2026, 2, 20)),
    ]
    assert period_for(sub, date(2026, 1, 15)) == BillingPeriod(
        date(2026, 1, 15), date(2026, 2, 15), date(2026, 1, 15), date(2026, 2, 15)
    )
    with pytest.raises(ValueError, match="does not start a billing period"):
        period_for(sub, date(2026, 1, 1))


def test_a_new_subscription_ends_the_running_one_on_its_start_date() -> None:
    acme = customer()
    first = subscribe(acme, plan("a"), start=date(2026, 1, 1))
    second = subscribe(acme, plan("b"), start=date(2026, 4, 11))
    first.refresh_from_db()
    assert first.end_date == date(2026, 4, 11)
    assert second.end_date is None
    # Only one subscription covers any day.
    assert Subscription.objects.filter(customer=acme, end_date__isnull=True).count() == 1


def test_a_subscription_that_ended_before_is_left_alone() -> None:
    acme = customer()
    first = subscribe(acme, plan("a"), start=date(2026, 1, 1), end_date=date(2026, 3, 1))
    subscribe(acme, plan("b"), start=date(2026, 3, 1))
    first.refresh_from_db()
    assert first.end_date == date(2026, 3, 1)


def test_overlapping_or_invalid_subscriptions_are_refused() -> None:
    acme = customer()
    first = subscribe(acme, plan("a"), start=date(2026, 4, 11))
    for start in (date(2026, 4, 11), date(2026, 3, 1)):
        with pytest.raises(ValidationError) as exc:
            subscribe(acme, plan("b"), start=start)
        assert set(exc.value.errors) == {"start_date"}
    with pytest.raises(ValidationError) as exc:
        subscribe(acme, plan("c"), start=date(2026, 5, 1), end_date=date(2026, 5, 1))
    assert set(exc.value.errors) == {"end_date"}
    with pytest.raises(ValidationError) as exc:
        subscribe(acme, plan("d"), start=date(2026, 5, 1), anchor_day=29)
    assert set(exc.value.errors) == {"anchor_day"}
    first.refresh_from_db()
    assert first.end_date is None
    assert Subscription.objects.count() == 1


def test_mid_period_plan_change_prorates_both_invoices_and_splits_usage() -> None:
    acme = customer()
    starter = plan(
        "starter",
        flat_fee="30.00",
        charges=[per_unit("output_tokens", "10", included_units=D(300_000))],
    )
    pro = plan("pro", flat_fee="60.00", charges=[per_unit("output_tokens", "5")])
    old = subscribe(acme, starter, start=date(2026, 3, 1))
    new = subscribe(acme, pro, start=date(2026, 4, 11))
    old.refresh_from_db()
    store(
        ev("acme", "2026-03-31 23:59:59", output_tokens=999),  # March
        ev("acme", "2026-04-05 12:00", output_tokens=1_000_000),  # starter
        ev("acme", "2026-04-10 23:59:59", output_tokens=200_000),  # starter
        ev("acme", "2026-04-11 00:00:00", output_tokens=400_000),  # pro
        ev("acme", "2026-04-20 08:00", output_tokens=2_000_000),  # pro
        ev("acme", "2026-05-01 00:00:00", output_tokens=777),  # May
    )
    before, after = generate(old), generate(new)
    assert (before.period_start, before.period_end) == (APRIL, MAY)
    assert (before.service_start, before.service_end) == (APRIL, date(2026, 4, 11))
    assert (after.service_start, after.service_end) == (date(2026, 4, 11), MAY)
    # April has 30 days: starter 10 of them, pro 20.
    # starter: 30.00 * 10/30 = 10.00; included 300,000 * 10/30 = 100,000;
    #          (1,200,000 - 100,000) * $10/M = 11.00
    assert amounts(before) == [
        ("flat_fee", "Starter (10 of 30 days)", D("10.00")),
        ("usage", "output tokens", D("11.00")),
    ]
    usage = lines(before)[1]
    assert (usage.quantity, usage.included_units, usage.billable_quantity) == (
        D(1_200_000),
        D(100_000),
        D(1_100_000),
    )
    assert before.total == D("21.00")
    # pro: 60.00 * 20/30 = 40.00; 2,400,000 * $5/M = 12.00
    assert amounts(after) == [
        ("flat_fee", "Pro (20 of 30 days)", D("40.00")),
        ("usage", "output tokens", D("12.00")),
    ]
    assert after.total == D("52.00")
    assert quantities(generate(old, date(2026, 3, 1))) == {"output tokens": D(999)}
    assert Invoice.objects.filter(customer=acme, period_start=APRIL).count() == 2


def test_a_partial_first_period_prorates_by_day_and_rounds_once() -> None:
    # March 2026 has 31 days; from the 22nd, 10 of them: 10.00 * 10/31 = 3.2258… -> 3.23.
    sub = subscribe(customer(), plan("p", flat_fee="10.00"), start=date(2026, 3, 22))
    invoice = generate(sub, date(2026, 3, 1))
    (line,) = lines(invoice)
    assert line.kind == InvoiceLine.Kind.FLAT_FEE
    assert line.amount_exact.quantize(D("0.000001")) == D("3.225806")
    assert (line.amount, invoice.total) == (D("3.23"), D("3.23"))
    assert line.description == "P (10 of 31 days)"


def test_a_backdated_plan_change_refreshes_the_existing_draft() -> None:
    acme = customer()
    starter = plan("starter", flat_fee="30.00", charges=[per_unit("output_tokens", "10")])
    old = subscribe(acme, starter, start=date(2026, 3, 1))
    store(
        ev("acme", "2026-04-05 12:00", output_tokens=1_000_000),
        ev("acme", "2026-04-20 12:00", output_tokens=1_000_000),
    )
    draft = generate(old)
    assert draft.total == D("50.00")  # 30 + 2M * $10/M
    # The plan change is recorded late, back to the 11th, while April is still a draft.
    new = subscribe(acme, plan("pro", flat_fee="60.00"), start=date(2026, 4, 11))
    old.refresh_from_db()
    refreshed = generate(old)
    assert refreshed.pk == draft.pk
    assert (refreshed.service_start, refreshed.service_end) == (APRIL, date(2026, 4, 11))
    # 30 * 10/30 + 1M * $10/M: the event of the 20th is no longer the starter plan's.
    assert refreshed.total == D("20.00")
    assert generate(new).total == D("40.00")  # 60 * 20/30, no charges


def test_a_bounded_subscription_before_a_later_one_is_no_overlap() -> None:
    acme = customer()
    later = subscribe(acme, plan("a"), start=date(2026, 3, 1))
    trial = subscribe(acme, plan("trial"), start=date(2026, 1, 10), end_date=date(2026, 3, 1))
    later.refresh_from_db()
    assert (trial.end_date, later.start_date, later.end_date) == (
        date(2026, 3, 1),
        date(2026, 3, 1),
        None,
    )
    with pytest.raises(ValidationError) as exc:  # one day into the later one is an overlap
        subscribe(acme, plan("b"), start=date(2025, 12, 1), end_date=date(2026, 3, 2))
    assert set(exc.value.errors) == {"start_date"}
