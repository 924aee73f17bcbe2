"""Revenue, cost and margin of customers in a billing period, computed in bulk.

Reads only: pricing.services.margins_refresh writes what this computes, and
pricing.simulate re-rates it under another plan.

- Periods: a customer's period "YYYY-MM" is the billing period that starts in that
  month on the anchor day of their subscription (calendar months by default).
- Cost: usage from hourly rollups plus the unfolded tail, split at every rate change
  and every subscription boundary, each piece costed at the rates in force when it
  starts (pricing.costing). Never a rescan of raw events, except the hours a rate
  change or `as_of` cuts through, which metering reads from that hour's events.
- Revenue, closed period: the customer's invoices for it (draft, finalized or paid),
  without the adjustments they carry for earlier periods, plus the adjustments later
  invoices carry for it. A subscription with no invoice yet is rated with the billing
  engine (basis "estimate").
- Revenue, open period (accrued): the billing engine's own lines
  (billing.invoicing.invoice_compute) on the usage so far; flat fees and minimum
  true-ups are recognized day by day (days started so far, via billing.rating.prorate),
  usage charges count as rated so far with the period's whole included units.
- Projection (open period): cost at the current run rate (cost so far × period length /
  elapsed time) against the revenue the billing engine rates for usage scaled the same
  way, flat fees in full. That rating is done only when the projected cost exceeds the
  period's floor (fees in full plus usage charges so far; charges only grow with usage),
  since below it no projection can turn negative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from django.conf import settings
from django.db.models import Prefetch, Q

from billing import rating
from billing.invoicing import BillingPeriod, invoice_compute
from billing.metering_view import ROW_METRICS, UsageRow
from billing.models import Charge, Customer, InvoiceLine, Plan, Subscription
from pricing import selectors
from pricing.costing import EXACT, RateBook, UsageCost, row_cost

COST_CURRENCY = "USD"
MONEY_PLACES = Decimal("0.000000000001")
RATIO_PLACES = Decimal("0.000001")
PRORATED_KINDS = (InvoiceLine.Kind.FLAT_FEE, InvoiceLine.Kind.MINIMUM)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


@dataclass
class CustomerPeriod:
    """A customer's billing period in a month and the subscriptions it covers."""

    customer: Customer
    period: date  # the month
    start: date
    end: date  # exclusive
    subscriptions: list[tuple[Subscription, BillingPeriod]] = field(default_factory=list)

    @property
    def edges(self) -> tuple[date, ...]:
        """Subscription boundaries strictly inside the period."""
        days = {d for _, bp in self.subscriptions for d in (bp.service_start, bp.service_end)}
        return tuple(sorted(d for d in days if self.start < d < self.end))


def customer_periods(*, period: date) -> list[CustomerPeriod]:
    """Every customer's billing period starting in the month `period`, with the
    subscriptions overlapping it (plans and charges prefetched)."""
    month, following = selectors.month_start(period), selectors.next_month(period)
    customers = Customer.objects.order_by("id").only("id", "external_id", "name", "currency")
    window_end = following + timedelta(days=31)  # a period starting in `month` ends by then
    subscriptions = list(
        Subscription.objects.filter(start_date__lt=window_end)
        .filter(Q(end_date__isnull=True) | Q(end_date__gt=month))
        .order_by("customer_id", "start_date", "id")
    )
    # One instance per plan version, charges prefetched: shared by its subscriptions.
    plans = {
        plan.id: plan
        for plan in Plan.objects.filter(id__in={s.plan_id for s in subscriptions}).prefetch_related(
            Prefetch("charges", queryset=Charge.objects.order_by("position"))
        )
    }
    by_customer: dict[int, list[Subscription]] = {}
    for subscription in subscriptions:
        subscription.plan = plans[subscription.plan_id]
        by_customer.setdefault(subscription.customer_id, []).append(subscription)
    out: list[CustomerPeriod] = []
    for customer in customers:
        subs = by_customer.get(customer.id, [])
        # The anchor of the latest subscription that started by the end of the month.
        anchored = [s for s in subs if s.start_date < following] or subs
        anchor = anchored[-1].anchor_day if anchored else 1
        start, end = rating.period_containing(day=month.replace(day=anchor), anchor_day=anchor)
        cp = CustomerPeriod(customer=customer, period=month, start=start, end=end)
        for subscription in subs:
            subscription.customer = customer
            service_start = max(start, subscription.start_date)
            service_end = min(end, subscription.end_date) if subscription.end_date else end
            if service_start < service_end:
                cp.subscriptions.append(
                    (subscription, BillingPeriod(start, end, service_start, service_end))
                )
        out.append(cp)
    return out


