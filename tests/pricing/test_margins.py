"""Margins on real stored usage, every number computed by hand.

Rates are USD per million tokens unless said otherwise. April 2026 has 30 days."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import invoicing
from metering.rollup import usage_rollup_fold
from pricing.margins import customer_periods, margins_compute
from pricing.models import MarginFlag
from tests.pricing.helpers import (
    APRIL,
    at,
    customer,
    ev,
    gpu_rate,
    per_unit,
    plan,
    refresh,
    snapshot,
    store,
    subscribe,
    token_rates,
)

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def gpt4o() -> None:
    token_rates("gpt-4o", input="2.50", cache_read="1.25", output="10")


def test_flat_plan_customer_turns_negative_mid_month(gpt4o: None) -> None:
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    # 60,000 uncached × 2.5e-6 + 40,000 cached × 1.25e-6 + 20,000 out × 1e-5 = 0.40
    store(
        ev(
            "acme",
            "2026-04-02 10:15",
            input_tokens=100_000,
            cache_read_input_tokens=40_000,
            output_tokens=20_000,
        )
    )
    refresh("2026-04-05 12:00")
    early = snapshot()
    # 5 days started of 30: the $30 fee is recognized at $1 a day.
    assert (early.revenue, early.cost, early.margin) == (D("5.00"), D("0.40"), D("4.60"))
    assert early.margin_ratio == D("0.92")
    assert early.revenue_basis == "accrued" and early.is_open and early.is_flat
    # Run rate: 0.40 over 4.5 days → 0.40 × 30 / 4.5 over the month; revenue $30.
    assert early.projected_cost == D("2.666666666667")
    assert early.projected_revenue == D("30.00")
    assert early.flag == ""

    # On the 12th: ten requests of 1M input and 100k output, 3.50 each.
    store(
        *(
            ev("acme", f"2026-04-12 09:{m:02d}", input_tokens=1_000_000, output_tokens=100_000)
            for m in range(10)
        )
    )
    usage_rollup_fold()  # some usage folded, the rest read from the tail
    store(ev("acme", "2026-04-12 10:00", model="gpt-4o"))  # zero tokens: costs nothing
    refresh("2026-04-12 18:00")
    late = snapshot()
    assert late.cost == D("35.40")
    assert late.revenue == D("12.00")  # 12 days started
    assert late.margin == D("-23.40") and late.flag == "negative_margin"
    assert late.requests == 12
    flag = MarginFlag.objects.get()
    assert (flag.kind, flag.is_flat, flag.cleared_at) == ("negative_margin", True, None)
    assert flag.margin == D("-23.40")
    top = late.insights["top_models"][0]
    assert top["model"] == "gpt-4o" and D(top["cost"]) == D("35.40")
    # cache-read share of input: 40,000 of 10,100,000
    assert late.insights["cache_read_share"] == "0.0040"

    # The period closes without an invoice yet: revenue is the billing engine's $30.
    refresh("2026-05-02 00:00")
    closed = snapshot()
    assert closed.revenue_basis == "estimate" and not closed.is_open
    assert (closed.revenue, closed.margin) == (D("30.00"), D("-5.40"))
    assert MarginFlag.objects.count() == 1  # still the same negative_margin flag


def test_low_margin_and_projected_negative(gpt4o: None) -> None:
    subscribe(customer("thin"), plan("unlimited", flat_fee="30"))
    subscribe(customer("fast"), plan("unlimited", flat_fee="30"))
    # thin: 0.90 of cost on 1 day of revenue ($1.00): ratio 0.10 < 0.20.
    store(ev("thin", "2026-04-01 08:00", input_tokens=360_000))
    # fast: 1.80 in the first 1.5 days: positive now (2.00 recognized), 36.00 by month end.
    store(ev("fast", "2026-04-02 08:00", input_tokens=720_000))
    refresh("2026-04-01 12:00")
    assert snapshot("thin").flag == "low_margin"
    assert snapshot("thin").margin_ratio == D("0.1")
    refresh("2026-04-02 12:00")
    fast = snapshot("fast")
    assert (fast.revenue, fast.cost) == (D("2.00"), D("1.80"))
    assert fast.projected_cost == D("36.00") and fast.projected_revenue == D("30.00")
    assert fast.flag == "projected_negative"
    # thin: 2 days recognized now, cost 0.90: ratio 0.55, the flag clears.
    assert snapshot("thin").flag == ""
    thin_flags = MarginFlag.objects.filter(customer__external_id="thin")
    assert [(f.kind, f.cleared_at is not None) for f in thin_flags] == [("low_margin", True)]


def test_a_rate_change_in_the_middle_of_a_period() -> None:
    token_rates("gpt-4o-mini", input="0.15", output="0.60")
    # Announced on the 14th, in force from the 15th.
    token_rates(
        "gpt-4o-mini", since=at("2026-04-15 00:00"), now=at("2026-04-14 09:00"), output="0.50"
    )
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    store(
        ev(
            "acme",
            "2026-04-10 10:00",
            "gpt-4o-mini",
            input_tokens=1_000_000,
            output_tokens=1_000_000,
        ),
        ev("acme", "2026-04-14 23:59:59", "gpt-4o-mini", output_tokens=1_000_000),
        ev(
            "acme",
            "2026-04-20 10:00",
            "gpt-4o-mini",
            input_tokens=1_000_000,
            output_tokens=1_000_000,
        ),
    )
    usage_rollup_fold()
    refresh("2026-05-01 00:00")
    # 0.15 + 0.60, then 0.60, then 0.15 + 0.50
    assert snapshot().cost == D("2.00")


def test_a_rate_change_inside_an_hour_costs_that_hour_from_its_events() -> None:
    token_rates("claude-sonnet-4", input="3")
    token_rates(
        "claude-sonnet-4", since=at("2026-04-18 12:30"), now=at("2026-04-18 12:00"), input="4"
    )
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    store(
        ev("acme", "2026-04-18 12:10", "claude-sonnet-4", input_tokens=1_000_000),
        ev("acme", "2026-04-18 12:50", "claude-sonnet-4", input_tokens=1_000_000),
    )
    usage_rollup_fold()  # both in one hourly rollup row
    refresh("2026-05-01 00:00")
    assert snapshot().cost == D("7.00")  # 3.00 before 12:30, 4.00 after


def test_new_rates_never_rewrite_past_cost() -> None:
    from pricing.services import RateError, cost_rate_create

    token_rates("gpt-4o", output="10")
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    store(ev("acme", "2026-04-10 10:00", output_tokens=1_000_000))
    refresh("2026-04-20 00:00")
    assert snapshot().cost == D("10.00")
    with pytest.raises(RateError) as raised:
        cost_rate_create(
            kind="token",
            model="gpt-4o",
            token_class="output",
            usd_per_million_tokens=D("20"),
            effective_from=at("2026-04-01 00:00"),
            now=at("2026-04-20 00:00"),
        )
    assert "effective_from" in raised.value.errors
    # Allowed from the current hour on: past usage keeps its cost.
    token_rates("gpt-4o", since=at("2026-04-20 00:00"), now=at("2026-04-20 00:10"), output="20")
    store(ev("acme", "2026-04-21 10:00", output_tokens=1_000_000))
    refresh("2026-04-22 00:00")
    assert snapshot().cost == D("30.00")


def test_gpu_hour_rate_with_utilization() -> None:
    gpu_rate("h100", "3.60", "0.6")
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    store(
        ev(
            "acme",
            "2026-04-03 10:00",
            "llama-3.1-70b",
            hardware="h100",
            gpu_seconds="600",
            input_tokens=20_000,
            output_tokens=4_000,
        ),
        ev("acme", "2026-04-04 10:00", "llama-3.1-70b", hardware="h100", gpu_seconds="300.5"),
    )
    refresh("2026-05-01 00:00")
    s = snapshot()
    # 900.5 GPU-seconds × 3.60 / 3600 / 0.6 = 900.5 / 600 = 1.500833333333…
    assert s.gpu_cost == D("1.500833333333") and s.token_cost == 0
    assert s.cost == D("1.500833333333") and s.uncosted_requests == 0
    assert s.breakdown["hardware"][0]["hardware"] == "h100"
    assert D(s.breakdown["hardware"][0]["gpu_seconds"]) == D("900.5")


def test_events_with_no_rate_are_counted_as_uncosted(gpt4o: None) -> None:
    token_rates("half-priced", input="1")  # input only: its output tokens are uncosted
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    store(
        ev("acme", "2026-04-03 10:00", input_tokens=1_000_000),  # 2.50
        ev("acme", "2026-04-03 11:00", "mystery-9b", input_tokens=7_000, output_tokens=500),
        ev("acme", "2026-04-03 12:00", "mystery-9b", hardware="a100", gpu_seconds="12.5"),
        ev("acme", "2026-04-03 13:00", "half-priced", input_tokens=2_000_000, output_tokens=300),
    )
    refresh("2026-05-01 00:00")
    s = snapshot()
    assert s.cost == D("4.50")  # 2.50 + 2 × 1.00
    assert (s.uncosted_requests, s.uncosted_tokens, s.uncosted_gpu_seconds) == (2, 7_800, D("12.5"))
    assert s.breakdown["uncosted_models"] == ["mystery-9b"]
    mystery = next(m for m in s.breakdown["models"] if m["model"] == "mystery-9b")
    assert mystery["uncosted_requests"] == 2 and mystery["cost"] == "0.000000"


def test_a_plan_change_in_the_middle_of_a_period(gpt4o: None) -> None:
    acme = customer("acme")
    flat = subscribe(acme, plan("unlimited", flat_fee="30"))
    usage = subscribe(
        acme,
        plan("payg", charges=[per_unit("input_tokens", "5"), per_unit("output_tokens", "15")]),
        start=at("2026-04-11 00:00").date(),
    )
    # Cost: 1M in + 0.2M out = 2.50 + 2.00; then 2M in + 0.5M out = 5.00 + 5.00.
    store(ev("acme", "2026-04-05 10:00", input_tokens=1_000_000, output_tokens=200_000))
    store(ev("acme", "2026-04-20 08:00", input_tokens=2_000_000, output_tokens=500_000))
    usage_rollup_fold()

    refresh("2026-04-20 12:00")
    s = snapshot()
    # Flat: 10 of 30 days, all of them past: 10.00. Usage plan so far: 2M × 5/M + 0.5M × 15/M.
    assert (s.revenue, s.cost, s.margin) == (D("27.50"), D("14.50"), D("13.00"))
    assert s.plan_codes == ["payg", "unlimited"] and not s.is_flat
    assert s.projected_cost == D("22.307692307692")  # 14.50 × 30 / 19.5
    # The period brings at least 27.50 (charges only grow with usage), more than the
    # projected cost: the projection is not rated, nothing can turn negative.
    assert s.projected_revenue is None and s.flag == ""
    # Rated: the usage plan's run rate is 9.5 of its 20 days → × 20/9.5, line by line:
    # 4,210,526.3… in × 5/M = 21.05; 1,052,631.5… out × 15/M = 15.79; plus the flat 10.00.
    (figures,) = margins_compute(
        periods=customer_periods(period=APRIL), as_of=at("2026-04-20 12:00")
    )
    assert figures.project() == D("46.84")

    refresh("2026-05-01 00:00")
    estimate = snapshot()
    assert (estimate.revenue_basis, estimate.revenue) == ("estimate", D("27.50"))

    # Once invoiced, revenue is what the invoices bill.
    first = invoicing.invoice_generate(subscription_id=flat.id, period_start=APRIL)
    second = invoicing.invoice_generate(subscription_id=usage.id, period_start=APRIL)
    assert (first.total, second.total) == (D("10.00"), D("17.50"))
    refresh("2026-05-02 00:00")
    s = snapshot()
    assert (s.revenue_basis, s.revenue, s.cost, s.margin) == (
        "invoice",
        D("27.50"),
        D("14.50"),
        D("13.00"),
    )
    assert s.margin_ratio == D("0.472727")


def test_customers_without_subscription_or_usage() -> None:
    token_rates("gpt-4o", output="10")
    customer("idle")
    customer("freeloader")
    store(ev("freeloader", "2026-04-03 10:00", output_tokens=100_000))
    result = refresh("2026-04-10 00:00")
    assert result.customers == 1  # idle has neither a subscription nor usage
    s = snapshot("freeloader")
    assert (s.revenue_basis, s.revenue, s.cost, s.flag) == ("none", 0, D("1.00"), "negative_margin")


def test_refresh_is_idempotent_and_an_older_computation_never_wins(gpt4o: None) -> None:
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    store(ev("acme", "2026-04-03 10:00", output_tokens=5_000_000))
    refresh("2026-04-04 12:00")
    refresh("2026-04-04 12:00")
    assert MarginFlag.objects.count() == 1
    newer = snapshot()
    refresh("2026-04-03 12:00")  # late, older: ignored
    assert snapshot().as_of == newer.as_of and snapshot().revenue == D("4.00")
