"""Reads of the pricing app: usage split at rate changes, revenue on invoices, rates,
and the margin report."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum

from billing.models import Invoice, InvoiceLine
from metering.selectors import usage_rows
from pricing.models import RATE_KEY_FIELDS, CostRate, MarginFlag, MarginSnapshot

# Customers per usage query. Chosen by trying chunk sizes with bench/margin.py (7M hourly
# rollup rows; figures not recorded in the repo): around 1,000 customers PostgreSQL read
# their rollups through the index; at ~2,000 it switched to scanning the whole table.
# Re-measure with bench/margin.py before changing it.
USAGE_CHUNK = 1000
GROUP = ("customer", "model", "hardware", "provider")


def month_start(day: date) -> date:
    return date(day.year, day.month, 1)


def next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def previous_month(day: date) -> date:
    return month_start(month_start(day) - timedelta(days=1))


def parse_period(value: str) -> date:
    """'YYYY-MM' → the first day of that month. ValueError names the field."""
    try:
        year, month = value.split("-")
        if len(year) != 4 or len(month) != 2:
            raise ValueError
        return date(int(year), int(month), 1)
    except (ValueError, AttributeError):
        raise ValueError(f"period: must be YYYY-MM, got {value!r}") from None


# --- usage -----------------------------------------------------------------------------


@dataclass
class Segment:
    """Usage of [start, end), in which no cost rate changes, per customer."""

    start: datetime
    end: datetime
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def rate_boundaries(*, start: datetime, end: datetime) -> list[datetime]:
    """Every instant strictly inside (start, end) at which some cost rate starts."""
    starts = (
        CostRate.objects.filter(effective_from__gt=start, effective_from__lt=end)
        .values_list("effective_from", flat=True)
        .distinct()
    )
    return sorted({s.astimezone(UTC) for s in starts})


def usage_segments(
    *, customers: Sequence[str], start: datetime, end: datetime, boundaries: Sequence[datetime]
) -> list[Segment]:
    """Usage of `customers` in [start, end), split at `boundaries`, summed per customer,
    model, hardware and provider. Read from hourly rollups plus the unfolded tail
    (metering.selectors.usage_rows), so every stored event counts exactly once."""
    cuts = [start, *sorted(b for b in set(boundaries) if start < b < end), end]
    segments = [Segment(a, b) for a, b in itertools.pairwise(cuts) if a < b]
    for segment in segments:
        for i in range(0, len(customers), USAGE_CHUNK):
            chunk = customers[i : i + USAGE_CHUNK]
            rows = usage_rows(customers=chunk, start=segment.start, end=segment.end, group=GROUP)
            for row in rows:
                segment.rows.setdefault(row["customer"], []).append(row)
    return segments


# --- revenue on invoices -----------------------------------------------------------------


@dataclass
class InvoicedRevenue:
    by_subscription: dict[int, Decimal] = field(default_factory=dict)
    # Late-usage adjustments billed on later invoices, attributed back to this period.
    adjustments: dict[int, Decimal] = field(default_factory=dict)  # by customer id


def invoiced_revenue(*, customer_ids: Sequence[int], month: date) -> InvoicedRevenue:
    """What the customers' invoices of periods starting in `month` bill for those periods:
    each non-void invoice's total without the adjustments it carries for earlier periods,
    plus the adjustments later invoices carry for it."""
    out = InvoicedRevenue()
    invoices = Invoice.objects.filter(
        customer_id__in=customer_ids,
        period_start__gte=month,
        period_start__lt=next_month(month),
    ).exclude(status=Invoice.Status.VOID)
    carried = dict(
        InvoiceLine.objects.filter(invoice__in=invoices, adjusts_invoice__isnull=False)
        .values("invoice_id")
        .annotate(total=Sum("amount"))
        .values_list("invoice_id", "total")
    )
    for invoice_id, subscription_id, total in invoices.values_list(
        "id", "subscription_id", "total"
    ):
        amount = Decimal(total) - Decimal(carried.get(invoice_id) or 0)
        out.by_subscription[subscription_id] = out.by_subscription.get(subscription_id, 0) + amount
    later = (
        InvoiceLine.objects.filter(adjusts_invoice__in=invoices)
        .exclude(invoice__status=Invoice.Status.VOID)
        .values("adjusts_invoice__customer_id")
        .annotate(total=Sum("amount"))
        .values_list("adjusts_invoice__customer_id", "total")
    )
    for customer_id, total in later:
        out.adjustments[customer_id] = Decimal(total or 0)
    return out


# --- rates ---------------------------------------------------------------------------------


def cost_rates_list(
    *,
    kind: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    hardware: str | None = None,
    in_force_at: datetime | None = None,
) -> QuerySet[CostRate]:
    """Rates, filtered; with `in_force_at`, only the rate of each key in force then."""
    rates = CostRate.objects.all()
    if kind:
        rates = rates.filter(kind=kind)
    if model:
        rates = rates.filter(model=model)
    if provider is not None and provider != "":
        rates = rates.filter(provider=provider)
    if hardware:
        rates = rates.filter(hardware=hardware)
    if in_force_at is not None:
        rates = rates.filter(effective_from__lte=in_force_at)
        latest: dict[tuple[str, ...], tuple[datetime, int]] = {}
        for pk, *key, start in rates.values_list("pk", *RATE_KEY_FIELDS, "effective_from"):
            current = latest.get(tuple(key))
            if current is None or start > current[0]:
                latest[tuple(key)] = (start, pk)
        rates = CostRate.objects.filter(pk__in=[pk for _, pk in latest.values()])
    return rates.order_by("kind", "model", "hardware", "provider", "token_class", "effective_from")


def cost_rate_in_force(*, key: tuple[str, ...], at: datetime) -> CostRate | None:
    return (
        CostRate.objects.filter(**CostRate.key_filter(key), effective_from__lte=at)
        .order_by("-effective_from")
        .first()
    )


# --- the margin report -------------------------------------------------------------------------


@dataclass
class MarginReport:
    period: date
    rows: list[MarginSnapshot]
    flags: dict[int, MarginFlag]  # active flag by customer id
    totals: dict[str, Any]


def margin_report(*, period: date, flagged: bool = False) -> MarginReport:
    """Customers' margins in a period, worst first (flat subscriptions first among equal
    margins), with totals over the rows shown."""
    snapshots = MarginSnapshot.objects.filter(period=period).select_related("customer")
    flags = {
        f.customer_id: f for f in MarginFlag.objects.filter(period=period, cleared_at__isnull=True)
    }
    if flagged:
        snapshots = snapshots.filter(customer_id__in=list(flags))
    rows = sorted(snapshots, key=lambda s: (s.margin, not s.is_flat, s.customer.external_id))
    revenue = sum((Decimal(s.revenue) for s in rows), Decimal(0))
    cost = sum((Decimal(s.cost) for s in rows), Decimal(0))
    by_flag = dict.fromkeys(MarginFlag.Kind.values, 0)
    for snapshot in rows:
        flag = flags.get(snapshot.customer_id)
        if flag is not None:
            by_flag[flag.kind] += 1
    totals: dict[str, Any] = {
        "customers": len(rows),
        "flagged": sum(1 for s in rows if s.customer_id in flags),
        "flat_flagged": sum(1 for s in rows if s.customer_id in flags and s.is_flat),
        "revenue": revenue,
        "cost": cost,
        "margin": revenue - cost,
        "margin_ratio": ((revenue - cost) / revenue) if revenue else None,
        "uncosted_requests": sum(s.uncosted_requests for s in rows),
        "by_flag": by_flag,
    }
    return MarginReport(period=period, rows=rows, flags=flags, totals=totals)
