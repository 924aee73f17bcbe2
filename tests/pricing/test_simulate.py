"""What-if: a past period's actual usage re-rated under candidate plans, by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import invoicing
from pricing.simulate import SimulationError, plan_simulate
from tests.pricing.helpers import (
    APRIL,
    at,
    customer,
    ev,
    per_unit,
    plan,
    store,
    subscribe,
    token_rates,
)

pytestmark = pytest.mark.django_db
D = Decimal
AFTER = at("2026-05-03 00:00")


@pytest.fixture
def april() -> None:
    """heavy and light on a $30 flat plan; gpt-4o output costs $10 per million."""
    token_rates("gpt-4o", output="10")
    unlimited = plan("unlimited", flat_fee="30")
    heavy = subscribe(customer("heavy"), unlimited)
    subscribe(customer("light"), unlimited)
    customer("nobody")  # no subscription: not simulated
    store(
        ev("heavy", "2026-04-03 10:00", output_tokens=5_000_000),  # cost 50.00
        ev("light", "2026-04-04 10:00", output_tokens=100_000),  # cost 1.00
    )
    invoicing.invoice_generate(subscription_id=heavy.id, period_start=APRIL)
    plan("metered", flat_fee="5", charges=[per_unit("output_tokens", "15")])
    plan("cheap", charges=[per_unit("output_tokens", "8")])


def rows(result: object) -> dict[str, tuple[Decimal, Decimal, Decimal, str | None]]:
    return {
        r.customer: (r.revenue_then, r.revenue_now, r.cost, r.moved)
        for r in result.rows  # type: ignore[attr-defined]
    }


def test_a_metered_plan_moves_the_heavy_user_out_of_negative(april: None) -> None:
    result = plan_simulate(plan_code="metered", period=APRIL, as_of=AFTER)
    # heavy: then 30.00 (invoiced) − 50.00; now 5.00 + 5M × 15/M = 80.00 → +30.00
    # light: then 30.00 (billing engine's estimate) − 1.00; now 5.00 + 1.50 = 6.50 → +5.50
    assert rows(result) == {
        "heavy": (D("30.00"), D("80.00"), D("50.00"), "out_of_negative"),
        "light": (D("30.00"), D("6.50"), D("1.00"), None),
    }
    totals = result.totals()
    assert (totals["revenue_then"], totals["revenue_now"], totals["cost"]) == (
        D("60.00"),
        D("86.50"),
        D("51.00"),
    )
    assert (totals["margin_then"], totals["margin_now"]) == (D("9.00"), D("35.50"))
    assert (totals["negative_then"], totals["negative_now"], totals["out_of_negative"]) == (1, 0, 1)


def test_a_cheap_plan_moves_the_light_user_into_negative(april: None) -> None:
    result = plan_simulate(plan_code="cheap", period=APRIL, as_of=AFTER)
    # heavy: 5M × 8/M = 40.00 → −10.00 (still negative); light: 0.80 → −0.20
    assert rows(result) == {
        "heavy": (D("30.00"), D("40.00"), D("50.00"), None),
        "light": (D("30.00"), D("0.80"), D("1.00"), "into_negative"),
    }
    assert [r.customer for r in result.rows] == ["heavy", "light"]  # worst new margin first


def test_simulation_errors_name_the_field(april: None) -> None:
    with pytest.raises(SimulationError) as raised:
        plan_simulate(plan_code="nope", period=APRIL, as_of=AFTER)
    assert "plan" in raised.value.errors
    with pytest.raises(SimulationError) as raised:
        plan_simulate(plan_code="metered", period=APRIL, as_of=at("2026-04-20 00:00"))
    assert "period" in raised.value.errors
    with pytest.raises(SimulationError):
        plan_simulate(plan_code="metered", plan_version=7, period=APRIL, as_of=AFTER)


def test_customers_billed_in_another_currency_are_skipped() -> None:
    token_rates("gpt-4o", output="10")
    subscribe(customer("euro", currency="EUR"), plan("eu", flat_fee="30", currency="EUR"))
    plan("metered", charges=[per_unit("output_tokens", "15")])
    result = plan_simulate(plan_code="metered", period=APRIL, as_of=AFTER)
    assert result.rows == [] and result.skipped[0]["customer"] == "euro"
