"""Unit tests of metering.normalize: pure validation and normalisation, no database.

Raw events are decoded from JSON text the way the API decodes them (numbers with a
fraction become Decimal), so these tests see exactly what the endpoint sees.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from metering import normalize
from metering.fields import TOKEN_FIELDS
from metering.normalize import Limits, NormalizedEvent, cloud_event, native_event

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
LIMITS = Limits(received_at=NOW, max_age=timedelta(days=35), max_future=timedelta(minutes=5))
_decoder = msgspec.json.Decoder(float_hook=Decimal)


def decode(text: str) -> Any:
    return _decoder.decode(text.encode())


def ok(raw: dict[str, Any]) -> NormalizedEvent:
    event, errors = native_event(raw, limits=LIMITS)
    assert errors == {}
    assert event is not None
    return event


def errors_of(raw: Any) -> dict[str, str]:
    event, errors = native_event(raw, limits=LIMITS)
    assert event is None
    assert errors
    return errors


def base(**fields: Any) -> dict[str, Any]:
    return {"event_id": "evt-1", "customer": "acme", "model": "gpt-4o", **fields}


def tokens(event: NormalizedEvent) -> tuple[int, int, int, int, int]:
    return (
        event.input_tokens,
        event.cache_read_input_tokens,
        event.cache_write_input_tokens,
        event.output_tokens,
        event.reasoning_output_tokens,
    )


# --- a plain native event -------------------------------------------------------------


def test_native_event_with_all_fields_is_kept_as_sent() -> None:
    raw = decode(
        """{"event_id": "req_1", "customer": "acme", "timestamp": "2026-11-26T11:00:00+02:00",
            "model": "gpt-4o", "provider": "openai", "hardware": "h100",
            "input_tokens": 1200, "cache_read_input_tokens": 1000, "cache_write_input_tokens": 100,
            "output_tokens": 300, "reasoning_output_tokens": 120,
            "gpu_seconds": 1.234567, "latency_ms": 850,
            "properties": {"team": "search", "priority": 2, "beta": true, "ratio": 0.5}}"""
    )
    event = ok(raw)
    assert event.event_id == "req_1"
    assert event.customer == "acme"
    assert event.timestamp == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert (event.model, event.provider, event.hardware) == ("gpt-4o", "openai", "h100")
    assert tokens(event) == (1200, 1000, 100, 300, 120)
    assert event.gpu_seconds == Decimal("1.234567")
    assert event.latency_ms == 850
    assert event.properties == {
        "team": "search",
        "priority": 2,
        "beta": True,
        "ratio": Decimal("0.5"),
    }
    assert event.timestamp_given


def test_defaults_token_counts_zero_timestamp_received_at() -> None:
    event = ok(base())
    assert tokens(event) == (0, 0, 0, 0, 0)
    assert event.gpu_seconds == Decimal(0)
    assert event.latency_ms is None
    assert event.properties == {}
    assert event.provider == ""
    assert event.hardware == ""
    assert event.timestamp == NOW
    assert not event.timestamp_given


def test_null_token_count_means_zero() -> None:
    assert ok(base(input_tokens=None)).input_tokens == 0


# --- provider usage shapes, against hand-computed numbers from the DESIGN.md table ------


def test_openai_chat_usage() -> None:
    raw = base(
        usage=decode(
            """{"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 0}}"""
        )
    )
    # input = prompt_tokens; cache read = cached_tokens; output = completion_tokens;
    # reasoning = reasoning_tokens; no cache write in OpenAI's shapes.
    assert tokens(ok(raw)) == (1200, 1000, 0, 300, 120)


