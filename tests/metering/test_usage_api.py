"""GET /v1/customers/{customer}/usage over real HTTP, against hand-counted numbers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from metering.rollup import usage_rollup_fold
from metering.selectors import current_month
from tests.metering.helpers import event, iso, post, totals, usage

Api = Callable[..., httpx.Client]
TOKENS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)


def metrics(requests: int, i: int, cr: int, cw: int, o: int, r: int, gpu: str) -> dict[str, Any]:
    return {
        "requests": requests,
        "input_tokens": i,
        "cache_read_input_tokens": cr,
        "cache_write_input_tokens": cw,
        "output_tokens": o,
        "reasoning_output_tokens": r,
        "gpu_seconds": gpu,
    }


ZERO = metrics(0, 0, 0, 0, 0, 0, "0.000000")


class Mix:
    """A mix of accepted, duplicate, conflicting, rejected, late and future events for
    customer acme, from two sources and as a CloudEvent, plus noise for another customer.

    `stored` is the hand-written list of what must count: (timestamp, model, hardware,
    input, cache read, cache write, output, reasoning, gpu_seconds)."""

    def __init__(self, api: Api, make_key: Callable[..., str]) -> None:
        now = datetime.now(UTC)
        self.today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        t = self.today
        self.t_e1 = t - timedelta(days=3) + timedelta(hours=10)
        self.t_ce = t - timedelta(days=3) + timedelta(hours=11)
        self.t_e1b = t - timedelta(days=3) + timedelta(hours=12)
        self.t_e7 = t - timedelta(days=1) + timedelta(hours=1)
        self.t_e2 = t - timedelta(days=1) + timedelta(hours=23, minutes=30)
        self.t_e6 = t  # midnight today: never in the future
        self.client = api(key=make_key(source="product-a"))
        client = self.client

        e1 = event(
            "e1",
            timestamp=iso(self.t_e1),
            hardware="h100",
            input_tokens=1000,
            cache_read_input_tokens=200,
            output_tokens=300,
            reasoning_output_tokens=50,
            gpu_seconds="1.25",
        )
        e2 = {
            "event_id": "e2",
            "customer": "acme",
            "timestamp": iso(self.t_e2),
            "model": "claude-sonnet-4-5",
            "provider": "anthropic",
            "hardware": "a100",
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": 10000,
                "cache_creation_input_tokens": 2000,
                "output_tokens": 400,
            },
            "gpu_seconds": "0.000001",
        }
        e6 = {
            "event_id": "e6",
            "customer": "acme",
            "timestamp": iso(self.t_e6),
            "model": "gemini-2.5-pro",
            "hardware": "h100",
            "usage": {
                "usageMetadata": {
                    "promptTokenCount": 3000,
                    "cachedContentTokenCount": 2048,
                    "candidatesTokenCount": 500,
                    "thoughtsTokenCount": 700,
                }
            },
            "gpu_seconds": 2,
        }
        first = post(
            client,
            [
                e1,
                e2,
                event("e3", output_tokens=5, reasoning_output_tokens=6),  # invariant broken
                event("e4", timestamp=iso(now + timedelta(hours=1))),  # future
                event("e5", timestamp=iso(now - timedelta(days=40))),  # late
                e6,
                e1,  # duplicate inside the batch
            ],
        )
        assert first.status_code == 202, first.text
        body = first.json()
        assert (body["accepted"], body["duplicates"]) == (3, 1)
        assert [r["index"] for r in body["rejected"]] == [2, 3, 4]

        e7 = {
            "event_id": "e7",
            "customer": "acme",
            "timestamp": iso(self.t_e7),
            "model": "gpt-4o",
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            "gpu_seconds": 0.1,
        }
        second = post(
            client,
            [
                e1,  # retry
                {**e2, "usage": {**e2["usage"], "output_tokens": 999}},  # conflicting
                e7,
                event("g1", customer="globex", hardware="h100", input_tokens=5555),
            ],
        )
        assert second.json() == {
            "accepted": 2,
            "duplicates": 2,
            "rejected": [],
            "conflicts": ["e2"],
        }

        ce = {
            "specversion": "1.0",
            "id": "ce-1",
            "source": "//gateway/eu",
            "type": "com.example.inference",
            "subject": "acme",
            "time": iso(self.t_ce),
            "data": {
                "model": "gpt-4o",
                "hardware": "h100",
                "input_tokens": 10,
                "output_tokens": 2,
                "gpu_seconds": "0.2",
            },
        }
        third = post(client, ce, content_type="application/cloudevents+json")
        assert third.json()["accepted"] == 1

        # Another product reports its own e1 for acme: a different event.
        other = api(key=make_key(source="product-b"))
        fourth = post(
            other,
            [
                event(
                    "e1",
                    timestamp=iso(self.t_e1b),
                    hardware="h100",
                    input_tokens=1,
                    output_tokens=1,
                )
            ],
        )
        assert fourth.json()["accepted"] == 1

        self.stored = [
            (self.t_e1, "gpt-4o", "h100", 1000, 200, 0, 300, 50, "1.25"),
            (self.t_e2, "claude-sonnet-4-5", "a100", 12050, 10000, 2000, 400, 0, "0.000001"),
            (self.t_e6, "gemini-2.5-pro", "h100", 3000, 2048, 0, 1200, 700, "2"),
            (self.t_e7, "gpt-4o", "", 100, 0, 0, 20, 0, "0.1"),
            (self.t_ce, "gpt-4o", "h100", 10, 0, 0, 2, 0, "0.2"),
            (self.t_e1b, "gpt-4o", "h100", 1, 0, 0, 1, 0, "0"),
        ]
        self.range = {
            "start": iso(self.today - timedelta(days=10)),
            "end": iso(self.today + timedelta(days=1)),
        }

    def expected(self, start: datetime, end: datetime) -> dict[str, Any]:
        rows = [row for row in self.stored if start <= row[0] < end]
        gpu = sum((Decimal(row[8]) for row in rows), Decimal(0))
        return metrics(
            len(rows),
            *(sum(row[3 + k] for row in rows) for k in range(5)),
            gpu=format(gpu.quantize(Decimal("0.000001")), "f"),
        )


@pytest.fixture
def mix(api: Api, make_key: Callable[..., str]) -> Mix:
    return Mix(api, make_key)


TOTALS = metrics(6, 16161, 12248, 2000, 1923, 750, "3.550001")


def check_hand_count(mix: Mix) -> None:
    client = mix.client
    assert totals(client, "acme", **mix.range) == TOTALS

    by_model = usage(client, "acme", group_by="model", **mix.range).json()
    assert by_model["totals"] == TOTALS
    assert by_model["groups"] == [
        {"model": "claude-sonnet-4-5", **metrics(1, 12050, 10000, 2000, 400, 0, "0.000001")},
        {"model": "gemini-2.5-pro", **metrics(1, 3000, 2048, 0, 1200, 700, "2.000000")},
        {"model": "gpt-4o", **metrics(4, 1111, 200, 0, 323, 50, "1.550000")},
    ]

    by_hardware = usage(client, "acme", group_by="hardware", **mix.range).json()
    assert by_hardware["groups"] == [
        {"hardware": "", **metrics(1, 100, 0, 0, 20, 0, "0.100000")},
        {"hardware": "a100", **metrics(1, 12050, 10000, 2000, 400, 0, "0.000001")},
        {"hardware": "h100", **metrics(4, 4011, 2248, 0, 1503, 750, "3.450000")},
    ]

    by_day = usage(client, "acme", group_by="day", **mix.range).json()
    day = mix.today.date()
    assert by_day["groups"] == [
        {"day": str(day - timedelta(days=3)), **metrics(3, 1011, 200, 0, 303, 50, "1.450000")},
        {"day": str(day - timedelta(days=1)), **metrics(2, 12150, 10000, 2000, 420, 0, "0.100001")},
        {"day": str(day), **metrics(1, 3000, 2048, 0, 1200, 700, "2.000000")},
    ]

    # The other customer's event is not acme's, and acme's are not its.
    assert totals(client, "globex", **mix.range) == metrics(1, 5555, 0, 0, 5, 0, "0.000000")


def test_usage_after_a_mix_matches_a_hand_count(mix: Mix) -> None:
    assert mix.expected(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)) == (
        TOTALS
    )
    check_hand_count(mix)


def test_usage_same_after_rollup_fold_and_counts_new_events(mix: Mix) -> None:
    assert usage_rollup_fold().batches >= 4
    check_hand_count(mix)
    # Folding again changes nothing.
    assert usage_rollup_fold().batches == 0
    check_hand_count(mix)
    # An event accepted a moment ago counts at once, beside the folded ones.
    response = post(
        mix.client,
        [
            event(
                "e9",
                timestamp=iso(mix.t_e1 + timedelta(minutes=5)),
                input_tokens=9,
                output_tokens=4,
            )
        ],
    )
    assert response.json()["accepted"] == 1
    expected = dict(TOTALS, requests=7, input_tokens=16170, output_tokens=1927)
    assert totals(mix.client, "acme", **mix.range) == expected
    usage_rollup_fold()
    assert totals(mix.client, "acme", **mix.range) == expected


@pytest.mark.parametrize("fold", [False, True])
def test_ranges_cutting_hours_and_exclusive_end(mix: Mix, fold: bool) -> None:
    if fold:
        usage_rollup_fold()
    half_hour = timedelta(minutes=30)
    cases = [
        (mix.t_e1 + half_hour, mix.today + timedelta(days=1)),  # cuts e1's hour
        (mix.t_e1, mix.t_e6),  # end exclusive: e6 at the end is out
        (mix.t_e6, mix.t_e6 + timedelta(seconds=1)),  # start inclusive: e6 alone
        (mix.t_ce - timedelta(minutes=1), mix.t_e1b + timedelta(minutes=1)),
        (mix.t_e1 + timedelta(minutes=1), mix.t_e1 + timedelta(minutes=2)),  # nothing
        (mix.t_e7 - timedelta(hours=5), mix.t_e2 + half_hour),
    ]
    for start, end in cases:
        got = totals(mix.client, "acme", start=iso(start), end=iso(end))
        assert got == mix.expected(start, end), (start, end)


def test_unknown_customer_has_zero_usage(api: Api) -> None:
    client = api()
    response = usage(client, "nobody", group_by="model")
    assert response.status_code == 200
    body = response.json()
    assert body["customer"] == "nobody"
    assert body["totals"] == ZERO
    assert body["groups"] == []


def test_customer_id_with_spaces_and_unicode(api: Api) -> None:
    client = api()
    name = "acme corp ü"
    assert post(client, [event("a", customer=name, input_tokens=3)]).json()["accepted"] == 1
    body = usage(client, name).json()
    assert body["customer"] == name
    assert body["totals"]["input_tokens"] == 3


def test_default_range_is_the_current_utc_month(api: Api) -> None:
    client = api()
    now = datetime.now(UTC)
    month_start, next_month = current_month(now)
    assert month_start <= now < next_month
    assert month_start.day == 1 and month_start.hour == 0
    body = [
        event("first-instant", timestamp=iso(month_start), input_tokens=1),
        event("previous-month", timestamp=iso(month_start - timedelta(seconds=1)), input_tokens=20),
        event("just-now", input_tokens=300),  # timestamp defaults to the time received
    ]
    assert post(client, body).json()["accepted"] == 3
    report = usage(client, "acme").json()
    assert datetime.fromisoformat(report["start"]) == month_start
    assert datetime.fromisoformat(report["end"]) == next_month
    assert report["totals"]["requests"] == 2
    assert report["totals"]["input_tokens"] == 301
    assert report["groups"] == []


def test_current_month_boundaries() -> None:
    assert current_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert current_month(datetime(2026, 1, 1, tzinfo=UTC)) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )


def test_offsets_and_unencoded_plus_in_query(api: Api) -> None:
    client = api()
    moment = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    assert post(client, [event("a", timestamp=iso(moment), input_tokens=7)]).json()["accepted"] == 1
    start = (moment - timedelta(minutes=1)).astimezone().isoformat()
    # A "+" left unencoded in the query string arrives as a space.
    raw_start = (moment - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    raw_end = (moment + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    response = client.get(f"/v1/customers/acme/usage?start={raw_start}&end={raw_end}")
    assert response.status_code == 200, response.text
    assert response.json()["totals"]["input_tokens"] == 7
    # The same range given in another offset.
    shifted = usage(client, "acme", start=start, end=iso(moment + timedelta(minutes=1)))
    assert shifted.json()["totals"]["input_tokens"] == 7
    # The instant is excluded as an end.
    assert totals(client, "acme", start=start, end=iso(moment))["input_tokens"] == 0


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-11-01T00:00:00"}, "start"),
        ({"start": "2026-11-01"}, "start"),
        ({"end": "soon"}, "end"),
        ({"end": "2026-11-30T00:00:00"}, "end"),
        ({"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, "end"),
        ({"start": "2026-11-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, "end"),
        ({"group_by": "customer"}, "group_by"),
        ({"group_by": "MODEL"}, "group_by"),
    ],
)
def test_bad_query_params_400_name_the_param(api: Api, params: dict[str, str], name: str) -> None:
    response = usage(api(), "acme", **params)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"{name}:")
