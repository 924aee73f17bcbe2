"""Reads of the metering app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from django.db.models import Count, Sum
from django.db.models.functions import Coalesce, TruncDay

from metering.models import Event

GroupBy = Literal["model", "hardware", "day"]
TOKEN_METRICS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)


@dataclass(frozen=True)
class UsageReport:
    customer: str
    start: datetime
    end: datetime
    totals: dict[str, Any]
    groups: list[dict[str, Any]]


def current_month(now: datetime) -> tuple[datetime, datetime]:
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _aggregates() -> dict[str, Any]:
    aggregates: dict[str, Any] = {"requests": Count("id")}
    for name in TOKEN_METRICS:
        aggregates[name] = Coalesce(Sum(name), 0)
    aggregates["gpu_seconds"] = Coalesce(Sum("gpu_seconds"), Decimal(0))
    return aggregates


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: int(row[name]) for name in ("requests", *TOKEN_METRICS)}
    out["gpu_seconds"] = format(Decimal(row["gpu_seconds"]).quantize(Decimal("0.000001")), "f")
    return out


def customer_usage(
    *, customer: str, start: datetime, end: datetime, group_by: GroupBy | None = None
) -> UsageReport:
    """Every stored event of `customer` with start <= timestamp < end, counted once."""
    events = Event.objects.filter(customer=customer, timestamp__gte=start, timestamp__lt=end)
    totals = _clean(events.aggregate(**_aggregates()))
    groups: list[dict[str, Any]] = []
    if group_by is not None:
        if group_by == "day":
            rows = (
                events.annotate(day=TruncDay("timestamp", tzinfo=UTC))
                .values("day")
                .annotate(**_aggregates())
                .order_by("day")
            )
            groups = [{"day": row["day"].date().isoformat(), **_clean(row)} for row in rows]
        else:
            rows = events.values(group_by).annotate(**_aggregates()).order_by(group_by)
            groups = [{group_by: row[group_by], **_clean(row)} for row in rows]
    return UsageReport(customer=customer, start=start, end=end, totals=totals, groups=groups)
