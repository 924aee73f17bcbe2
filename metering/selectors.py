"""Reads of the metering app.

Usage is read from the hourly rollups plus the tail of events not folded yet, in
one SQL statement (one snapshot), so a number is exact at any moment: a batch is
either folded (counted in the rollups) or not (counted from its events). Hours cut
by a range that does not start or end on the hour are read from raw events.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db import connection, transaction

from metering.fields import SUMMED_FIELDS, USAGE_METRICS

GroupBy = Literal["model", "hardware", "day"]
GROUP_COLUMNS = ("customer", "model", "hardware", "provider", "day")
SIX_PLACES = Decimal("0.000001")
# PostgreSQL, for the read's own transaction: room to aggregate tens of thousands of
# rollup rows in memory (4 MB makes it sort on disk), and no JIT compilation, which
# costs more than it saves on statements like these (as in metering.rollup).
_READ_SETTINGS_SQL = "SELECT set_config('work_mem', '64MB', true), set_config('jit', 'off', true)"


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


def _ceil_hour(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _day_expression(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return f"substr({column}, 1, 10)"  # SQLite stores UTC 'YYYY-MM-DD HH:MM:SS'


def usage_rows(
    *, customers: Sequence[str], start: datetime, end: datetime, group: Sequence[str]
) -> list[dict[str, Any]]:
    """Usage of `customers` with start <= timestamp < end, summed per `group` (a subset of
    customer, model, hardware, provider, day). Metrics: requests, the token classes and
    gpu_seconds (Decimal). Each stored event is counted exactly once."""
    unknown = set(group) - set(GROUP_COLUMNS)
    if unknown:
        raise ValueError(f"cannot group usage by {sorted(unknown)}")
    if not customers:
        return []
    start = start.astimezone(UTC)
    end = end.astimezone(UTC)
    inner_start, inner_end = _ceil_hour(start), _floor_hour(end)
    if inner_start >= inner_end:
        # No whole hour inside: everything comes from raw events.
        inner_start = inner_end = start
        edges = [(start, end)]
    else:
        edges = [(start, inner_start), (inner_end, end)]
    in_list = ", ".join(["%s"] * len(customers))
    summed = ", ".join(SUMMED_FIELDS)
    event_columns = (
        f'customer, "timestamp" AS ts, model, hardware, provider, 1 AS requests, {summed}'
    )
    parts = [
        f"SELECT customer, hour AS ts, model, hardware, provider, requests, {summed} "
        f"FROM metering_usagerollup WHERE customer IN ({in_list}) AND hour >= %s AND hour < %s",
        # The tail: events of batches not folded yet, anywhere in the range.
        f"SELECT {event_columns} FROM metering_event e "
        f'WHERE customer IN ({in_list}) AND "timestamp" >= %s AND "timestamp" < %s '
        f"AND EXISTS (SELECT 1 FROM metering_ingestbatch b "
        f"WHERE b.id = e.batch_id AND b.folded_at IS NULL)",
    ]
    at = connection.ops.adapt_datetimefield_value  # SQLite compares naive UTC text
    params: list[Any] = [*customers, at(inner_start), at(inner_end), *customers, at(start), at(end)]
    for edge_start, edge_end in edges:
        if edge_start >= edge_end:
            continue
        # Folded events of hours the range cuts through.
        parts.append(
            f"SELECT {event_columns} FROM metering_event e "
            f'WHERE customer IN ({in_list}) AND "timestamp" >= %s AND "timestamp" < %s '
            f"AND EXISTS (SELECT 1 FROM metering_ingestbatch b "
            f"WHERE b.id = e.batch_id AND b.folded_at IS NOT NULL)"
        )
        params += [*customers, at(edge_start), at(edge_end)]
    keys = [_day_expression("ts") if g == "day" else g for g in group]
    select_keys = "".join(f"{k} AS {g}, " for k, g in zip(keys, group, strict=True))
    sums = ", ".join(f"COALESCE(SUM({m}), 0) AS {m}" for m in USAGE_METRICS)
    group_clause = f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
    sql = f"SELECT {select_keys}{sums} FROM ({' UNION ALL '.join(parts)}) usage{group_clause}"
    postgres = connection.vendor == "postgresql"
    with transaction.atomic() if postgres else nullcontext(), connection.cursor() as cursor:
        if postgres:
            cursor.execute(_READ_SETTINGS_SQL)
        cursor.execute(sql, params)
        names = [col[0] for col in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        for metric in USAGE_METRICS[:-1]:
            row[metric] = int(row[metric])
        row["gpu_seconds"] = Decimal(row["gpu_seconds"]).quantize(SIX_PLACES)
    return rows


def _render(row: dict[str, Any]) -> dict[str, Any]:
    out = {metric: row[metric] for metric in USAGE_METRICS[:-1]}
    out["gpu_seconds"] = format(row["gpu_seconds"], "f")
    return out


def customer_usage(
    *, customer: str, start: datetime, end: datetime, group_by: GroupBy | None = None
) -> UsageReport:
    """Every stored event of `customer` with start <= timestamp < end, counted once.

    With `group_by`, the totals are the sums of the groups: one read, so both come
    from the same snapshot."""
    group = () if group_by is None else (group_by,)
    rows = usage_rows(customers=[customer], start=start, end=end, group=group)
    if group_by is None:
        totals, groups = rows[0], []
    else:
        totals = {m: sum(row[m] for row in rows) for m in USAGE_METRICS[:-1]}
        gpu_seconds = sum((row["gpu_seconds"] for row in rows), Decimal(0))
        totals["gpu_seconds"] = gpu_seconds.quantize(SIX_PLACES)
        groups = [{group_by: row[group_by], **_render(row)} for row in rows]
    return UsageReport(
        customer=customer, start=start, end=end, totals=_render(totals), groups=groups
    )