def test_openai_chat_usage_without_details() -> None:
    raw = base(usage={"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22})
    assert tokens(ok(raw)) == (17, 0, 0, 5, 0)


def test_openai_responses_usage() -> None:
    raw = base(
        usage=decode(
            """{"input_tokens": 5000, "input_tokens_details": {"cached_tokens": 4096},
                "output_tokens": 900, "output_tokens_details": {"reasoning_tokens": 640},
                "total_tokens": 5900}"""
        )
    )
    assert tokens(ok(raw)) == (5000, 4096, 0, 900, 640)


def test_anthropic_usage_adds_cached_input_to_input() -> None:
    raw = base(
        model="claude-sonnet-4-5",
        provider="anthropic",
        usage=decode(
            """{"input_tokens": 50, "cache_read_input_tokens": 10000,
                "cache_creation_input_tokens": 2000, "output_tokens": 400}"""
        ),
    )
    # Anthropic's input_tokens is the uncached part: 50 + 10000 + 2000 = 12050.
    assert tokens(ok(raw)) == (12050, 10000, 2000, 400, 0)


def test_anthropic_usage_recognised_without_provider() -> None:
    raw = base(
        model="claude-haiku-4-5",
        usage={"input_tokens": 7, "cache_read_input_tokens": 93, "output_tokens": 11},
    )
    assert tokens(ok(raw)) == (100, 93, 0, 11, 0)


def test_anthropic_usage_with_null_cache_fields() -> None:
    raw = base(
        provider="anthropic",
        usage={
            "input_tokens": 25,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
            "output_tokens": 3,
        },
    )
    assert tokens(ok(raw)) == (25, 0, 0, 3, 0)


def test_gemini_usage_metadata_wrapped() -> None:
    raw = base(
        model="gemini-2.5-pro",
        usage=decode(
            """{"usageMetadata": {"promptTokenCount": 3000, "cachedContentTokenCount": 2048,
                "candidatesTokenCount": 500, "thoughtsTokenCount": 700,
                "totalTokenCount": 4200}}"""
        ),
    )
    # Gemini reports thoughts beside the candidates: output = 500 + 700.
    assert tokens(ok(raw)) == (3000, 2048, 0, 1200, 700)


def test_gemini_usage_metadata_bare() -> None:
    raw = base(
        model="gemini-2.5-flash",
        usage={"promptTokenCount": 40, "candidatesTokenCount": 9, "totalTokenCount": 49},
    )
    assert tokens(ok(raw)) == (40, 0, 0, 9, 0)


def test_otel_attributes() -> None:
    raw = {
        "event_id": "span-1",
        "customer": "acme",
        "attributes": {
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.provider.name": "openai",
            "gen_ai.usage.input_tokens": 800,
            "gen_ai.usage.cache_read.input_tokens": 300,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.usage.output_tokens": 250,
            "gen_ai.usage.reasoning.output_tokens": 50,
            "server.address": "api.openai.com",
        },
    }
    event = ok(raw)
    assert tokens(event) == (800, 300, 100, 250, 50)
    # The model and provider come from the span when the event does not name them.
    assert event.model == "gpt-4o-2024-08-06"
    assert event.provider == "openai"


def test_otel_attributes_explicit_model_wins() -> None:
    raw = base(
        model="my-deployment",
        provider="azure",
        attributes={"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3},
    )
    event = ok(raw)
    assert (event.model, event.provider) == ("my-deployment", "azure")
    assert tokens(event) == (3, 0, 0, 0, 0)


def test_otel_attributes_without_usage_rejected() -> None:
    errors = errors_of(base(attributes={"gen_ai.request.model": "gpt-4o"}))
    assert "attributes" in errors


def test_otel_attributes_without_any_model_rejected() -> None:
    errors = errors_of(
        {"event_id": "e", "customer": "c", "attributes": {"gen_ai.usage.input_tokens": 1}}
    )
    assert "model" in errors


def test_unrecognised_usage_object_rejected() -> None:
    errors = errors_of(base(usage={"tokens": 12}))
    assert set(errors) == {"usage"}
    assert "not a recognised usage object" in errors["usage"]


def test_usage_must_be_object() -> None:
    assert set(errors_of(base(usage=[1, 2]))) == {"usage"}


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 2}, "usage.prompt_tokens"),
        ({"prompt_tokens": 1, "completion_tokens": "2"}, "usage.completion_tokens"),
        (
            {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": 3},
            "usage.prompt_tokens_details",
        ),
        (
            {
                "prompt_tokens": 5,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 1.5},
            },
            "usage.prompt_tokens_details.cached_tokens",
        ),
        (
            {
                "input_tokens": 5,
                "output_tokens": 2,
                "output_tokens_details": {"reasoning_tokens": -3},
            },
            "usage.output_tokens_details.reasoning_tokens",
        ),
        (
            {"input_tokens": 5, "cache_creation_input_tokens": -1, "output_tokens": 1},
            "usage.cache_creation_input_tokens",
        ),
        ({"usageMetadata": {"promptTokenCount": True}}, "usage.usageMetadata.promptTokenCount"),
        ({"promptTokenCount": 3, "thoughtsTokenCount": -2}, "usage.thoughtsTokenCount"),
    ],
)
def test_bad_usage_values_name_the_nested_field(usage: dict[str, Any], field: str) -> None:
    raw = base(usage=decode(msgspec.json.encode(usage).decode()))
    assert field in errors_of(raw)


