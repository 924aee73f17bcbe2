"""What-if: re-rate every customer's actual usage of a past period under a candidate plan.

Cost is what the usage cost (pricing.margins); revenue "then" is what the period
actually brought in (invoices, or the billing engine's rating where none exists yet);
revenue "now" is what the billing engine rates the same usage at on the candidate
plan over the same days. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Prefetch
from django.utils import timezone

from billing.models import Charge, Plan
from pricing import selectors
from pricing.margins import customer_periods, day_start, margins_compute, revenue_on_plan

CHUNK = 2000


class SimulationError(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class SimulationRow:
    customer: str
    plans_then: list[str]
    flat_then: bool
    revenue_then: Decimal
    revenue_now: Decimal
    cost: Decimal
    uncosted_requests: int

    @property
    def margin_then(self) -> Decimal:
        return self.revenue_then - self.cost

    @property
    def margin_now(self) -> Decimal:
        return self.revenue_now - self.cost

    @property
    def moved(self) -> str | None:
        if self.margin_then >= 0 > self.margin_now:
            return "into_negative"
        if self.margin_then < 0 <= self.margin_now:
            return "out_of_negative"
        return None


@dataclass
class SimulationResult:
    plan: Plan
    period: date
    as_of: datetime
    rows: list[SimulationRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        revenue_then = sum((r.revenue_then for r in self.rows), Decimal(0))
        revenue_now = sum((r.revenue_now for r in self.rows), Decimal(0))
        cost = sum((r.cost for r in self.rows), Decimal(0))
        return {
            "customers": len(self.rows),
            "revenue_then": revenue_then,
            "revenue_now": revenue_now,
            "cost": cost,
            "margin_then": revenue_then - cost,
            "margin_now": revenue_now - cost,
            "negative_then": sum(1 for r in self.rows if r.margin_then < 0),
            "negative_now": sum(1 for r in self.rows if r.margin_now < 0),
            "into_negative": sum(1 for r in self.rows if r.moved == "into_negative"),
            "out_of_negative": sum(1 for r in self.rows if r.moved == "out_of_negative"),
        }


def plan_simulate(
    *,
    plan_code: str,
    period: date,
    plan_version: int | None = None,
    as_of: datetime | None = None,
) -> SimulationResult:
    """Every subscribed customer's period `period` (a month) re-rated on the plan."""
    as_of = (as_of or timezone.now()).astimezone(UTC)
    plans = Plan.objects.filter(code=plan_code).prefetch_related(
        Prefetch("charges", queryset=Charge.objects.order_by("position"))
    )
    plan = (
        plans.filter(version=plan_version).first()
        if plan_version is not None
        else plans.filter(is_latest=True).first()
    )
    if plan is None:
        version = f" version {plan_version}" if plan_version is not None else ""
        raise SimulationError({"plan": f"no plan '{plan_code}'{version}"})
    month = selectors.month_start(period)
    if day_start(selectors.next_month(month)) > as_of:
        raise SimulationError({"period": f"{month:%Y-%m} has not ended; simulate a past period"})
    result = SimulationResult(plan=plan, period=month, as_of=as_of)
    periods = [cp for cp in customer_periods(period=month) if cp.subscriptions]
    for i in range(0, len(periods), CHUNK):
        for fig in margins_compute(periods=periods[i : i + CHUNK], as_of=as_of):
            cp = fig.cp
            if not cp.subscriptions:
                continue
            if fig.currency != plan.currency:
                result.skipped.append(
                    {
                        "customer": fig.customer.external_id,
                        "reason": f"billed in {fig.currency}, the plan is in {plan.currency}",
                    }
                )
                continue
            revenue_now = revenue_on_plan(figures=fig, plan=plan)
            result.rows.append(
                SimulationRow(
                    customer=fig.customer.external_id,
                    plans_then=sorted({s.plan.code for s in fig.plans}),
                    flat_then=fig.is_flat,
                    revenue_then=fig.revenue,
                    revenue_now=revenue_now,
                    cost=fig.cost,
                    uncosted_requests=fig.usage.uncosted_requests,
                )
            )
    result.rows.sort(key=lambda r: (r.margin_now, r.customer))
    return result
