"""How billing sees usage: rows of metrics per model, hardware and provider.

Billing reads metering, never the other way round. Usage comes from the hourly
rollups plus the unfolded tail (metering.selectors.usage_rows); plans with charges
on event properties read the raw events of the period instead, since rollups do
not keep properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from metering.fields import USAGE_METRICS
from metering.models import Event
from metering.selectors import usage_rows

ROW_METRICS = USAGE_METRICS


@dataclass(frozen=True, slots=True)
class UsageRow:
    model: str
    hardware: str
    provider: str
    metrics: dict[str, Decimal]
    properties: dict[str, Any] = field(default_factory=dict)

    def value(self, metric: str) -> Decimal:
        """The row's quantity of a charge metric (see billing.models.STANDARD_METRICS)."""
        if metric == "uncached_input_tokens":
            m = self.metrics
            return m["input_tokens"] - m["cache_read_input_tokens"] - m["cache_write_input_tokens"]
        if metric == "count":
            return self.metrics["requests"]
        if metric.startswith("sum:"):
            raw = self.properties.get(metric[4:])
            if isinstance(raw, bool) or raw is None:
                return Decimal(0)
            try:
                value = Decimal(str(raw))
            except ArithmeticError:
                return Decimal(0)
            # "NaN" and "Infinity" parse, but are no quantity: rating would refuse them
            # and fail the customer's whole invoice.
            return value if value.is_finite() else Decimal(0)
        return self.metrics[metric]


def usage_by_customer(
    *, customers: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[UsageRow]]:
    """Aggregated usage rows per customer for [start, end)."""
    rows = usage_rows(
        customers=customers,
        start=start,
        end=end,
        group=("customer", "model", "hardware", "provider"),
    )
    out: dict[str, list[UsageRow]] = {c: [] for c in customers}
    for row in rows:
        out[row["customer"]].append(
            UsageRow(
                model=row["model"],
                hardware=row["hardware"],
                provider=row["provider"],
                metrics={m: Decimal(row[m]) for m in ROW_METRICS},
            )
        )
    return out


def usage_events(*, customer: str, start: datetime, end: datetime) -> list[UsageRow]:
    """One row per raw event, with its properties: for property-based charges."""
    events = Event.objects.filter(
        customer=customer, timestamp__gte=start, timestamp__lt=end
    ).values("model", "hardware", "provider", "properties", *ROW_METRICS[1:])
    return [
        UsageRow(
            model=e["model"],
            hardware=e["hardware"],
            provider=e["provider"],
            metrics={"requests": Decimal(1), **{m: Decimal(e[m]) for m in ROW_METRICS[1:]}},
            properties=e["properties"] or {},
        )
        for e in events.iterator(chunk_size=5000)
    ]
