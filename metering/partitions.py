"""Monthly partitions of the event table (PostgreSQL only).

Each month is its own table, `metering_event_yYYYYmMM`, so archiving a month is
`ALTER TABLE metering_event DETACH PARTITION …` and a dump, and dropping it is
instant. Partitions are made ahead of need by a beat task; the ingest path also
makes a missing one on demand, so a quiet beat never turns events away.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from django.db import connection

EVENT_TABLE = "metering_event"


def _month_start(year: int, month: int) -> date:
    # Normalise month overflow/underflow (month may be 0 or 13 after arithmetic).
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return date(year, month, 1)


def partition_name(month_start: date) -> str:
    return f"{EVENT_TABLE}_y{month_start.year:04d}m{month_start.month:02d}"


def event_partitions_ensure(
    *, around: datetime | None = None, months_back: int = 2, months_ahead: int = 2
) -> list[str]:
    """Create the monthly partitions from `months_back` before to `months_ahead` after
    `around` (default: now). Returns the names it created. A no-op on SQLite."""
    if connection.vendor != "postgresql":
        return []
    around = around or datetime.now(UTC)
    created: list[str] = []
    with connection.cursor() as cursor:
        for offset in range(-months_back, months_ahead + 1):
            start = _month_start(around.year, around.month + offset)
            end = _month_start(start.year, start.month + 1)
            name = partition_name(start)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if cursor.fetchone()[0]:
                continue
            # Identifiers come from integers above, never from input.
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {EVENT_TABLE} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
            created.append(name)
    return created


def event_partitions_ensure_range(*, start: datetime, end: datetime) -> list[str]:
    """Make sure every month touched by [start, end] has a partition."""
    created: list[str] = []
    cursor_month = _month_start(start.year, start.month)
    while cursor_month <= end.date():
        created += event_partitions_ensure(
            around=datetime(cursor_month.year, cursor_month.month, 1, tzinfo=UTC),
            months_back=0,
            months_ahead=0,
        )
        cursor_month = _month_start(cursor_month.year, cursor_month.month + 1)
    return created