def test_bad_otel_value_names_the_attribute() -> None:
    errors = errors_of(base(attributes={"gen_ai.usage.output_tokens": -4}))
    assert "attributes.gen_ai.usage.output_tokens" in errors


def test_usage_and_token_fields_together_rejected() -> None:
    errors = errors_of(base(input_tokens=5, usage={"prompt_tokens": 5, "completion_tokens": 1}))
    assert "usage" in errors
    errors = errors_of(
        base(usage={"prompt_tokens": 5}, attributes={"gen_ai.usage.input_tokens": 5})
    )
    assert "usage" in errors


def test_usage_shape_invariant_violation_rejected() -> None:
    # More cached than prompt tokens: the provider's numbers break the invariant.
    errors = errors_of(
        base(
            usage={
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 11},
            }
        )
    )
    assert "cache_read_input_tokens" in errors
    errors = errors_of(
        base(
            usage={
                "input_tokens": 10,
                "output_tokens": 4,
                "output_tokens_details": {"reasoning_tokens": 5},
            }
        )
    )
    assert "reasoning_output_tokens" in errors


# --- token invariants ------------------------------------------------------------------


def test_cache_read_plus_write_may_equal_input() -> None:
    event = ok(base(input_tokens=10, cache_read_input_tokens=6, cache_write_input_tokens=4))
    assert tokens(event) == (10, 6, 4, 0, 0)


def test_cache_read_plus_write_above_input_rejected() -> None:
    errors = errors_of(base(input_tokens=10, cache_read_input_tokens=6, cache_write_input_tokens=5))
    assert set(errors) == {"cache_read_input_tokens"}
    assert "must not exceed input_tokens" in errors["cache_read_input_tokens"]


def test_reasoning_may_equal_output() -> None:
    assert ok(base(output_tokens=7, reasoning_output_tokens=7)).reasoning_output_tokens == 7


def test_reasoning_above_output_rejected() -> None:
    errors = errors_of(base(output_tokens=7, reasoning_output_tokens=8))
    assert set(errors) == {"reasoning_output_tokens"}
    assert "must not exceed output_tokens" in errors["reasoning_output_tokens"]


@pytest.mark.parametrize("name", TOKEN_FIELDS)
@pytest.mark.parametrize("value", ["-1", "1.5", "true", '"12"', "[1]", "1e30"])
def test_bad_token_count_names_the_field(name: str, value: str) -> None:
    raw = base(**{name: decode(value)})
    errors = errors_of(raw)
    assert name in errors


def test_integral_decimal_token_count_accepted_exactly() -> None:
    assert ok(base(input_tokens=decode("12.0"))).input_tokens == 12