@dataclass
class MarginFigures:
    """One customer's numbers in one period."""

    cp: CustomerPeriod
    as_of: datetime
    is_open: bool
    usage: UsageCost
    revenue: Decimal = Decimal(0)
    revenue_basis: str = "none"
    projected_revenue: Decimal | None = None
    projected_cost: Decimal | None = None
    # Usage rows as metering reads them, by the subscription in force (None: none).
    raw_rows: dict[int | None, list[dict[str, Any]]] = field(default_factory=dict)
    revenue_parts: list[PlanRevenue] = field(default_factory=list)

    def project(self) -> Decimal | None:
        """The period's revenue with usage at its current run rate (open periods)."""
        if self.is_open and self.revenue_basis == "accrued" and self.projected_revenue is None:
            self.projected_revenue = sum((p.projected() for p in self.revenue_parts), Decimal(0))
        return self.projected_revenue

    def subscription_rows(self, subscription_id: int) -> list[UsageRow]:
        """The usage billed to one subscription, as the billing engine rates it."""
        return usage_rows_merge(self.raw_rows.get(subscription_id, ()))

    @property
    def rows(self) -> list[UsageRow]:
        """All the period's usage, as the billing engine rates it."""
        return usage_rows_merge(r for rows in self.raw_rows.values() for r in rows)

    @property
    def customer(self) -> Customer:
        return self.cp.customer

    @property
    def currency(self) -> str:
        return self.cp.customer.currency

    @property
    def comparable(self) -> bool:
        """Revenue and cost are in the same currency (no FX conversion yet)."""
        return self.currency == COST_CURRENCY

    @property
    def cost(self) -> Decimal:
        return money(self.usage.cost)

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def margin_ratio(self) -> Decimal | None:
        if not self.revenue:
            return None
        with localcontext(EXACT):
            return (self.margin / self.revenue).quantize(RATIO_PLACES, rounding=ROUND_HALF_UP)

    @property
    def projected_margin(self) -> Decimal | None:
        if self.projected_cost is None or self.projected_revenue is None:
            return None
        return self.projected_revenue - self.projected_cost

    @property
    def plans(self) -> list[Subscription]:
        return [s for s, _ in self.cp.subscriptions]

    @property
    def is_flat(self) -> bool:
        """On a flat subscription: the plan in force at the end (or as of now) has a
        flat fee and no charges."""
        current = self.current_subscription
        if current is None:
            return False
        return bool(current.plan.flat_fee) and not list(current.plan.charges.all())

    @property
    def current_subscription(self) -> Subscription | None:
        moment = min(self.as_of, day_start(self.cp.end) - timedelta(seconds=1))
        for subscription, bp in reversed(self.cp.subscriptions):
            if day_start(bp.service_start) <= moment:
                return subscription
        return self.cp.subscriptions[0][0] if self.cp.subscriptions else None

    @property
    def active(self) -> bool:
        return bool(self.cp.subscriptions) or self.usage.requests > 0


def usage_rows_merge(rows: Iterable[dict[str, Any]]) -> list[UsageRow]:
    """Metering rows summed per model, hardware and provider, in the billing engine's
    shape (pieces split at rate changes are one row again)."""
    merged: dict[tuple[str, str, str], dict[str, Decimal]] = {}
    for row in rows:
        key = (row["model"], row["hardware"], row["provider"])
        metrics = merged.get(key)
        if metrics is None:
            merged[key] = {m: Decimal(row[m]) for m in ROW_METRICS}
        else:
            for m in ROW_METRICS:
                metrics[m] += row[m]
    return [
        UsageRow(model=model, hardware=hardware, provider=provider, metrics=metrics)
        for (model, hardware, provider), metrics in merged.items()
    ]


def _elapsed_days(bp: BillingPeriod, as_of: datetime) -> int:
    seconds = (as_of - day_start(bp.service_start)).total_seconds()
    return min(max(math.ceil(seconds / 86400), 0), bp.service_days)


def _rounded_total(
    lines: Iterable[object], currency: str, *, elapsed: int | None, days: int
) -> Decimal:
    total = Decimal(0)
    for line in lines:
        amount = line.amount_exact  # type: ignore[attr-defined]
        if elapsed is not None and line.kind in PRORATED_KINDS:  # type: ignore[attr-defined]
            amount = rating.prorate(amount=amount, days_active=elapsed, days_in_period=days)
        total += rating.round_money(amount=amount, currency=currency)
    return total


def _scaled(rows: list[UsageRow], factor: Decimal) -> list[UsageRow]:
    with localcontext(EXACT):
        return [
            UsageRow(
                model=r.model,
                hardware=r.hardware,
                provider=r.provider,
                metrics={k: v * factor for k, v in r.metrics.items()},
            )
            for r in rows
        ]


