"""Property-based tests of POST /v1/events (Hypothesis), over real HTTP.

Two kinds of request are generated:

- event batches, each event either valid or broken by exactly one known fault, with
  event ids drawn from a small pool so that duplicates and conflicts are common. A
  model of the store predicts every answer (which indices are rejected, how many are
  accepted, duplicates, conflicts) and the customer's usage afterwards;
- arbitrary bodies (random bytes, random JSON, near-miss events with random values,
  random content types), which must never get a 5xx.

Whatever got a 202 is exactly what the usage endpoint counts, and what is stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.models import Event
from tests.metering.helpers import iso

Api = Callable[..., httpx.Client]
_encode = msgspec.json.Encoder(decimal_format="number").encode
SIX = Decimal("0.000001")
TOKEN_NAMES = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)
# Faults, each with the field the rejection must name (native events).
FAULTS = {
    "missing_model": "model",
    "bad_customer": "customer",
    "bad_event_id": "event_id",
    "future": "timestamp",
    "late": "timestamp",
    "no_offset": "timestamp",
    "gpu_places": "gpu_seconds",
    "gpu_negative": "gpu_seconds",
    "negative_tokens": "output_tokens",
    "cache_over_input": "cache_read_input_tokens",
    "reasoning_over_output": "reasoning_output_tokens",
    "unknown_field": "tokens",
    "too_many_properties": "properties",
    "nested_property": "properties.meta",
}
ID_SUFFIXES = ["", "", "\\", "\t", "\n", "\r", "\\N", "é", '"', " ", "\u2028", "😀"]
# CloudEvents carry identity, customer and time in the envelope, the rest under data.
CE_NAMES = {"event_id": "id", "customer": "subject", "timestamp": "time"}


@dataclass(frozen=True)
class Planned:
    """One generated event: its raw JSON-able form, and what it must become."""

    raw: dict[str, Any]
    event_id: str
    fault: str | None
    # Canonical content (None when faulty): compared to tell retries from conflicts.
    content: tuple[Any, ...] | None = None
    tokens: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    gpu: Decimal = Decimal(0)


def _gpu_values() -> st.SearchStrategy[Decimal]:
    # SQLite (the demo store) keeps 15 significant digits (see test_events_api); on
    # PostgreSQL go well past what a binary float could hold.
    top = 10**11 if connection.vendor == "postgresql" else 10**4
    return st.builds(
        lambda units, places: Decimal(units).scaleb(-places),
        st.integers(0, top * 10**6),
        st.integers(0, 6),
    ).filter(lambda d: d < top)


@st.composite
def planned_event(draw: st.DrawFn, *, ids: list[str], customer: str, now: datetime) -> Planned:
    event_id = draw(st.sampled_from(ids))
    shape = draw(
        st.sampled_from(
            ["native", "openai_chat", "openai_responses", "anthropic", "gemini", "otel"]
        )
    )
    model = draw(st.sampled_from(["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro"]))
    hardware = draw(st.sampled_from(["", "h100", "a100"]))
    small = st.integers(0, 5000)

    # Canonical tokens, then the body in the chosen shape.
    inp = draw(small)
    read = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - read)) if shape in ("native", "anthropic", "otel") else 0
    out = draw(small)
    reason = draw(st.integers(0, out)) if shape != "anthropic" else 0
    raw: dict[str, Any] = {"event_id": event_id, "customer": customer, "model": model}
    if hardware:
        raw["hardware"] = hardware
    if shape == "native":
        for name, value in zip(TOKEN_NAMES, (inp, read, write, out, reason), strict=True):
            if value or draw(st.booleans()):
                raw[name] = value
    elif shape == "openai_chat":
        raw["usage"] = {
            "prompt_tokens": inp,
            "completion_tokens": out,
            "total_tokens": inp + out,
            "prompt_tokens_details": {"cached_tokens": read},
            "completion_tokens_details": {"reasoning_tokens": reason},
        }
    elif shape == "openai_responses":
        raw["usage"] = {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": read},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": reason},
            "total_tokens": inp + out,
        }
    elif shape == "anthropic":
        raw["provider"] = "anthropic"
        raw["usage"] = {
            "input_tokens": inp - read - write,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write,
            "output_tokens": out,
        }
    elif shape == "gemini":
        meta = {
            "promptTokenCount": inp,
            "cachedContentTokenCount": read,
            "candidatesTokenCount": out - reason,
            "thoughtsTokenCount": reason,
        }
        raw["usage"] = {"usageMetadata": meta} if draw(st.booleans()) else meta
    else:
        raw["attributes"] = {
            "gen_ai.usage.input_tokens": inp,
            "gen_ai.usage.cache_read.input_tokens": read,
            "gen_ai.usage.cache_creation.input_tokens": write,
            "gen_ai.usage.output_tokens": out,
            "gen_ai.usage.reasoning.output_tokens": reason,
        }

    gpu = draw(_gpu_values())
    if gpu or draw(st.booleans()):
        raw["gpu_seconds"] = draw(st.sampled_from([gpu, str(gpu)]))
    when: datetime | None = None
    if draw(st.booleans()):
        when = now - draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=34)))
        when = when.replace(microsecond=draw(st.sampled_from([0, when.microsecond])))
        offset = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
        text = when.astimezone(offset).isoformat()
        raw["timestamp"] = text.replace("+00:00", "Z") if draw(st.booleans()) else text
    if draw(st.booleans()):
        raw["latency_ms"] = draw(st.integers(0, 120_000))
    properties = draw(
        st.dictionaries(
            st.sampled_from(["team", "region", "tier", "beta"]),
            st.one_of(
                # NUL is a fault of its own (test_events_api); any other character is fine.
                st.text(
                    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                    max_size=20,
                ),
                st.integers(-(10**6), 10**6),
                st.booleans(),
            ),
            max_size=3,
        )
    )
    if properties:
        raw["properties"] = properties

    fault = draw(st.one_of(st.none(), st.none(), st.sampled_from(sorted(FAULTS))))
    if fault == "cache_over_input" and shape != "native":
        fault = "missing_model"
    if fault == "reasoning_over_output" and shape != "native":
        fault = "bad_customer"
    if fault == "negative_tokens" and shape != "native":
        fault = "gpu_negative"
    if fault == "missing_model":
        del raw["model"]
    elif fault == "bad_customer":
        raw["customer"] = draw(st.sampled_from(["", 42, None, "x" * 129]))
    elif fault == "bad_event_id":
        raw["event_id"] = draw(st.sampled_from(["", 7, "y" * 129]))
    elif fault == "future":
        moment = now + draw(
            st.timedeltas(min_value=timedelta(minutes=10), max_value=timedelta(days=900))
        )
        raw["timestamp"] = iso(moment)
    elif fault == "late":
        moment = now - draw(
            st.timedeltas(min_value=timedelta(days=36), max_value=timedelta(days=900))
        )
        raw["timestamp"] = iso(moment)
    elif fault == "no_offset":
        raw["timestamp"] = now.replace(tzinfo=None).isoformat()
    elif fault == "gpu_places":
        raw["gpu_seconds"] = draw(
            st.sampled_from([Decimal("0.0000001"), "1.1234567", Decimal("2.00000001")])
        )
    elif fault == "gpu_negative":
        raw["gpu_seconds"] = draw(st.sampled_from([Decimal("-0.5"), "-1", -3]))
    elif fault == "negative_tokens":
        raw["output_tokens"] = -draw(st.integers(1, 10))
    elif fault == "cache_over_input":
        raw["input_tokens"] = inp
        raw["cache_read_input_tokens"] = inp + 1
    elif fault == "reasoning_over_output":
        raw["output_tokens"] = out
        raw["reasoning_output_tokens"] = out + 1
    elif fault == "unknown_field":
        raw["tokens"] = 1
    elif fault == "too_many_properties":
        raw["properties"] = {f"p{i}": i for i in range(33)}
    elif fault == "nested_property":
        raw["properties"] = {"meta": {"a": 1}}

    if fault:
        return Planned(raw=raw, event_id=str(raw.get("event_id")), fault=fault)
    content = (
        customer,
        when,
        model,
        raw.get("provider", ""),
        hardware,
        (inp, read, write, out, reason),
        gpu,
        raw.get("latency_ms"),
        json.dumps(properties, sort_keys=True),
    )
    return Planned(
        raw=raw,
        event_id=event_id,
        fault=None,
        content=content,
        tokens=(inp, read, write, out, reason),
        gpu=gpu,
    )


def as_cloud_event(raw: dict[str, Any], ce_source: str) -> dict[str, Any]:
    data = {k: v for k, v in raw.items() if k not in CE_NAMES}
    envelope: dict[str, Any] = {"specversion": "1.0", "source": ce_source, "type": "inference"}
    for native, name in CE_NAMES.items():
        if native in raw:
            envelope[name] = raw[native]
    envelope["data"] = data
    return envelope


@st.composite
def planned_requests(draw: st.DrawFn, *, customer: str, now: datetime) -> list[dict[str, Any]]:
    """1-3 requests; an event is sometimes an exact repeat of one drawn before."""
    # Characters that COPY's text format and JSON treat specially, in some ids.
    ids = [
        f"{customer}-e{i}{draw(st.sampled_from(ID_SUFFIXES))}"
        for i in range(draw(st.integers(1, 12)))
    ]
    drawn: list[Planned] = []
    requests = []
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.sampled_from([1, 2, 5, 15, 16, 17, 30]))
        events = []
        for _ in range(size):
            if drawn and draw(st.integers(0, 3)) == 0:
                events.append(draw(st.sampled_from(drawn)))
            else:
                planned = draw(planned_event(ids=ids, customer=customer, now=now))
                drawn.append(planned)
                events.append(planned)
        kind = draw(st.sampled_from(["native", "native", "cloudevents"]))
        single = size == 1 and draw(st.booleans())
        requests.append({"events": events, "kind": kind, "single": single})
    return requests


@dataclass
class Store:
    """What the service must hold: the first version of every idempotency key."""

    content: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=lambda: [0] * 5)
    gpu: Decimal = Decimal(0)
    requests: int = 0


def predict(store: Store, events: list[Planned], *, key_kind: str) -> dict[str, Any]:
    accepted = duplicates = 0
    rejected: list[int] = []
    conflicts: set[str] = set()
    for index, planned in enumerate(events):
        if planned.fault:
            rejected.append(index)
            continue
        key = (key_kind, planned.event_id)
        first = store.content.get(key)
        if first is None:
            assert planned.content is not None
            store.content[key] = planned.content
            store.requests += 1
            store.tokens = [a + b for a, b in zip(store.tokens, planned.tokens, strict=True)]
            store.gpu += planned.gpu
            accepted += 1
        else:
            duplicates += 1
            if first != planned.content:
                conflicts.add(planned.event_id)
    return {
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
        "conflicts": conflicts,
        "status": 400 if accepted == 0 and duplicates == 0 and rejected else 202,
    }


def usage_totals(client: httpx.Client, customer: str, now: datetime) -> dict[str, Any]:
    response = client.get(
        f"/v1/customers/{quote(customer, safe='')}/usage",
        params={"start": iso(now - timedelta(days=40)), "end": iso(now + timedelta(days=1))},
    )
    assert response.status_code == 200, response.text
    return response.json()["totals"]


def expected_totals(store: Store) -> dict[str, Any]:
    return {
        "requests": store.requests,
        **dict(zip(TOKEN_NAMES, store.tokens, strict=True)),
        "gpu_seconds": format(store.gpu.quantize(SIX), "f"),
    }


# --- arbitrary bodies ----------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
field_names = st.sampled_from(
    [
        "event_id",
        "customer",
        "model",
        "timestamp",
        "gpu_seconds",
        "usage",
        "attributes",
        "properties",
        "input_tokens",
        "output_tokens",
        "specversion",
        "id",
        "source",
        "subject",
        "data",
        "usageMetadata",
        "prompt_tokens",
        "prompt_tokens_details",
    ]
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(field_names, st.text(max_size=10)), children, max_size=6),
    ),
    max_leaves=25,
)
arbitrary_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.dictionaries(field_names, json_values, max_size=8), min_size=1, max_size=5).map(
        lambda v: json.dumps(v).encode()
    ),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "application/json; charset=utf-8",
        ]
    ),
    st.sampled_from(["text/plain", "", "application/octet-stream", "multipart/form-data"]),
)


# --- the test --------------------------------------------------------------------------------


@pytest.fixture
def hypothesis_client(api: Api) -> httpx.Client:
    return api()


def test_random_bodies_never_5xx_and_202_is_exactly_what_is_counted(
    hypothesis_client: httpx.Client,
) -> None:
    client = hypothesis_client
    tally = {"accepted": 0}
    customers: dict[str, Store] = {}
    now = datetime.now(UTC)

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(data=st.data())
    def planned(data: st.DataObject) -> None:
        suffix = data.draw(st.sampled_from(["", "é", "\\", " ", "\t", "\\N"]))
        customer = f"prop-{uuid.uuid4().hex[:12]}{suffix}"
        store = customers.setdefault(customer, Store())
        requests = data.draw(planned_requests(customer=customer, now=datetime.now(UTC)))
        ce_source = f"//prop/{customer}"
        for request in requests:
            events: list[Planned] = request["events"]
            raws = [
                as_cloud_event(p.raw, ce_source) if request["kind"] == "cloudevents" else p.raw
                for p in events
            ]
            if request["kind"] == "cloudevents":
                content_type = (
                    "application/cloudevents+json"
                    if request["single"]
                    else "application/cloudevents-batch+json"
                )
            else:
                content_type = "application/json"
            body = raws[0] if request["single"] else raws
            response = client.post(
                "/v1/events", content=_encode(body), headers={"Content-Type": content_type}
            )
            key_kind = ce_source if request["kind"] == "cloudevents" else "native"
            want = predict(store, events, key_kind=key_kind)
            assert response.status_code == want["status"], response.text
            got = response.json()
            tally["accepted"] += got["accepted"]
            assert (
                got["accepted"],
                got["duplicates"],
                [r["index"] for r in got["rejected"]],
                set(got.get("conflicts", [])),
            ) == (want["accepted"], want["duplicates"], want["rejected"], want["conflicts"]), got
            if request["kind"] == "native":
                for rejection in got["rejected"]:
                    planned_event = events[rejection["index"]]
                    assert FAULTS[planned_event.fault] in rejection["errors"], rejection
        assert usage_totals(client, customer, now) == expected_totals(store)

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(body=arbitrary_bodies, content_type=content_types)
    def arbitrary(body: bytes, content_type: str) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        response = client.post("/v1/events", content=body, headers=headers)
        assert response.status_code < 500, response.text
        assert response.status_code in (202, 400, 413, 415), response.text
        got = response.json()
        if "accepted" in got:
            tally["accepted"] += got["accepted"]
            assert got["accepted"] + got["duplicates"] + len(got["rejected"]) >= 1
            assert response.status_code == (
                400 if got["accepted"] == 0 and got["duplicates"] == 0 else 202
            )
        else:
            assert isinstance(got["detail"], str) and got["detail"]

    planned()
    arbitrary()

    # Every 202 was stored, nothing else was; and each customer's usage, read again over
    # HTTP after everything else ran, is still its model's.
    assert Event.objects.count() == tally["accepted"]
    assert sum(store.requests for store in customers.values()) <= tally["accepted"]
    for customer, store in customers.items():
        assert usage_totals(client, customer, now) == expected_totals(store)
