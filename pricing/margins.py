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
  way, flat fees in full.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext

from django.conf import settings
from django.db.models import Prefetch, Q

from billing import rating
from billing.invoicing import BillingPeriod, invoice_compute
from billing.metering_view import UsageRow
from billing.models import Charge, Customer, InvoiceLine, Subscription
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


def customer_periods(
    *, period: date, customer_ids: Sequence[int] | None = None
) -> list[CustomerPeriod]:
    """Every customer's billing period starting in the month `period`, with the
    subscriptions overlapping it (plans and charges prefetched)."""
    month, following = selectors.month_start(period), selectors.next_month(period)
    customers = Customer.objects.order_by("id")
    if customer_ids is not None:
        customers = customers.filter(id__in=list(customer_ids))
    window_end = following + timedelta(days=31)  # a period starting in `month` ends by then
    subscriptions = (
        Subscription.objects.filter(start_date__lt=window_end)
        .filter(Q(end_date__isnull=True) | Q(end_date__gt=month))
        .select_related("plan")
        .prefetch_related(Prefetch("plan__charges", queryset=Charge.objects.order_by("position")))
        .order_by("customer_id", "start_date", "id")
    )
    if customer_ids is not None:
        subscriptions = subscriptions.filter(customer_id__in=list(customer_ids))
    by_customer: dict[int, list[Subscription]] = {}
    for subscription in subscriptions:
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
    # Usage rows per subscription id (billing's shape), and of the whole period.
    rows_by_subscription: dict[int, list[UsageRow]] = field(default_factory=dict)
    rows: list[UsageRow] = field(default_factory=list)

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


def plan_revenue(
    *,
    subscription: Subscription,
    bp: BillingPeriod,
    rows: list[UsageRow],
    as_of: datetime,
    is_open: bool,
) -> tuple[Decimal, Decimal | None]:
    """(revenue, projected revenue) of one subscription's share of a period, rated by the
    billing engine: the full invoice amount when closed; accrued (and projected) when
    open."""
    currency = subscription.plan.currency
    if not is_open or as_of >= day_start(bp.service_end):
        lines = invoice_compute(subscription=subscription, period=bp, rows=rows)
        full = _rounded_total(lines, currency, elapsed=None, days=bp.service_days)
        return full, full
    if as_of <= day_start(bp.service_start):
        lines = invoice_compute(subscription=subscription, period=bp, rows=[])
        return Decimal(0), _rounded_total(lines, currency, elapsed=None, days=bp.service_days)
    lines = invoice_compute(subscription=subscription, period=bp, rows=rows)
    accrued = _rounded_total(
        lines, currency, elapsed=_elapsed_days(bp, as_of), days=bp.service_days
    )
    elapsed = Decimal((as_of - day_start(bp.service_start)).total_seconds())
    span = Decimal((day_start(bp.service_end) - day_start(bp.service_start)).total_seconds())
    with localcontext(EXACT):
        factor = span / elapsed
    projected_lines = invoice_compute(
        subscription=subscription, period=bp, rows=_scaled(rows, factor)
    )
    projected = _rounded_total(projected_lines, currency, elapsed=None, days=bp.service_days)
    return accrued, projected


def _group_key(cp: CustomerPeriod) -> tuple[date, date, tuple[date, ...]]:
    return (cp.start, cp.end, cp.edges)


def margins_compute(*, periods: Sequence[CustomerPeriod], as_of: datetime) -> list[MarginFigures]:
    """Cost, revenue and projections of each customer period, as of `as_of`. Customers
    sharing a period and subscription boundaries are read together."""
    groups: dict[tuple[date, date, tuple[date, ...]], list[CustomerPeriod]] = {}
    for cp in periods:
        if day_start(cp.start) < as_of:
            groups.setdefault(_group_key(cp), []).append(cp)
    results: list[MarginFigures] = []
    min_projection = timedelta(hours=settings.INFERBILL_PROJECTION_MIN_HOURS)
    for (start, end, edges), members in groups.items():
        period_start, period_end = day_start(start), day_start(end)
        read_end = min(period_end, as_of)
        is_open = as_of < period_end
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
        book = RateBook.load(models=models, hardware=hardware, before=read_end)
        invoiced = (
            selectors.invoiced_revenue(
                customer_ids=[cp.customer.id for cp in members], month=members[0].period
            )
            if not is_open
            else None
        )
        for cp in members:
            figures = MarginFigures(cp=cp, as_of=as_of, is_open=is_open, usage=UsageCost())
            for segment in segments:
                rows = segment.rows.get(cp.customer.external_id, ())
                owner = next(
                    (
                        s.id
                        for s, bp in cp.subscriptions
                        if day_start(bp.service_start) <= segment.start < day_start(bp.service_end)
                    ),
                    None,
                )
                for row in rows:
                    rates = book.model_rates(
                        model=row["model"], provider=row["provider"], at=segment.start
                    )
                    gpu = book.gpu_second(hardware=row["hardware"], at=segment.start)
                    figures.usage.add(
                        row=row, priced=row_cost(row=row, rates=rates, gpu_second=gpu)
                    )
                    usage = selectors.usage_row(row)
                    figures.rows.append(usage)
                    if owner is not None:
                        figures.rows_by_subscription.setdefault(owner, []).append(usage)
            if not figures.active:
                continue
            _revenue(figures, invoiced)
            if is_open and as_of - period_start >= min_projection:
                with localcontext(EXACT):
                    factor = Decimal((period_end - period_start).total_seconds()) / Decimal(
                        (as_of - period_start).total_seconds()
                    )
                    figures.projected_cost = money(figures.usage.cost * factor)
            else:
                figures.projected_revenue = None
            results.append(figures)
    return results


def _revenue(figures: MarginFigures, invoiced: selectors.InvoicedRevenue | None) -> None:
    if not figures.cp.subscriptions:
        figures.revenue_basis = "none"
        return
    revenue = Decimal(0)
    projected = Decimal(0)
    estimated = False
    for subscription, bp in figures.cp.subscriptions:
        rows = figures.rows_by_subscription.get(subscription.id, [])
        if invoiced is not None and subscription.id in invoiced.by_subscription:
            revenue += invoiced.by_subscription[subscription.id]
            continue
        amount, projection = plan_revenue(
            subscription=subscription,
            bp=bp,
            rows=rows,
            as_of=figures.as_of,
            is_open=figures.is_open,
        )
        revenue += amount
        projected += projection or 0
        estimated = invoiced is not None
    if invoiced is not None:
        revenue += invoiced.adjustments.get(figures.customer.id, Decimal(0))
        figures.revenue_basis = "estimate" if estimated else "invoice"
    else:
        figures.revenue_basis = "accrued"
        figures.projected_revenue = projected
    figures.revenue = revenue
