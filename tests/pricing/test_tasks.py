"""The pricing Celery tasks, run eagerly: thin wrappers, idempotent."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pricing.models import MarginFlag, MarginSnapshot
from pricing.tasks import margins_refresh_previous_task, margins_refresh_task
from tests.pricing.helpers import MAY, customer, ev, plan, store, subscribe, token_rates

pytestmark = pytest.mark.django_db


@pytest.fixture
def heavy() -> None:
    token_rates("gpt-4o", output="10")
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    subscribe(customer("late"), plan("anchored", flat_fee="30"), anchor_day=15)
    store(
        ev("acme", "2026-04-20 10:00", output_tokens=5_000_000),
        ev("acme", "2026-05-02 10:00", output_tokens=1_000),
        ev("late", "2026-04-20 10:00", output_tokens=5_000_000),
    )


def test_the_hourly_task_refreshes_every_open_period(heavy: None) -> None:
    results = margins_refresh_task.delay("2026-05-03T12:00:00+00:00").get()
    # acme's open period is May; late's (anchored on the 15th) is April 15 – May 15.
    assert [(r["period"], r["customers"]) for r in results] == [("2026-05", 1), ("2026-04", 1)]
    late = MarginSnapshot.objects.get(customer__external_id="late", period="2026-04-01")
    assert (late.period_start.isoformat(), late.is_open, late.cost) == (
        "2026-04-15",
        True,
        Decimal("50.00"),
    )
    assert MarginFlag.objects.get().customer.external_id == "late"
    # Run again: the same numbers, no new flag.
    margins_refresh_task.delay("2026-05-03T12:00:00+00:00").get()
    assert MarginFlag.objects.count() == 1


def test_the_daily_task_refreshes_last_month(heavy: None) -> None:
    result = margins_refresh_previous_task.delay("2026-05-03T12:00:00+00:00").get()
    assert (result["period"], result["customers"], result["flagged"]) == ("2026-04", 2, 2)
    acme = MarginSnapshot.objects.get(customer__external_id="acme", period="2026-04-01")
    assert (acme.is_open, acme.revenue_basis, acme.margin) == (False, "estimate", Decimal("-20.00"))
    # Last month only: the open May period is the hourly task's.
    assert not MarginSnapshot.objects.filter(period=MAY).exists()
