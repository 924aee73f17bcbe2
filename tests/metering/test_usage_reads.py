"""metering.selectors.usage_rows: exact at any moment (rollups + unfolded tail + raw edges)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from metering.fields import USAGE_METRICS as METRICS
from metering.normalize import NormalizedEvent
from metering.rollup import usage_rollup_fold
from metering.selectors import customer_usage, usage_rows
from tests.factories import at, ev
from tests.factories import store as store_events

pytestmark = pytest.mark.django_db
D = Decimal


def store(*events: NormalizedEvent) -> None:
    store_events(*events, source="usage-read-tests", received_at=at("2026-05-01"))


FIRST = [
    ev(
        "acme",
        "2026-04-10 09:15",
        input_tokens=100,
        output_tokens=10,
        hardware="h100",
        gpu_seconds="1.5",
    ),
    ev("acme", "2026-04-10 09:59:59.999", input_tokens=200, output_tokens=20, hardware="h100"),
    ev(
        "acme",
        "2026-04-10 10:00",
        input_tokens=400,
        output_tokens=40,
        hardware="h100",
        gpu_seconds="0.25",
    ),
    ev("acme", "2026-04-10 10:30", "llama", input_tokens=800, output_tokens=80, hardware="a100"),
    ev("beta", "2026-04-10 10:30", input_tokens=5, output_tokens=5),
]
SECOND = [
    ev(
        "acme",
        "2026-04-10 12:45",
        input_tokens=1600,
        output_tokens=160,
        hardware="h100",
        cache_read_input_tokens=600,
        reasoning_output_tokens=60,
        provider="azure",
    ),
    ev("acme", "2026-04-11 00:10", "llama", input_tokens=3200, hardware="a100"),
]
LATE = [  # arrives after the others are folded, into hours already folded
    ev("acme", "2026-04-10 09:20", input_tokens=6400, hardware="h100", gpu_seconds="0.000001"),
    ev("acme", "2026-04-10 10:59:59", "llama", input_tokens=12800, hardware="a100"),
]


def hand_count(
    events: list[NormalizedEvent], customer: str, start: datetime, end: datetime
) -> dict[str, Any]:
    chosen = [e for e in events if e.customer == customer and start <= e.timestamp < end]
    totals: dict[str, Any] = {
        m: sum(getattr(e, m) for e in chosen) for m in METRICS if m != "requests"
    }
    totals["requests"] = len(chosen)
    totals["gpu_seconds"] = D(totals["gpu_seconds"]).quantize(D("0.000001"))
    return totals


def read(customer: str, start: datetime, end: datetime) -> dict[str, Any]:
    (row,) = usage_rows(customers=[customer], start=start, end=end, group=())
    return {m: row[m] for m in METRICS}


MOMENTS = [
    at("2026-04-10 00:00"),
    at("2026-04-10 09:15"),
    at("2026-04-10 09:30"),
    at("2026-04-10 09:59:59.999"),
    at("2026-04-10 10:00"),
    at("2026-04-10 10:00:00.000001"),
    at("2026-04-10 10:30"),
    at("2026-04-10 11:00"),
    at("2026-04-10 12:45"),
    at("2026-04-11 00:10:00.5"),
    at("2026-04-12 00:00"),
]
RANGES = [(s, e) for s, e in itertools.combinations(MOMENTS, 2)]


def check_every_range(events: list[NormalizedEvent]) -> None:
    for start, end in RANGES:
        for customer in ("acme", "beta"):
            assert read(customer, start, end) == hand_count(events, customer, start, end), (
                customer,
                start,
                end,
            )


def test_exact_before_during_and_after_folding_for_any_range() -> None:
    store(*FIRST)
    check_every_range(FIRST)  # all in the tail
    usage_rollup_fold()
    store(*SECOND)
    check_every_range(FIRST + SECOND)  # rollups + tail
    usage_rollup_fold()
    check_every_range(FIRST + SECOND)  # rollups only (raw events at cut hours)
    store(*LATE)
    check_every_range(FIRST + SECOND + LATE)  # late events in folded hours, in the tail
    usage_rollup_fold()
    check_every_range(FIRST + SECOND + LATE)


def test_hand_counted_examples() -> None:
    store(*FIRST, *SECOND)
    usage_rollup_fold()
    store(*LATE)
    # [09:30, 10:30): the 09:59:59.999 and 10:00 events; 10:30 itself is excluded.
    assert read("acme", at("2026-04-10 09:30"), at("2026-04-10 10:30")) == {
        "requests": 2,
        "input_tokens": 600,
        "cache_read_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "output_tokens": 60,
        "reasoning_output_tokens": 0,
        "gpu_seconds": D("0.250000"),
    }
    # The whole day: everything of acme on the 10th, late events included.
    day = read("acme", at("2026-04-10 00:00"), at("2026-04-11 00:00"))
    assert (day["requests"], day["input_tokens"], day["gpu_seconds"]) == (7, 22300, D("1.750001"))
    assert (day["cache_read_input_tokens"], day["reasoning_output_tokens"]) == (600, 60)
    # Inside one hour, no whole hour in the range.
    assert read("acme", at("2026-04-10 09:16"), at("2026-04-10 09:21"))["input_tokens"] == 6400
    # An empty range of a customer with nothing.
    assert read("nobody", at("2026-04-01"), at("2026-05-01"))["requests"] == 0


def test_grouping_and_several_customers() -> None:
    store(*FIRST, *SECOND)
    usage_rollup_fold()
    store(*LATE)
    start, end = at("2026-04-10 09:30"), at("2026-04-11 00:30")
    rows = usage_rows(customers=["acme", "beta"], start=start, end=end, group=("customer", "model"))
    assert [(r["customer"], r["model"], r["requests"], r["input_tokens"]) for r in rows] == [
        ("acme", "gpt-4o", 3, 2200),
        ("acme", "llama", 3, 16800),
        ("beta", "gpt-4o", 1, 5),
    ]
    rows = usage_rows(customers=["acme"], start=start, end=end, group=("hardware", "provider"))
    assert [(r["hardware"], r["provider"], r["input_tokens"]) for r in rows] == [
        ("a100", "", 16800),
        ("h100", "", 600),
        ("h100", "azure", 1600),
    ]
    rows = usage_rows(customers=["acme"], start=start, end=end, group=("day",))
    assert [(r["day"], r["requests"]) for r in rows] == [("2026-04-10", 5), ("2026-04-11", 1)]
    with pytest.raises(ValueError, match="cannot group"):
        usage_rows(customers=["acme"], start=start, end=end, group=("region",))
    assert usage_rows(customers=[], start=start, end=end, group=()) == []


def test_customer_usage_report_renders_totals_and_groups() -> None:
    store(*FIRST)
    usage_rollup_fold()
    report = customer_usage(
        customer="acme",
        start=at("2026-04-10 00:00"),
        end=at("2026-04-11 00:00"),
        group_by="hardware",
    )
    assert report.totals["requests"] == 4
    assert report.totals["gpu_seconds"] == "1.750000"
    assert [(g["hardware"], g["input_tokens"]) for g in report.groups] == [
        ("a100", 800),
        ("h100", 700),
    ]


def test_offsets_are_read_as_utc() -> None:
    store(*FIRST)
    usage_rollup_fold()
    tz = timezone(timedelta(hours=2))
    # 11:30+02:00 to 12:30+02:00 is 09:30Z to 10:30Z.
    start = datetime(2026, 4, 10, 11, 30, tzinfo=tz)
    end = datetime(2026, 4, 10, 12, 30, tzinfo=tz)
    assert read("acme", start, end)["input_tokens"] == 600