@dataclass
class PlanRevenue:
    """One subscription's revenue in a period, as the billing engine rates it.

    `revenue`: the invoice amount (closed) or what is accrued so far (open). `floor`:
    what the period brings at least by its end (flat fees and minimums in full, usage
    charges on the usage so far: charges only grow with usage). `projected()`: usage
    extrapolated to the period's end at its run rate and rated; computed on demand."""

    revenue: Decimal
    floor: Decimal
    projector: Callable[[], Decimal] | None = None

    def projected(self) -> Decimal:
        return self.projector() if self.projector is not None else self.floor


RevenueCache = dict[tuple[Any, ...], PlanRevenue]


def plan_revenue(
    *,
    subscription: Subscription,
    bp: BillingPeriod,
    rows: list[UsageRow] | Callable[[], list[UsageRow]],
    as_of: datetime,
    is_open: bool,
    cache: RevenueCache | None = None,
) -> PlanRevenue:
    """One subscription's share of a period rated by the billing engine: the full
    invoice amount when closed; accrued (with its floor and projection) when open.
    `rows` may be a function making them: a plan without charges needs none, and its
    result is shared through `cache` by every subscription to it."""
    plan = subscription.plan
    if not list(plan.charges.all()):
        key = (plan.pk, bp, as_of, is_open)
        if cache is not None and key in cache:
            return cache[key]
        result = _plan_revenue(
            subscription=subscription, bp=bp, rows=[], as_of=as_of, is_open=is_open
        )
        if cache is not None and plan.pk is not None:
            cache[key] = result
        return result
    return _plan_revenue(
        subscription=subscription,
        bp=bp,
        rows=rows() if callable(rows) else rows,
        as_of=as_of,
        is_open=is_open,
    )


def _plan_revenue(
    *,
    subscription: Subscription,
    bp: BillingPeriod,
    rows: list[UsageRow],
    as_of: datetime,
    is_open: bool,
) -> PlanRevenue:
    currency = subscription.plan.currency
    days = bp.service_days
    if not is_open or as_of >= day_start(bp.service_end):
        lines = invoice_compute(subscription=subscription, period=bp, rows=rows)
        full = _rounded_total(lines, currency, elapsed=None, days=days)
        return PlanRevenue(revenue=full, floor=full)
    if as_of <= day_start(bp.service_start):
        lines = invoice_compute(subscription=subscription, period=bp, rows=[])
        return PlanRevenue(
            revenue=Decimal(0), floor=_rounded_total(lines, currency, elapsed=None, days=days)
        )
    lines = invoice_compute(subscription=subscription, period=bp, rows=rows)
    accrued = _rounded_total(lines, currency, elapsed=_elapsed_days(bp, as_of), days=days)
    floor = _rounded_total(lines, currency, elapsed=None, days=days)
    if not rows:  # plan_revenue passes none for a plan without charges
        return PlanRevenue(revenue=accrued, floor=floor)  # nothing grows with usage

    def projector() -> Decimal:
        elapsed = Decimal((as_of - day_start(bp.service_start)).total_seconds())
        span = Decimal((day_start(bp.service_end) - day_start(bp.service_start)).total_seconds())
        with localcontext(EXACT):
            factor = span / elapsed
        scaled = invoice_compute(subscription=subscription, period=bp, rows=_scaled(rows, factor))
        return _rounded_total(scaled, currency, elapsed=None, days=days)

    return PlanRevenue(revenue=accrued, floor=floor, projector=projector)


def revenue_on_plan(*, figures: MarginFigures, plan: Plan) -> Decimal:
    """What the figures' usage would bring on `plan` over the same service days, rated by
    the billing engine (accrued so far when the period is open)."""
    cp = figures.cp
    service_start = min((bp.service_start for _, bp in cp.subscriptions), default=cp.start)
    service_end = max((bp.service_end for _, bp in cp.subscriptions), default=cp.end)
    hypothetical = Subscription(
        customer=figures.customer,
        plan=plan,
        start_date=service_start,
        anchor_day=cp.subscriptions[-1][0].anchor_day if cp.subscriptions else 1,
    )
    return plan_revenue(
        subscription=hypothetical,
        bp=BillingPeriod(cp.start, cp.end, service_start, service_end),
        rows=figures.rows,
        as_of=figures.as_of,
        is_open=figures.is_open,
    ).revenue


def _group_key(cp: CustomerPeriod) -> tuple[date, date, tuple[date, ...]]:
    return (cp.start, cp.end, cp.edges)


@dataclass
class GroupUsage:
    """What the database says about customers sharing a period and its boundaries."""

    members: list[CustomerPeriod]
    period_start: datetime
    period_end: datetime
    segments: list[selectors.Segment]
    book: RateBook
    invoiced: selectors.InvoicedRevenue | None


