"""Which charge bills which usage. Pure: no database.

Within a plan, each unit of usage is billed by at most one charge per metric. When
several charges on the same metric match a usage row, the most specific filter
wins: the one that constrains the most dimensions (model, hardware, provider, and
each property counts one). On a tie the charge listed first (lowest position) wins.
So "output tokens of gpt-4o at $10/M" beside "output tokens at $2/M" bills gpt-4o's
tokens at $10/M and every other model's at $2/M, never both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from billing.metering_view import UsageRow


@dataclass(frozen=True, slots=True)
class ChargeRule:
    charge_id: int
    metric: str
    position: int
    filter: dict[str, Any] = field(default_factory=dict)

    @property
    def specificity(self) -> int:
        dims = sum(1 for key in ("model", "hardware", "provider") if self.filter.get(key))
        return dims + len(self.filter.get("properties") or {})

    @property
    def needs_events(self) -> bool:
        """Whether rating needs raw events (properties are not kept in rollups)."""
        return (
            bool(self.filter.get("properties"))
            or self.metric.startswith("sum:")
            or (self.metric == "count")
        )

    def matches(self, row: UsageRow) -> bool:
        for key in ("model", "hardware", "provider"):
            wanted = self.filter.get(key)
            if wanted and getattr(row, key) != wanted:
                return False
        for key, wanted in (self.filter.get("properties") or {}).items():
            if row.properties.get(key) != wanted:
                return False
        return True


def _metric_family(metric: str) -> str:
    """Charges compete only within one metric; `count` competes with `requests`."""
    return "requests" if metric == "count" else metric


def charge_quantities(
    *, rules: Sequence[ChargeRule], rows: Iterable[UsageRow]
) -> dict[int, Decimal]:
    """Quantity billed by each charge: every row's metric goes to the one winning charge."""
    quantities = {rule.charge_id: Decimal(0) for rule in rules}
    by_family: dict[str, list[ChargeRule]] = {}
    for rule in sorted(rules, key=lambda r: (-r.specificity, r.position, r.charge_id)):
        by_family.setdefault(_metric_family(rule.metric), []).append(rule)
    for row in rows:
        for candidates in by_family.values():
            for rule in candidates:
                if rule.matches(row):
                    quantities[rule.charge_id] += row.value(rule.metric)
                    break
    # Only a sum of a property can go negative (credits sent as negative numbers); a
    # charge bills nothing then, rather than a negative quantity rating would refuse.
    return {charge_id: max(q, Decimal(0)) for charge_id, q in quantities.items()}
