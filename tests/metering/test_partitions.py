"""Monthly partitions of the event table: events land in their month's partition, a
missing partition is made on demand, and de-duplication holds across partitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from django.db import connection

from metering.partitions import (
    event_partitions_ensure,
    event_partitions_ensure_range,
    partition_name,
)
from tests.metering.helpers import event, iso, post

Api = Callable[..., httpx.Client]


def month_start(moment: datetime, back: int = 0) -> datetime:
    month = moment.year * 12 + moment.month - 1 - back
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)


def exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def drop(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


def partition_of_events() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT event_id, tableoid::regclass::text FROM metering_event")
        return dict(cursor.fetchall())


def children() -> dict[str, str]:
    """Partitions attached to metering_event, with their bounds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'metering_event'::regclass"
        )
        return dict(cursor.fetchall())


def test_partition_name() -> None:
    assert partition_name(date(2026, 1, 1)) == "metering_event_y2026m01"
    assert partition_name(date(2026, 12, 1)) == "metering_event_y2026m12"


@pytest.mark.django_db
def test_ensure_makes_the_months_around_now() -> None:
    now = datetime.now(UTC)
    event_partitions_ensure(months_back=1, months_ahead=1)
    names = [partition_name(month_start(now, back).date()) for back in (1, 0, -1)]
    if connection.vendor == "postgresql":
        assert all(exists(name) for name in names)
        # Already there: nothing more to make.
        assert event_partitions_ensure(months_back=1, months_ahead=1) == []
    else:
        # SQLite has one plain table: there is nothing to make.
        tables = connection.introspection.table_names()
        assert "metering_event" in tables
        assert not any(name in tables for name in names)
        assert event_partitions_ensure_range(start=now, end=now) == []


@pytest.mark.postgres
def test_events_land_in_their_months_partition(api: Api, settings: Any) -> None:
    settings.INFERBILL_MAX_EVENT_AGE_DAYS = 120
    now = datetime.now(UTC)
    this_month = month_start(now)
    moments = {
        "now": now - timedelta(seconds=1),
        "first-instant": this_month,
        "last-instant-before": this_month - timedelta(microseconds=1),
        "two-back": month_start(now, 2) + timedelta(days=14, hours=5),
    }
    body = [event(name, timestamp=iso(moment)) for name, moment in moments.items()]
    # The same instants again in other offsets, as a second batch through the COPY path.
    east = timezone(timedelta(hours=9))
    body2 = [
        event(f"{name}-{i}", timestamp=moment.astimezone(east).isoformat())
        for name, moment in moments.items()
        for i in range(5)
    ]
    client = api()
    assert post(client, body).json()["accepted"] == 4
    assert post(client, body2).json()["accepted"] == 20
    placed = partition_of_events()
    for name, moment in moments.items():
        want = partition_name(month_start(moment).date())
        assert placed[name] == want, name
        assert all(placed[f"{name}-{i}"] == want for i in range(5))
    assert placed["first-instant"] != placed["last-instant-before"]
    attached = children()
    for table in set(placed.values()):
        assert table in attached


@pytest.mark.postgres
@pytest.mark.parametrize(("back", "size"), [(8, 1), (9, 20)])
def test_missing_partition_created_on_demand(api: Api, settings: Any, back: int, size: int) -> None:
    settings.INFERBILL_MAX_EVENT_AGE_DAYS = 400
    now = datetime.now(UTC)
    start = month_start(now, back)
    end = month_start(now, back - 1)
    name = partition_name(start.date())
    drop(name)
    assert not exists(name)
    # The month's last hour, written in an offset that puts its local date in the next
    # month: the partition is still the UTC month's.
    moment = end - timedelta(minutes=30)
    local = moment.astimezone(timezone(timedelta(hours=5))).isoformat()
    assert local.startswith(f"{end:%Y-%m}")
    body = [event(f"old-{i}", timestamp=local) for i in range(size)]
    response = post(api(), body)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": size, "duplicates": 0, "rejected": []}
    assert exists(name)
    assert children()[name] == (
        f"FOR VALUES FROM ('{start:%Y-%m-%d} 00:00:00+00') TO ('{end:%Y-%m-%d} 00:00:00+00')"
    )
    assert set(partition_of_events().values()) == {name}


@pytest.mark.postgres
def test_deduplication_holds_across_partitions(api: Api, settings: Any) -> None:
    settings.INFERBILL_MAX_EVENT_AGE_DAYS = 120
    now = datetime.now(UTC)
    client = api()
    first = post(client, [event("moves", timestamp=iso(month_start(now, 2) + timedelta(days=3)))])
    assert first.json()["accepted"] == 1
    # The same event id, now dated in another month: another partition, same key.
    again = post(client, [event("moves", timestamp=iso(now - timedelta(minutes=1)))])
    assert again.json() == {"accepted": 0, "duplicates": 1, "rejected": [], "conflicts": ["moves"]}
    assert list(partition_of_events().items()) == [
        ("moves", partition_name(month_start(now, 2).date()))
    ]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ensure_range_across_a_year_end_and_idempotent() -> None:
    names = [
        partition_name(date(2031, 12, 1)),
        partition_name(date(2032, 1, 1)),
        partition_name(date(2032, 2, 1)),
    ]
    for name in names:
        drop(name)
    try:
        created = event_partitions_ensure_range(
            start=datetime(2031, 12, 31, 23, tzinfo=UTC), end=datetime(2032, 2, 1, tzinfo=UTC)
        )
        assert created == names
        assert (
            event_partitions_ensure_range(
                start=datetime(2031, 12, 1, tzinfo=UTC), end=datetime(2032, 2, 29, tzinfo=UTC)
            )
            == []
        )
        bounds = children()
        assert bounds[names[0]] == (
            "FOR VALUES FROM ('2031-12-01 00:00:00+00') TO ('2032-01-01 00:00:00+00')"
        )
        assert bounds[names[2]] == (
            "FOR VALUES FROM ('2032-02-01 00:00:00+00') TO ('2032-03-01 00:00:00+00')"
        )
    finally:
        for name in names:
            drop(name)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ensure_around_a_date() -> None:
    around = datetime(2033, 6, 15, tzinfo=UTC)
    names = [partition_name(date(2033, m, 1)) for m in (5, 6, 7, 8)]
    for name in names:
        drop(name)
    try:
        assert event_partitions_ensure(around=around, months_back=1, months_ahead=2) == names
        assert event_partitions_ensure(around=around, months_back=1, months_ahead=2) == []
    finally:
        for name in names:
            drop(name)