def test_token_count_upper_bound() -> None:
    assert ok(base(input_tokens=2**53)).input_tokens == 2**53
    assert "input_tokens" in errors_of(base(input_tokens=2**53 + 1))


# --- gpu_seconds: exact, never through a binary float -----------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1", "0.1"),
        ('"0.1"', "0.1"),
        ("1.000001", "1.000001"),
        ('"123456789012.123456"', "123456789012.123456"),
        ("123456789012.123456", "123456789012.123456"),
        ("3", "3"),
        ('"3"', "3"),
        ("0", "0"),
        ("2.5e-3", "0.0025"),
        ('"1.2300000"', "1.23"),
    ],
)
def test_gpu_seconds_kept_exactly(text: str, expected: str) -> None:
    value = ok(base(gpu_seconds=decode(text))).gpu_seconds
    assert isinstance(value, Decimal)
    # Equal to the decimal as written: through a binary float 0.1 would have become
    # 0.1000000000000000055511151231257827…, and 123456789012.123456 would lose digits.
    assert value == Decimal(expected)
    assert value.as_tuple().exponent >= -6


def test_gpu_seconds_sum_is_exact() -> None:
    values = [ok(base(gpu_seconds=decode(t))).gpu_seconds for t in ("0.1", "0.2", '"0.000001"')]
    assert sum(values) == Decimal("0.300001")


@pytest.mark.parametrize(
    "text",
    [
        "0.1234567",
        '"0.0000001"',
        "1e-7",
        "-0.5",
        '"-1"',
        '"abc"',
        '"NaN"',
        '"Infinity"',
        '""',
        "true",
        "[1]",
        "{}",
        "1e17",
    ],
)
def test_gpu_seconds_rejected(text: str) -> None:
    errors = errors_of(base(gpu_seconds=decode(text)))
    assert set(errors) == {"gpu_seconds"}


def test_gpu_seconds_more_than_six_places_message() -> None:
    errors = errors_of(base(gpu_seconds="1.0000001"))
    assert errors["gpu_seconds"] == "must have at most 6 decimal places"


# --- identifiers and labels ------------------------------------------------------------


@pytest.mark.parametrize("name", ["event_id", "customer", "model"])
def test_required_string_missing(name: str) -> None:
    raw = base()
    del raw[name]
    errors = errors_of(raw)
    assert name in errors
    assert "required" in errors[name]


@pytest.mark.parametrize("name", ["event_id", "customer", "model"])
@pytest.mark.parametrize("value", ["", 12, None, ["x"]])
def test_required_string_bad(name: str, value: Any) -> None:
    assert name in errors_of(base(**{name: value}))


@pytest.mark.parametrize("name", ["event_id", "customer"])
def test_id_length_limit(name: str) -> None:
    assert getattr(ok(base(**{name: "x" * 128})), name) == "x" * 128
    errors = errors_of(base(**{name: "x" * 129}))
    assert errors[name] == "must be at most 128 characters"


@pytest.mark.parametrize("name", ["provider", "hardware"])
def test_optional_label_bad(name: str) -> None:
    assert name in errors_of(base(**{name: 5}))
    assert name in errors_of(base(**{name: "x" * 129}))


def test_latency_ms() -> None:
    assert ok(base(latency_ms=0)).latency_ms == 0
    assert "latency_ms" in errors_of(base(latency_ms=-1))
    assert "latency_ms" in errors_of(base(latency_ms=2**31))
    assert "latency_ms" in errors_of(base(latency_ms=decode("1.5")))


def test_unknown_field_rejected_by_name() -> None:
    errors = errors_of(base(tokens_in=5))
    assert errors == {"tokens_in": "is not a known field"}


def test_every_bad_field_is_named_at_once() -> None:
    errors = errors_of(
        {"event_id": "", "customer": 3, "output_tokens": -1, "gpu_seconds": "x", "extra": 1}
    )
    assert set(errors) >= {"event_id", "customer", "model", "output_tokens", "gpu_seconds", "extra"}