def margins_read(*, periods: Sequence[CustomerPeriod], as_of: datetime) -> list[GroupUsage]:
    """All the reads of a computation: usage split at rate changes and subscription
    boundaries, the rates, and invoices of closed periods. Customers sharing a period
    and subscription boundaries are read together."""
    groups: dict[tuple[date, date, tuple[date, ...]], list[CustomerPeriod]] = {}
    for cp in periods:
        if day_start(cp.start) < as_of:
            groups.setdefault(_group_key(cp), []).append(cp)
    out: list[GroupUsage] = []
    for (start, end, edges), members in groups.items():
        period_start, period_end = day_start(start), day_start(end)
        read_end = min(period_end, as_of)
        boundaries = selectors.rate_boundaries(start=period_start, end=read_end)
        boundaries += [day_start(d) for d in edges]
        segments = selectors.usage_segments(
            customers=[cp.customer.external_id for cp in members],
            start=period_start,
            end=read_end,
            boundaries=boundaries,
        )
        models = {r["model"] for s in segments for rows in s.rows.values() for r in rows}
        hardware = {r["hardware"] for s in segments for rows in s.rows.values() for r in rows}
        invoiced = None
        if as_of >= period_end:
            invoiced = selectors.invoiced_revenue(
                customer_ids=[cp.customer.id for cp in members], month=members[0].period
            )
        out.append(
            GroupUsage(
                members=members,
                period_start=period_start,
                period_end=period_end,
                segments=segments,
                book=RateBook.load(models=models, hardware=hardware, before=read_end),
                invoiced=invoiced,
            )
        )
    return out


def margins_compute(
    *,
    periods: Sequence[CustomerPeriod],
    as_of: datetime,
    reads: list[GroupUsage] | None = None,
) -> list[MarginFigures]:
    """Cost, revenue and projections of each customer period, as of `as_of` (`reads`:
    what `margins_read` returned for them, when the caller read ahead)."""
    if reads is None:
        reads = margins_read(periods=periods, as_of=as_of)
    results: list[MarginFigures] = []
    cache: RevenueCache = {}
    min_projection = timedelta(hours=settings.INFERBILL_PROJECTION_MIN_HOURS)
    for group in reads:
        members, segments, book, invoiced = (
            group.members,
            group.segments,
            group.book,
            group.invoiced,
        )
        period_start, period_end = group.period_start, group.period_end
        is_open = as_of < period_end
        for cp in members:
            figures = MarginFigures(cp=cp, as_of=as_of, is_open=is_open, usage=UsageCost())
            for segment in segments:
                rows = segment.rows.get(cp.customer.external_id)
                if not rows:
                    continue
                owner = next(
                    (
                        s.id
                        for s, bp in cp.subscriptions
                        if day_start(bp.service_start) <= segment.start < day_start(bp.service_end)
                    ),
                    None,
                )
                figures.raw_rows.setdefault(owner, []).extend(rows)
                for row in rows:
                    rates = book.model_rates(
                        model=row["model"], provider=row["provider"], at=segment.start
                    )
                    gpu = book.gpu_second(hardware=row["hardware"], at=segment.start)
                    figures.usage.add(
                        row=row, priced=row_cost(row=row, rates=rates, gpu_second=gpu)
                    )
            if not figures.active:
                continue
            _revenue(figures, invoiced, cache)
            if is_open and as_of - period_start >= min_projection:
                with localcontext(EXACT):
                    factor = Decimal((period_end - period_start).total_seconds()) / Decimal(
                        (as_of - period_start).total_seconds()
                    )
                    figures.projected_cost = money(figures.usage.cost * factor)
                floor = sum((part.floor for part in figures.revenue_parts), Decimal(0))
                exact = all(part.projector is None for part in figures.revenue_parts)
                # Below the floor no projection can turn negative: rate it only when needed.
                if exact or figures.projected_cost > floor:
                    figures.project()
            results.append(figures)
    return results


def _revenue(
    figures: MarginFigures, invoiced: selectors.InvoicedRevenue | None, cache: RevenueCache
) -> None:
    if not figures.cp.subscriptions:
        figures.revenue_basis = "none"
        return
    revenue = Decimal(0)
    estimated = False
    for subscription, bp in figures.cp.subscriptions:
        if invoiced is not None and subscription.id in invoiced.by_subscription:
            revenue += invoiced.by_subscription[subscription.id]
            continue
        part = plan_revenue(
            subscription=subscription,
            bp=bp,
            rows=lambda sid=subscription.id: figures.subscription_rows(sid),
            as_of=figures.as_of,
            is_open=figures.is_open,
            cache=cache,
        )
        figures.revenue_parts.append(part)
        revenue += part.revenue
        estimated = invoiced is not None
    if invoiced is not None:
        revenue += invoiced.adjustments.get(figures.customer.id, Decimal(0))
        figures.revenue_basis = "estimate" if estimated else "invoice"
    else:
        figures.revenue_basis = "accrued"
    figures.revenue = revenue
