"""Plain helpers for the pricing tests: events in through the real ingest path, plans,
subscriptions, rates, refreshes.

April 2026 has 30 days, so a $30 flat fee is recognized at $1.00 a day. Rates are
created with an explicit `now` so that "a new rate never rewrites past cost" holds
whatever day the tests run.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.models import Customer, Plan, Subscription
from billing.services import plan_create, subscription_create
from metering.normalize import NormalizedEvent
from pricing.models import CostRate, MarginFlag, MarginSnapshot
from pricing.services import RATES_BEGIN, RefreshResult, cost_rate_create, margins_refresh
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
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LITELLM_FIXTURE = FIXTURES / "litellm_prices.json"
# The real catalog, where the shared data is checked out beside the repository.
LITELLM_REAL = Path(__file__).resolve().parents[2].parent / "shared/data/litellm_model_prices.json"


def store(*events: NormalizedEvent) -> None:
    """One ingest batch through the real write path (any timestamp accepted)."""
    factories.store(*events, source="pricing-tests")


def plan(code: str, *, flat_fee: str = "0", **kw: Any) -> Plan:
    return plan_create(code=code, name=kw.pop("name", code.title()), flat_fee=D(flat_fee), **kw)


def subscribe(cust: Customer, p: Plan, start: date = date(2026, 1, 1), **kw: Any) -> Subscription:
    return subscription_create(customer=cust, plan=p, start_date=start, **kw)


def token_rates(
    model: str, *, since: datetime = RATES_BEGIN, now: datetime | None = None, **per_million: str
) -> None:
    """Per-token rates of one model, given per million tokens by token class."""
    for token_class, price in per_million.items():
        cost_rate_create(
            kind=CostRate.Kind.TOKEN,
            model=model,
            token_class=token_class,
            usd_per_million_tokens=D(price),
            effective_from=since,
            now=now or since,
        )


def gpu_rate(
    hardware: str,
    hourly: str,
    utilization: str,
    *,
    since: datetime = RATES_BEGIN,
    now: datetime | None = None,
) -> None:
    cost_rate_create(
        kind=CostRate.Kind.GPU,
        hardware=hardware,
        gpu_hour_rate=D(hourly),
        utilization=D(utilization),
        effective_from=since,
        now=now or since,
    )


def refresh(as_of: str, period: date = APRIL) -> RefreshResult:
    return margins_refresh(period=period, as_of=at(as_of))


def snapshot(external_id: str = "acme", period: date = APRIL) -> MarginSnapshot:
    return MarginSnapshot.objects.get(customer__external_id=external_id, period=period)


def active_flag(external_id: str = "acme", period: date = APRIL) -> MarginFlag | None:
    return MarginFlag.objects.filter(
        customer__external_id=external_id, period=period, cleared_at__isnull=True
    ).first()