@pytest.mark.parametrize("raw", [[], "event", 5, None, True])
def test_event_must_be_object(raw: Any) -> None:
    assert errors_of(raw) == {"event": "must be a JSON object"}


# --- timestamps --------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_timestamp_with_offset_converted_to_utc() -> None:
    event = ok(base(timestamp="2026-11-26T13:30:00+01:30"))
    assert event.timestamp == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert ok(base(timestamp="2026-11-26T10:00:00.123456Z")).timestamp == datetime(
        2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC
    )


def test_timestamp_up_to_five_minutes_ahead_accepted() -> None:
    assert ok(base(timestamp=iso(NOW + timedelta(minutes=5)))).timestamp == NOW + timedelta(
        minutes=5
    )


def test_timestamp_more_than_five_minutes_ahead_rejected() -> None:
    errors = errors_of(base(timestamp=iso(NOW + timedelta(minutes=5, seconds=1))))
    assert errors == {"timestamp": "is more than 5 minutes in the future"}


def test_timestamp_inside_lateness_window_accepted() -> None:
    moment = NOW - timedelta(days=35) + timedelta(seconds=1)
    assert ok(base(timestamp=iso(moment))).timestamp == moment


def test_timestamp_older_than_lateness_window_rejected() -> None:
    errors = errors_of(base(timestamp=iso(NOW - timedelta(days=35, seconds=1))))
    assert errors == {"timestamp": "is older than the lateness window of 35 days"}


def test_lateness_window_follows_the_limits() -> None:
    limits = Limits(received_at=NOW, max_age=timedelta(days=3), max_future=timedelta(minutes=5))
    event, errors = native_event(base(timestamp=iso(NOW - timedelta(days=4))), limits=limits)
    assert event is None
    assert errors == {"timestamp": "is older than the lateness window of 3 days"}


@pytest.mark.parametrize(
    "value", ["2026-11-26T12:00:00", "2026-11-26 12:00:00.000000", "2026-11-26T12:00:00.5"]
)
def test_timestamp_without_offset_rejected(value: str) -> None:
    errors = errors_of(base(timestamp=value))
    assert set(errors) == {"timestamp"}
    assert "offset" in errors["timestamp"]


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-26",
        "yesterday",
        "2026-W48-4T12:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-26T12:00Z",
        "2026-11-26T12:00:00+00:00:30",
        "2026-11-26T12:00:00+0000",
        "\u0662\u0660\u0662\u0666-11-26T12:00:00Z",
        "",
        1764158400,
    ],
)
def test_timestamp_not_rfc3339_rejected(value: Any) -> None:
    errors = errors_of(base(timestamp=value))
    assert set(errors) == {"timestamp"}
    assert "RFC 3339" in errors["timestamp"]


# --- properties ------------------------------------------------------------------------


def test_properties_at_the_limits_accepted() -> None:
    props = {f"k{i:02d}" + "x" * 60: "v" * 256 for i in range(32)}
    assert ok(base(properties=props)).properties == props


def test_properties_more_than_32_keys_rejected() -> None:
    errors = errors_of(base(properties={f"k{i}": i for i in range(33)}))
    assert errors == {"properties": "must have at most 32 keys"}


def test_properties_key_too_long_rejected() -> None:
    errors = errors_of(base(properties={"k" * 65: 1}))
    assert set(errors) == {"properties"}
    assert "64" in errors["properties"]


def test_properties_empty_key_rejected() -> None:
    assert set(errors_of(base(properties={"": 1}))) == {"properties"}


def test_properties_value_too_long_rejected() -> None:
    errors = errors_of(base(properties={"note": "v" * 257}))
    assert errors == {"properties.note": "must be at most 256 characters"}


@pytest.mark.parametrize("value", [None, [1], {"nested": 1}])
def test_properties_must_be_flat(value: Any) -> None:
    errors = errors_of(base(properties={"bad": value}))
    assert errors == {"properties.bad": "must be a string, number or boolean"}


