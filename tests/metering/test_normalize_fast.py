"""The fast path for native events (typed decoding + normalize.native_event_fast) must
answer exactly what the generic path (dict decoding + normalize.native_event) answers:
the same events, field for field, and the same errors. Pure: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import normalize, services
from metering.fields import TOKEN_FIELDS
from metering.normalize import Limits, NativeFields, NormalizedEvent, fast

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
LIMITS = Limits(received_at=NOW, max_age=timedelta(days=35), max_future=timedelta(minutes=5))
_encoder = msgspec.json.Encoder(decimal_format="number")

TOKENS = list(TOKEN_FIELDS)


def _snapshot(event: NormalizedEvent | None) -> Any:
    if event is None:
        return None
    # str() of the Decimal too: 1.5 and 1.500 are equal but hash differently.
    return (
        [getattr(event, name) for name in NormalizedEvent.__dataclass_fields__],
        str(event.gpu_seconds),
        event.timestamp.utcoffset(),
        event.content_hash(),
        event.key_hash(source_id=7),
    )


def assert_same_answers(body: bytes) -> int:
    """Both paths over one body; returns how many events the fast path decoded."""
    try:
        typed = services._native_decoder.decode(body)
    except msgspec.DecodeError:
        return 0  # the generic path takes the whole body: nothing to compare
    generic = services._decoder.decode(body)
    typed_items = typed if isinstance(typed, list) else [typed]
    generic_items = generic if isinstance(generic, list) else [generic]
    assert len(typed_items) == len(generic_items)
    for item, raw in zip(typed_items, generic_items, strict=True):
        assert item.raw() == raw
        fast_event, fast_errors = normalize.native_event_fast(item, limits=LIMITS)
        slow_event, slow_errors = normalize.native_event(raw, limits=LIMITS)
        assert fast_errors == slow_errors
        assert _snapshot(fast_event) == _snapshot(slow_event)
    return len(typed_items)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


strings = st.one_of(
    st.sampled_from(["", "a", "gpt-4o", "acme", "x" * 128, "x" * 129, "y" * 257, "a\x00b"]),
    st.text(max_size=20),
)
counts = st.one_of(
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from([-1, 2**53, 2**53 + 1, 2**31 - 1, 2**31, 10**30]),
)
any_scalar = st.one_of(
    st.none(),
    st.booleans(),
    counts,
    strings,
    st.decimals(allow_nan=False, allow_infinity=False, places=3, max_value=10**6),
)
timestamps = st.one_of(
    st.sampled_from(
        [
            _iso(NOW - timedelta(hours=1)),
            "2026-11-26T11:00:00.123456+01:00",
            _iso(NOW + timedelta(minutes=10)),
            _iso(NOW - timedelta(days=40)),
            "2026-11-26",
            "2026-11-26T11:00:00",
            "not a time",
        ]
    ),
    st.datetimes(
        min_value=datetime(2026, 10, 1), max_value=datetime(2026, 12, 1), timezones=st.just(UTC)
    ).map(_iso),
)
gpu = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False),
    st.decimals(min_value=0, max_value=10, places=8, allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
    st.sampled_from(["1.5", " 2 ", "abc", "-1", "1e3", True, 3, -3]),
)
# Properties with one value at or just past a limit.
PROPERTY_EDGES = [
    {"team": "a\x00"},
    {"a\x00": "x"},
    {"k" * 64: "x"},
    {"k" * 65: "x"},
    {"v": "v" * 256},
    {"v": "v" * 257},
    {"n": 10**39},
    {"n": 10**40},
    {"n": Decimal("1e39")},
    {"n": Decimal("1e40")},
    {"n": Decimal("1e-40")},
    {"n": Decimal("1e-41")},
    {"n": Decimal("1.5")},
    {"b": False},
    {"l": [1]},
    {"o": {}},
    {"z": None},
    {f"k{i}": "v" for i in range(32)},
    {f"k{i}": "v" for i in range(33)},
]
properties = st.one_of(
    st.dictionaries(
        st.sampled_from(["region", "team", "", "k" * 65, "a\x00"]),
        st.one_of(strings, st.booleans(), counts, st.decimals(allow_nan=False, places=2)),
        max_size=4,
    ),
    st.sampled_from([[], "x", 3]),
    # One value at an edge beside ordinary ones.
    st.sampled_from(PROPERTY_EDGES).map(lambda edge: {"region": "eu", **edge, "stream": True}),
)
usage = st.one_of(
    st.fixed_dictionaries(
        {"prompt_tokens": counts, "completion_tokens": counts},
        optional={
            "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": counts}),
            "completion_tokens_details": st.fixed_dictionaries({"reasoning_tokens": counts}),
        },
    ),
    st.fixed_dictionaries(
        {"input_tokens": counts, "output_tokens": counts},
        optional={
            "cache_read_input_tokens": counts,
            "cache_creation_input_tokens": counts,
            "input_tokens_details": st.fixed_dictionaries({"cached_tokens": counts}),
        },
    ),
    st.fixed_dictionaries(
        {"usageMetadata": st.fixed_dictionaries({"promptTokenCount": counts})},
    ),
    st.sampled_from([{}, [], "x", {"unknown": 1}]),
)
attributes = st.one_of(
    st.fixed_dictionaries(
        {"gen_ai.usage.input_tokens": counts},
        optional={
            "gen_ai.usage.output_tokens": counts,
            "gen_ai.request.model": strings,
            "gen_ai.response.model": strings,
            "gen_ai.system": strings,
            "gen_ai.provider.name": strings,
        },
    ),
    st.sampled_from([{}, [], {"other": 1}]),
)

valid_strings = st.sampled_from(["a", "gpt-4o", "acme", "x" * 128, "é😀", "tab\there"])
valid_counts = st.integers(min_value=0, max_value=1_000)

# Valid events, so that the checks after the first one are reached too ...
token_fields = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {
            "input_tokens": st.integers(min_value=2_000, max_value=10_000),
            "output_tokens": st.integers(min_value=1_000, max_value=10_000),
        },
        optional={
            "cache_read_input_tokens": valid_counts,
            "cache_write_input_tokens": valid_counts,
            "reasoning_output_tokens": valid_counts,
        },
    ),
)
valid_gpu = st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False)
valid_events = st.builds(
    lambda fields, tokens: {**fields, **tokens},
    st.fixed_dictionaries(
        {"event_id": valid_strings, "customer": valid_strings, "model": valid_strings},
        optional={
            "timestamp": st.datetimes(
                min_value=datetime(2026, 10, 25), max_value=datetime(2026, 11, 26, 12, 4)
            ).map(lambda moment: _iso(moment.replace(tzinfo=UTC))),
            "provider": st.sampled_from(["", "openai", "anthropic", "p" * 128]),
            "hardware": st.sampled_from(["", "H100", "h" * 128]),
            "gpu_seconds": st.one_of(valid_gpu, valid_gpu.map(str), st.integers(0, 100)),
            "latency_ms": st.sampled_from([0, 1, 250, 2**31 - 1]),
            "properties": st.dictionaries(
                st.sampled_from(["region", "team"]),
                st.one_of(valid_strings, st.booleans()),
                max_size=2,
            ),
        },
    ),
    token_fields,
)


# ... then one or two fields set to a value at or just past an edge.
def _labels(limit: int) -> st.SearchStrategy[Any]:
    return st.sampled_from(["", "q" * limit, "q" * (limit + 1), "a\x00b", "\x00", None, 3])


edges = {
    "event_id": _labels(normalize.MAX_ID_LENGTH),
    "customer": _labels(normalize.MAX_ID_LENGTH),
    "model": _labels(normalize.MAX_MODEL_LENGTH),
    "provider": _labels(normalize.MAX_LABEL_LENGTH),
    "hardware": _labels(normalize.MAX_LABEL_LENGTH),
    "timestamp": st.one_of(timestamps, st.sampled_from([None, 5])),
    **{
        name: st.sampled_from(
            [-1, 0, 2**53, 2**53 + 1, 10**30, None, True, Decimal("12.0"), Decimal("1.5")]
        )
        for name in TOKENS
    },
    "gpu_seconds": st.one_of(gpu, st.none()),
    "latency_ms": st.sampled_from([-1, 0, 2**31 - 1, 2**31, 2**53 + 1, None, True, "5"]),
    "properties": st.one_of(properties, st.none()),
    "usage": st.one_of(usage, st.none()),
    "attributes": st.one_of(attributes, st.none()),
    "unknown": any_scalar,
}
edge_fields = st.sampled_from(sorted(edges)).flatmap(
    lambda name: st.tuples(st.just(name), edges[name])
)


@st.composite
def native_events(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(valid_events)
    for name, value in draw(st.lists(edge_fields, max_size=2)):
        if name in event and draw(st.integers(0, 3)) == 0:
            del event[name]
        else:
            event[name] = value
    return event


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(native_events(), min_size=1, max_size=4))
def test_fast_path_answers_exactly_like_the_generic_path(events: list[dict[str, Any]]) -> None:
    assert_same_answers(_encoder.encode(events))


@settings(max_examples=300, deadline=None)
@given(native_events())
def test_fast_path_single_object(event: dict[str, Any]) -> None:
    assert_same_answers(_encoder.encode(event))


REALISTIC = [
    {"event_id": "a", "customer": "acme", "model": "gpt-4o", "input_tokens": 10},
    {
        "event_id": "b",
        "customer": "acme",
        "timestamp": _iso(NOW - timedelta(minutes=3)),
        "model": "llama",
        "provider": "self-hosted",
        "hardware": "H100",
        "input_tokens": 100,
        "cache_read_input_tokens": 50,
        "output_tokens": 20,
        "reasoning_output_tokens": 5,
        "gpu_seconds": Decimal("0.123456"),
        "latency_ms": 300,
        "properties": {"region": "eu", "stream": True, "n": 3, "x": Decimal("1.5")},
    },
    {"event_id": "c", "customer": "acme", "model": "m", "gpu_seconds": "1.25"},
    {
        "event_id": "d",
        "customer": "acme",
        "model": "claude",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 4},
    },
    {
        "event_id": "e",
        "customer": "acme",
        "attributes": {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 5},
    },
]


def test_realistic_events_take_the_fast_path_and_agree() -> None:
    body = _encoder.encode(REALISTIC)
    assert assert_same_answers(body) == len(REALISTIC)
    for item in services._native_decoder.decode(body):
        assert isinstance(item, NativeFields)
        assert fast._native_clean(item, LIMITS) is not None


@pytest.mark.parametrize(
    "body",
    [
        b'[{"event_id": "a", "customer": "c", "model": "m", "input_tokens": 1.0}]',
        b'[{"event_id": "a", "customer": "c", "model": "m", "input_tokens": true}]',
        b'[{"event_id": "a", "customer": "c", "model": "m", "surprise": 1}]',
        b'[{"customer": "c", "model": "m"}]',
        b'[{"event_id": "a", "customer": "c", "model": "m"}, 3]',
    ],
)
def test_bodies_the_typed_decoder_refuses_go_the_generic_way(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        services._native_decoder.decode(body)


# --- every listed edge, one at a time, on an otherwise valid event -----------------------

BASE = {
    "event_id": "e",
    "customer": "c",
    "timestamp": _iso(NOW - timedelta(minutes=1)),
    "model": "m",
    "provider": "openai",
    "hardware": "H100",
    "input_tokens": 100,
    "cache_read_input_tokens": 10,
    "cache_write_input_tokens": 5,
    "output_tokens": 50,
    "reasoning_output_tokens": 5,
    "gpu_seconds": Decimal("1.5"),
    "latency_ms": 100,
    "properties": {"region": "eu", "stream": True},
}
DELETE = object()


def _label_edges(limit: int) -> list[Any]:
    return ["", "q" * limit, "q" * (limit + 1), "a\x00b", "\x00", None, 3, DELETE]


EDGE_VALUES: dict[str, list[Any]] = {
    "event_id": _label_edges(normalize.MAX_ID_LENGTH),
    "customer": _label_edges(normalize.MAX_ID_LENGTH),
    "model": _label_edges(normalize.MAX_MODEL_LENGTH),
    "provider": _label_edges(normalize.MAX_LABEL_LENGTH),
    "hardware": _label_edges(normalize.MAX_LABEL_LENGTH),
    "timestamp": [
        None,
        5,
        DELETE,
        "2026-11-26",
        "2026-11-26T11:00:00",
        "2026-11-26T11:00:00.5+01:00",
        "2026-11-26T12:05:01Z",
        "2026-10-21T11:59:59Z",
        "2026-10-22T12:00:00Z",
    ],
    **{
        name: [-1, 0, 2**53, 2**53 + 1, None, True, Decimal("12.0"), Decimal("1.5"), DELETE]
        for name in TOKENS
    },
    "gpu_seconds": [
        None,
        0,
        -1,
        True,
        "1.5",
        " 2 ",
        "abc",
        "NaN",
        Decimal("0.0000001"),
        Decimal("1e17"),
        Decimal("99999999999999999.999999"),
        "1e3",
        DELETE,
    ],
    "latency_ms": [-1, 0, 2**31 - 1, 2**31, None, True, "5", Decimal("5.0"), DELETE],
    "properties": [
        None,
        [],
        "x",
        {},
        {"": "x"},
        {"n": -(10**40)},
        *PROPERTY_EDGES,
        DELETE,
    ],
    "usage": [
        None,
        {},
        [],
        {"prompt_tokens": 10, "completion_tokens": 5},
        {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 4},
        {"usageMetadata": {"promptTokenCount": 7, "thoughtsTokenCount": 2}},
    ],
    "attributes": [
        None,
        {},
        {"gen_ai.usage.input_tokens": 5, "gen_ai.request.model": "gpt"},
        {"gen_ai.usage.input_tokens": -5},
    ],
    "unknown": [1, None],
}
EDGE_CASES = [(name, value) for name, values in EDGE_VALUES.items() for value in values]


@pytest.mark.parametrize(("name", "value"), EDGE_CASES)
def test_each_edge_answered_alike(name: str, value: Any) -> None:
    for base in (BASE, {k: v for k, v in BASE.items() if k not in TOKENS}):
        event = dict(base)
        if value is DELETE:
            event.pop(name, None)
        else:
            event[name] = value
        assert_same_answers(_encoder.encode([event]))
        assert_same_answers(_encoder.encode(event))