def test_properties_must_be_object() -> None:
    assert errors_of(base(properties=["a"])) == {"properties": "must be an object"}


# --- CloudEvents -------------------------------------------------------------------------


def ce(**fields: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "//llm-gateway/eu",
        "type": "com.example.inference.completed",
        "subject": "acme",
        "time": "2026-11-26T11:59:00Z",
        "datacontenttype": "application/json",
        "data": {"model": "gpt-4o", "hardware": "h100", "input_tokens": 10, "output_tokens": 2},
        **fields,
    }


def test_cloud_event_envelope_mapped() -> None:
    event, errors = cloud_event(ce(), limits=LIMITS)
    assert errors == {}
    assert event is not None
    assert event.event_id == "ce-1"
    assert event.ce_source == "//llm-gateway/eu"
    assert event.ce_type == "com.example.inference.completed"
    assert event.customer == "acme"
    assert event.timestamp == datetime(2026, 11, 26, 11, 59, tzinfo=UTC)
    assert (event.model, event.hardware) == ("gpt-4o", "h100")
    assert tokens(event) == (10, 0, 0, 2, 0)


def test_cloud_event_data_may_carry_provider_usage() -> None:
    data = {
        "model": "claude-sonnet-4-5",
        "usage": {"input_tokens": 1, "cache_read_input_tokens": 9, "output_tokens": 4},
    }
    event, errors = cloud_event(ce(data=data), limits=LIMITS)
    assert errors == {}
    assert event is not None
    assert tokens(event) == (10, 9, 0, 4, 0)


def test_cloud_event_without_time_defaults_to_received() -> None:
    raw = ce()
    del raw["time"]
    del raw["datacontenttype"]
    event, errors = cloud_event(raw, limits=LIMITS)
    assert errors == {}
    assert event is not None
    assert event.timestamp == NOW
    assert not event.timestamp_given


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "specversion", "data"])
def test_cloud_event_required_attribute_missing(name: str) -> None:
    raw = ce()
    del raw[name]
    event, errors = cloud_event(raw, limits=LIMITS)
    assert event is None
    assert name in errors


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
        ({"time": "2026-11-27T12:00:00Z"}, "time"),
        ({"time": "2026-10-01T00:00:00Z"}, "time"),
        ({"data": "gpt-4o"}, "data"),
        ({"data": {"hardware": "h100"}}, "data.model"),
        ({"data": {"model": "m", "event_id": "x"}}, "data.event_id"),
        ({"data": {"model": "m", "customer": "x"}}, "data.customer"),
        ({"data": {"model": "m", "output_tokens": -1}}, "data.output_tokens"),
        ({"data": {"model": "m", "usage": {"prompt_tokens": -1}}}, "data.usage.prompt_tokens"),
        ({"data": {"model": "m", "gpu_seconds": "0.0000001"}}, "data.gpu_seconds"),
        ({"data": {"model": "m", "properties": {"a": [1]}}}, "data.properties.a"),
        ({"extension": 1}, "extension"),
    ],
)
def test_cloud_event_errors_name_the_attribute(fields: dict[str, Any], name: str) -> None:
    event, errors = cloud_event(ce(**fields), limits=LIMITS)
    assert event is None
    assert name in errors


def test_cloud_event_dataschema_allowed() -> None:
    event, errors = cloud_event(ce(dataschema="https://example.com/schema"), limits=LIMITS)
    assert errors == {}
    assert event is not None


def test_cloud_event_must_be_object() -> None:
    event, errors = cloud_event(["x"], limits=LIMITS)
    assert event is None
    assert set(errors) == {"event"}


# --- idempotency and content keys --------------------------------------------------------


def ce_event(**fields: Any) -> NormalizedEvent:
    event, errors = cloud_event(ce(**fields), limits=LIMITS)
    assert errors == {}
    assert event is not None
    return event


def test_native_key_is_source_and_event_id() -> None:
    a = ok(base(event_id="x"))
    assert a.key_hash(source_id=1) == ok(base(event_id="x", model="other")).key_hash(source_id=1)
    assert a.key_hash(source_id=1) != a.key_hash(source_id=2)
    assert a.key_hash(source_id=1) != ok(base(event_id="y")).key_hash(source_id=1)


def test_cloud_event_key_is_ce_source_and_id() -> None:
    eu = ce_event(source="//gw/eu", id="same")
    us = ce_event(source="//gw/us", id="same")
    # Two CloudEvents sources never collide, whichever of our sources sends them.
    assert eu.key_hash(source_id=1) != us.key_hash(source_id=1)
    assert eu.key_hash(source_id=1) == eu.key_hash(source_id=2)
    # Nor does a CloudEvent collide with a native event of the same id.
    assert eu.key_hash(source_id=1) != ok(base(event_id="same")).key_hash(source_id=1)


def test_content_hash_tells_a_retry_from_a_conflict() -> None:
    first = ok(base(output_tokens=10, gpu_seconds="1.5"))
    assert (
        first.content_hash()
        == ok(base(output_tokens=10, gpu_seconds=Decimal("1.500"))).content_hash()
    )
    assert first.content_hash() != ok(base(output_tokens=11, gpu_seconds="1.5")).content_hash()
    assert (
        first.content_hash()
        != ok(base(output_tokens=10, gpu_seconds="1.5", hardware="a100")).content_hash()
    )


def test_content_hash_ignores_a_defaulted_timestamp() -> None:
    later = Limits(
        received_at=NOW + timedelta(seconds=30),
        max_age=LIMITS.max_age,
        max_future=LIMITS.max_future,
    )
    a = ok(base())
    b, errors = native_event(base(), limits=later)
    assert errors == {}
    assert b is not None
    assert a.timestamp != b.timestamp
    assert a.content_hash() == b.content_hash()
    # A timestamp the sender gave is part of the content; the same instant in another
    # offset is the same content.
    c = ok(base(timestamp="2026-11-26T11:00:00Z"))
    assert c.content_hash() != a.content_hash()
    assert c.content_hash() == ok(base(timestamp="2026-11-26T12:00:00+01:00")).content_hash()


def test_stored_keys_stay_valid_across_releases() -> None:
    # The keys and content hashes already stored decide what a retry is: the digests
    # of the same event must never change (the figures were made by the first release).
    native = NormalizedEvent(
        event_id="evt-1",
        customer="org_1",
        timestamp=datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC),
        model="gpt-4o",
        provider="openai",
        input_tokens=100,
        cache_read_input_tokens=20,
        output_tokens=50,
        reasoning_output_tokens=10,
        gpu_seconds=Decimal("1.250000"),
        latency_ms=321,
        properties={"region": "eu", "stream": True},
    )
    cloud = NormalizedEvent(
        event_id="ce-1",
        customer="org_1",
        timestamp=datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC),
        model="m",
        ce_source="https://x.example/src",
        ce_type="t",
        timestamp_given=False,
    )
    assert native.key_hash(source_id=7).hex() == "aa3ab793474f2821ad004152ae910115"
    assert native.content_hash().hex() == "15396cdb5e7a01d5d824c7e6754295de"
    assert cloud.key_hash(source_id=7).hex() == "705104304ae3e30a1406025b1a50e015"
    assert cloud.content_hash().hex() == "4614c0f85350499e8d41292eca342ee7"


def test_raw_event_id_echo() -> None:
    assert normalize.raw_event_id({"event_id": "abc"}, cloudevents=False) == "abc"
    assert normalize.raw_event_id({"id": "abc"}, cloudevents=True) == "abc"
    assert normalize.raw_event_id({"event_id": 5}, cloudevents=False) is None
    assert normalize.raw_event_id(["abc"], cloudevents=False) is None
    assert normalize.raw_event_id({"event_id": "x" * 500}, cloudevents=False) == "x" * 128
