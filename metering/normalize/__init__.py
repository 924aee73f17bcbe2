"""Validate and normalise incoming events. Pure: no database, no Django.

Every event is checked field by field so that a rejection names each bad field,
and the valid events of the same request are kept. Provider usage objects and
OpenTelemetry attributes are mapped onto the canonical token fields by the table
in DESIGN.md. Numbers arrive as Decimal (the JSON decoder's float hook), so
`gpu_seconds` never passes through a binary float.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from metering.fields import TOKEN_FIELDS

MAX_ID_LENGTH = 128
MAX_MODEL_LENGTH = 256
MAX_LABEL_LENGTH = 128
MAX_CE_SOURCE_LENGTH = 512
MAX_CE_TYPE_LENGTH = 256
MAX_PROPERTIES = 32
MAX_PROPERTY_KEY_LENGTH = 64
MAX_PROPERTY_VALUE_LENGTH = 256
MAX_TOKENS = 2**53  # far above any real request; keeps sums of millions of events in bigint
MAX_LATENCY_MS = 2**31 - 1
GPU_SECONDS_PLACES = 6
MAX_GPU_SECONDS = Decimal("1e17")
# A property number's size: what a sender writes as "1e131000" would be stored as
# 131,001 digits, and PostgreSQL's numeric (jsonb) cannot hold 1e200000 at all.
MAX_PROPERTY_NUMBER_DIGITS = 40
_PROPERTY_NUMBER_LIMIT = 10**MAX_PROPERTY_NUMBER_DIGITS

NATIVE_FIELDS = frozenset(
    {
        "event_id",
        "customer",
        "timestamp",
        "model",
        "provider",
        "hardware",
        "gpu_seconds",
        "latency_ms",
        "properties",
        "usage",
        "attributes",
        *TOKEN_FIELDS,
    }
)
# Inside a CloudEvent, identity, customer and time come from the envelope.
CE_DATA_FIELDS = NATIVE_FIELDS - {"event_id", "customer", "timestamp"}
CE_FIELDS = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}
    | {"dataschema"}
)

OTEL_USAGE = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cache_read_input_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_write_input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.reasoning.output_tokens": "reasoning_output_tokens",
}

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)

_json_encoder = msgspec.json.Encoder(decimal_format="number", order="sorted")

Errors = dict[str, str]


@dataclass(slots=True)
class Limits:
    """The time window an event's timestamp must fall in, fixed per request."""

    received_at: datetime
    max_age: timedelta
    max_future: timedelta
    # Computed once: every event of a request is checked against them.
    earliest: datetime = field(init=False)
    latest: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.earliest = self.received_at - self.max_age
        self.latest = self.received_at + self.max_future


@dataclass(slots=True)
class NormalizedEvent:
    event_id: str
    customer: str
    timestamp: datetime
    model: str
    provider: str = ""
    hardware: str = ""
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    gpu_seconds: Decimal = Decimal(0)
    latency_ms: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    ce_source: str = ""
    ce_type: str = ""
    # Whether the sender gave the timestamp; a defaulted one is not part of the content.
    timestamp_given: bool = True

    def properties_json(self) -> str:
        if not self.properties:
            return "{}"
        return _json_encoder.encode(self.properties).decode()

    def key_hash(self, *, source_id: int) -> bytes:
        """128-bit idempotency key. CloudEvents are keyed by (source, id) alone, as the
        spec makes them globally unique; native events by (our source, event_id)."""
        if self.ce_source:
            raw = f"ce\x1f{self.ce_source}\x1f{self.event_id}"
        else:
            raw = f"native\x1f{source_id}\x1f{self.event_id}"
        return hashlib.blake2b(raw.encode(), digest_size=16).digest()

    def content_hash(self) -> bytes:
        return self.content_hash_from(
            timestamp_iso=self.timestamp.isoformat(), properties_json=self.properties_json()
        )

    def content_hash_from(self, *, timestamp_iso: str, properties_json: str) -> bytes:
        """The content hash, given the timestamp's isoformat() and properties_json(),
        which a writer that needs them anyway has already computed: the fields that
        make two sends of one event the same content, joined by U+001F."""
        ts = timestamp_iso if self.timestamp_given else ""
        latency = "" if self.latency_ms is None else self.latency_ms
        text = (
            f"{self.customer}\x1f{ts}\x1f{self.model}\x1f{self.provider}\x1f{self.hardware}"
            f"\x1f{self.input_tokens}\x1f{self.cache_read_input_tokens}"
            f"\x1f{self.cache_write_input_tokens}\x1f{self.output_tokens}"
            f"\x1f{self.reasoning_output_tokens}\x1f{self.gpu_seconds:f}\x1f{latency}"
            f"\x1f{properties_json}\x1f{self.ce_type}"
        )
        return hashlib.blake2b(text.encode(), digest_size=16).digest()


# --- field checks -----------------------------------------------------------------


def _string(value: Any, *, name: str, errors: Errors, max_length: int, required: bool) -> str:
    if value is None:
        if required:
            errors[name] = "is required"
        return ""
    if not isinstance(value, str):
        errors[name] = "must be a string"
        return ""
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL.
        errors[name] = "must not contain NUL (\\u0000) characters"
        return ""
    if required and not value:
        errors[name] = "must not be empty"
        return ""
    if len(value) > max_length:
        errors[name] = f"must be at most {max_length} characters"
        return ""
    return value


def _count(value: Any, *, name: str, errors: Errors) -> int:
    """A non-negative integer token count; a missing or null count is 0."""
    if value is None:
        return 0
    # bool is an int subclass; true is not a token count.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Decimal) and value == value.to_integral_value() and value >= 0:
            # 12.0 is an integer written as a float: accept it exactly.
            value = int(value)
        else:
            errors[name] = "must be a non-negative integer"
            return 0
    if value < 0:
        errors[name] = "must be a non-negative integer"
        return 0
    if value > MAX_TOKENS:
        errors[name] = f"must be at most {MAX_TOKENS}"
        return 0
    return value


def _gpu_seconds(value: Any, *, name: str, errors: Errors) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, bool):
        errors[name] = "must be a non-negative number or decimal string"
        return Decimal(0)
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            errors[name] = "must be a non-negative number or decimal string"
            return Decimal(0)
    else:
        errors[name] = "must be a non-negative number or decimal string"
        return Decimal(0)
    if not number.is_finite() or number < 0:
        errors[name] = "must be a finite, non-negative number"
        return Decimal(0)
    if number >= MAX_GPU_SECONDS:
        errors[name] = f"must be below {MAX_GPU_SECONDS}"
        return Decimal(0)
    quantized = number.quantize(Decimal(1).scaleb(-GPU_SECONDS_PLACES))
    if quantized != number:
        errors[name] = f"must have at most {GPU_SECONDS_PLACES} decimal places"
        return Decimal(0)
    return quantized


def _timestamp(value: Any, *, name: str, errors: Errors, limits: Limits) -> datetime | None:
    if not isinstance(value, str):
        errors[name] = "must be an RFC 3339 timestamp string"
        return None
    # fromisoformat accepts more than RFC 3339 (dates alone, week dates, offsets with
    # seconds): demand the RFC 3339 date-time form, then let it parse.
    match = _RFC3339.fullmatch(value)
    if match is None:
        errors[name] = "must be an RFC 3339 date-time with offset, e.g. 2026-01-31T12:00:00Z"
        return None
    if match["offset"] is None:
        errors[name] = "must include a UTC offset (Z or ±hh:mm)"
        return None
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] in "zZ" else value)
    except ValueError:
        errors[name] = "must be an RFC 3339 date-time with offset, e.g. 2026-01-31T12:00:00Z"
        return None
    # One instant, one value: the same time sent with another offset is the same content.
    parsed = parsed.astimezone(UTC)
    if parsed > limits.latest:
        errors[name] = "is more than 5 minutes in the future"
        return None
    if parsed < limits.earliest:
        days = limits.max_age.days
        errors[name] = f"is older than the lateness window of {days} days"
        return None
    return parsed


_PROPERTY_NUMBER_MESSAGE = (
    f"must be a number below 1e{MAX_PROPERTY_NUMBER_DIGITS} in magnitude with at most "
    f"{MAX_PROPERTY_NUMBER_DIGITS} decimal places"
)


def _properties(value: Any, *, name: str, errors: Errors) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors[name] = "must be an object"
        return {}
    if len(value) > MAX_PROPERTIES:
        errors[name] = f"must have at most {MAX_PROPERTIES} keys"
        return {}
    for key, item in value.items():
        if not key or len(key) > MAX_PROPERTY_KEY_LENGTH:
            errors[name] = f"keys must be 1 to {MAX_PROPERTY_KEY_LENGTH} characters"
            return {}
        if "\x00" in key:
            errors[name] = "keys must not contain NUL (\\u0000) characters"
            return {}
        if isinstance(item, str):
            if len(item) > MAX_PROPERTY_VALUE_LENGTH:
                errors[f"{name}.{key}"] = f"must be at most {MAX_PROPERTY_VALUE_LENGTH} characters"
                return {}
            if "\x00" in item:
                errors[f"{name}.{key}"] = "must not contain NUL (\\u0000) characters"
                return {}
        elif isinstance(item, Decimal):
            if not item.is_finite():
                errors[f"{name}.{key}"] = "must be a finite number"
                return {}
            digits = item.as_tuple()
            if (
                item
                and not -MAX_PROPERTY_NUMBER_DIGITS <= item.adjusted() < MAX_PROPERTY_NUMBER_DIGITS
            ) or not -MAX_PROPERTY_NUMBER_DIGITS <= digits.exponent <= MAX_PROPERTY_NUMBER_DIGITS:
                errors[f"{name}.{key}"] = _PROPERTY_NUMBER_MESSAGE
                return {}
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -_PROPERTY_NUMBER_LIMIT < item < _PROPERTY_NUMBER_LIMIT:
                errors[f"{name}.{key}"] = _PROPERTY_NUMBER_MESSAGE
                return {}
        elif not isinstance(item, bool):
            errors[f"{name}.{key}"] = "must be a string, number or boolean"
            return {}
    return value


# --- provider usage shapes ----------------------------------------------------------


def _nested(usage: dict[str, Any], key: str, inner: str, *, prefix: str, errors: Errors) -> int:
    details = usage.get(key)
    if details is None:
        return 0
    if not isinstance(details, dict):
        errors[f"{prefix}.{key}"] = "must be an object"
        return 0
    return _count(details.get(inner), name=f"{prefix}.{key}.{inner}", errors=errors)


def _usage_tokens(usage: Any, *, provider: str, errors: Errors) -> dict[str, int]:
    """Map a provider's usage object onto the canonical token fields."""
    if not isinstance(usage, dict):
        errors["usage"] = "must be an object"
        return {}
    if isinstance(usage.get("usageMetadata"), dict):
        return _gemini(usage["usageMetadata"], prefix="usage.usageMetadata", errors=errors)
    if "promptTokenCount" in usage or "candidatesTokenCount" in usage:
        return _gemini(usage, prefix="usage", errors=errors)
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return {
            "input_tokens": _count(
                usage.get("prompt_tokens"), name="usage.prompt_tokens", errors=errors
            ),
            "cache_read_input_tokens": _nested(
                usage, "prompt_tokens_details", "cached_tokens", prefix="usage", errors=errors
            ),
            "output_tokens": _count(
                usage.get("completion_tokens"), name="usage.completion_tokens", errors=errors
            ),
            "reasoning_output_tokens": _nested(
                usage,
                "completion_tokens_details",
                "reasoning_tokens",
                prefix="usage",
                errors=errors,
            ),
        }
    if "input_tokens" in usage or "output_tokens" in usage:
        anthropic = (
            "cache_read_input_tokens" in usage
            or "cache_creation_input_tokens" in usage
            or provider.lower() == "anthropic"
        )
        openai_responses = (
            "input_tokens_details" in usage
            or "output_tokens_details" in usage
            or "total_tokens" in usage
        )
        if anthropic and not openai_responses:
            # Anthropic's input_tokens excludes cached input; canonical input includes it.
            uncached = _count(usage.get("input_tokens"), name="usage.input_tokens", errors=errors)
            read = _count(
                usage.get("cache_read_input_tokens"),
                name="usage.cache_read_input_tokens",
                errors=errors,
            )
            write = _count(
                usage.get("cache_creation_input_tokens"),
                name="usage.cache_creation_input_tokens",
                errors=errors,
            )
            return {
                "input_tokens": uncached + read + write,
                "cache_read_input_tokens": read,
                "cache_write_input_tokens": write,
                "output_tokens": _count(
                    usage.get("output_tokens"), name="usage.output_tokens", errors=errors
                ),
            }
        return {
            "input_tokens": _count(
                usage.get("input_tokens"), name="usage.input_tokens", errors=errors
            ),
            "cache_read_input_tokens": _nested(
                usage, "input_tokens_details", "cached_tokens", prefix="usage", errors=errors
            ),
            "output_tokens": _count(
                usage.get("output_tokens"), name="usage.output_tokens", errors=errors
            ),
            "reasoning_output_tokens": _nested(
                usage, "output_tokens_details", "reasoning_tokens", prefix="usage", errors=errors
            ),
        }
    errors["usage"] = (
        "is not a recognised usage object (OpenAI chat or responses, Anthropic, "
        "Gemini usageMetadata)"
    )
    return {}


def _gemini(usage: dict[str, Any], *, prefix: str, errors: Errors) -> dict[str, int]:
    thoughts = _count(
        usage.get("thoughtsTokenCount"), name=f"{prefix}.thoughtsTokenCount", errors=errors
    )
    candidates = _count(
        usage.get("candidatesTokenCount"), name=f"{prefix}.candidatesTokenCount", errors=errors
    )
    return {
        "input_tokens": _count(
            usage.get("promptTokenCount"), name=f"{prefix}.promptTokenCount", errors=errors
        ),
        "cache_read_input_tokens": _count(
            usage.get("cachedContentTokenCount"),
            name=f"{prefix}.cachedContentTokenCount",
            errors=errors,
        ),
        # Gemini reports thinking tokens beside the candidates, not inside them.
        "output_tokens": candidates + thoughts,
        "reasoning_output_tokens": thoughts,
    }


def _otel_tokens(attributes: Any, *, errors: Errors) -> dict[str, int]:
    if not isinstance(attributes, dict):
        errors["attributes"] = "must be an object of OpenTelemetry span attributes"
        return {}
    tokens = {
        canonical: _count(attributes.get(name), name=f"attributes.{name}", errors=errors)
        for name, canonical in OTEL_USAGE.items()
    }
    if not any(name in attributes for name in OTEL_USAGE):
        errors["attributes"] = "has no gen_ai.usage.* attributes"
    return tokens


# --- events ---------------------------------------------------------------------------


def _fill_usage(
    raw: dict[str, Any], event: NormalizedEvent, *, prefix: str, errors: Errors
) -> None:
    """Token counts, from the canonical fields or from `usage` / `attributes`."""
    has_tokens = any(name in raw for name in TOKEN_FIELDS)
    sources = [name for name in ("usage", "attributes") if raw.get(name) is not None]
    if len(sources) + has_tokens > 1:
        errors[f"{prefix}usage"] = "give token fields, usage or attributes, only one of them"
        return
    local: Errors = {}
    if sources == ["usage"]:
        tokens = _usage_tokens(raw["usage"], provider=event.provider, errors=local)
    elif sources == ["attributes"]:
        attributes = raw["attributes"]
        tokens = _otel_tokens(attributes, errors=local)
        if isinstance(attributes, dict):
            if not event.model:
                model = attributes.get("gen_ai.response.model") or attributes.get(
                    "gen_ai.request.model"
                )
                if (
                    isinstance(model, str)
                    and 0 < len(model) <= MAX_MODEL_LENGTH
                    and "\x00" not in model
                ):
                    event.model = model
            if not event.provider:
                provider = attributes.get("gen_ai.provider.name") or attributes.get("gen_ai.system")
                if (
                    isinstance(provider, str)
                    and len(provider) <= MAX_LABEL_LENGTH
                    and "\x00" not in provider
                ):
                    event.provider = provider
    else:
        tokens = {name: _count(raw.get(name), name=name, errors=local) for name in TOKEN_FIELDS}
    for key, message in local.items():
        errors[prefix + key] = message
    for name, value in tokens.items():
        setattr(event, name, value)
    if not local:
        if event.cache_read_input_tokens + event.cache_write_input_tokens > event.input_tokens:
            errors[f"{prefix}cache_read_input_tokens"] = (
                "cache_read_input_tokens + cache_write_input_tokens must not exceed input_tokens"
            )
        if event.reasoning_output_tokens > event.output_tokens:
            errors[f"{prefix}reasoning_output_tokens"] = (
                "reasoning_output_tokens must not exceed output_tokens"
            )


def _fill_body(raw: dict[str, Any], event: NormalizedEvent, *, prefix: str, errors: Errors) -> None:
    """The fields a native event and a CloudEvent's data share."""
    event.provider = _string(
        raw.get("provider"),
        name=f"{prefix}provider",
        errors=errors,
        max_length=MAX_LABEL_LENGTH,
        required=False,
    )
    event.hardware = _string(
        raw.get("hardware"),
        name=f"{prefix}hardware",
        errors=errors,
        max_length=MAX_LABEL_LENGTH,
        required=False,
    )
    model = raw.get("model")
    if model is not None or "attributes" not in raw:
        event.model = _string(
            model, name=f"{prefix}model", errors=errors, max_length=MAX_MODEL_LENGTH, required=True
        )
    _fill_usage(raw, event, prefix=prefix, errors=errors)
    if not event.model and f"{prefix}model" not in errors:
        errors[f"{prefix}model"] = "is required (or gen_ai.request.model in attributes)"
    event.gpu_seconds = _gpu_seconds(
        raw.get("gpu_seconds"), name=f"{prefix}gpu_seconds", errors=errors
    )
    latency = raw.get("latency_ms")
    if latency is not None:
        event.latency_ms = _count(latency, name=f"{prefix}latency_ms", errors=errors)
        if event.latency_ms > MAX_LATENCY_MS:
            errors[f"{prefix}latency_ms"] = f"must be at most {MAX_LATENCY_MS}"
    event.properties = _properties(raw.get("properties"), name=f"{prefix}properties", errors=errors)


def _unknown(raw: dict[str, Any], allowed: frozenset[str], *, prefix: str, errors: Errors) -> None:
    for key in raw:
        if key not in allowed:
            errors[f"{prefix}{key}"] = "is not a known field"


def native_event(raw: Any, *, limits: Limits) -> tuple[NormalizedEvent | None, Errors]:
    if not isinstance(raw, dict):
        return None, {"event": "must be a JSON object"}
    errors: Errors = {}
    event = NormalizedEvent(
        event_id=_string(
            raw.get("event_id"),
            name="event_id",
            errors=errors,
            max_length=MAX_ID_LENGTH,
            required=True,
        ),
        customer=_string(
            raw.get("customer"),
            name="customer",
            errors=errors,
            max_length=MAX_ID_LENGTH,
            required=True,
        ),
        timestamp=limits.received_at,
        model="",
    )
    if raw.get("timestamp") is None:
        event.timestamp_given = False
    else:
        event.timestamp = (
            _timestamp(raw["timestamp"], name="timestamp", errors=errors, limits=limits)
            or limits.received_at
        )
    _fill_body(raw, event, prefix="", errors=errors)
    _unknown(raw, NATIVE_FIELDS, prefix="", errors=errors)
    return (None, errors) if errors else (event, errors)


def cloud_event(raw: Any, *, limits: Limits) -> tuple[NormalizedEvent | None, Errors]:
    if not isinstance(raw, dict):
        return None, {"event": "must be a JSON object (a CloudEvent)"}
    errors: Errors = {}
    if raw.get("specversion") != "1.0":
        errors["specversion"] = 'must be "1.0"'
    event = NormalizedEvent(
        event_id=_string(
            raw.get("id"), name="id", errors=errors, max_length=MAX_ID_LENGTH, required=True
        ),
        customer=_string(
            raw.get("subject"),
            name="subject",
            errors=errors,
            max_length=MAX_ID_LENGTH,
            required=True,
        ),
        timestamp=limits.received_at,
        model="",
        ce_source=_string(
            raw.get("source"),
            name="source",
            errors=errors,
            max_length=MAX_CE_SOURCE_LENGTH,
            required=True,
        ),
        ce_type=_string(
            raw.get("type"),
            name="type",
            errors=errors,
            max_length=MAX_CE_TYPE_LENGTH,
            required=True,
        ),
    )
    if raw.get("time") is None:
        event.timestamp_given = False
    else:
        event.timestamp = (
            _timestamp(raw["time"], name="time", errors=errors, limits=limits) or limits.received_at
        )
    content_type = raw.get("datacontenttype")
    if content_type is not None and content_type != "application/json":
        errors["datacontenttype"] = 'must be "application/json" when given'
    data = raw.get("data")
    if not isinstance(data, dict):
        errors["data"] = "must be an object with the event's fields (model, tokens or usage, …)"
    else:
        _fill_body(data, event, prefix="data.", errors=errors)
        _unknown(data, CE_DATA_FIELDS, prefix="data.", errors=errors)
    _unknown(raw, CE_FIELDS, prefix="", errors=errors)
    return (None, errors) if errors else (event, errors)


# --- the fast path for native events -------------------------------------------------


class NativeFields(msgspec.Struct, forbid_unknown_fields=True):
    """A native event as clean senders send it, for msgspec's typed decoder.

    A body of these decodes several times faster than into dicts, and the types are
    checked in C. Anything else (an unknown field, a float or a string where a count
    goes, a missing event_id) fails the typed decode, and the caller decodes the body
    again generically and runs `native_event`, which names every bad field. Each
    decoded event still goes through `native_event_fast`, whose results are exactly
    those of `native_event` on the same JSON object (tests/metering check this).
    """

    event_id: str
    customer: str
    timestamp: str | None | UnsetType = UNSET
    model: str | None | UnsetType = UNSET
    provider: str | None | UnsetType = UNSET
    hardware: str | None | UnsetType = UNSET
    input_tokens: int | None | UnsetType = UNSET
    cache_read_input_tokens: int | None | UnsetType = UNSET
    cache_write_input_tokens: int | None | UnsetType = UNSET
    output_tokens: int | None | UnsetType = UNSET
    reasoning_output_tokens: int | None | UnsetType = UNSET
    # Untyped: numbers arrive as Decimal through the decoder's float hook.
    gpu_seconds: Any = UNSET
    latency_ms: int | None | UnsetType = UNSET
    properties: Any = UNSET
    usage: Any = UNSET
    attributes: Any = UNSET

    def raw(self) -> dict[str, Any]:
        """The JSON object this was decoded from, as the generic decoder gives it."""
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not UNSET
        }


def native_event_fast(
    item: NativeFields, *, limits: Limits
) -> tuple[NormalizedEvent | None, Errors]:
    """`native_event` for a typed-decoded event: the common clean case inline, any
    other (provider usage, OTel attributes, anything invalid) through `native_event`."""
    event = _native_clean(item, limits)
    if event is not None:
        return event, {}
    return native_event(item.raw(), limits=limits)


def _native_clean(item: NativeFields, limits: Limits) -> NormalizedEvent | None:
    """The event when nothing in it is wrong; None when `native_event` must look.

    Checks the same rules as `native_event` (sharing its helpers where they are not
    trivial), but stops at the first problem instead of naming every one."""
    event_id, customer, model = item.event_id, item.customer, item.model
    if not (0 < len(event_id) <= MAX_ID_LENGTH and 0 < len(customer) <= MAX_ID_LENGTH):
        return None
    provider = item.provider
    if provider is UNSET or provider is None:
        provider = ""
    elif len(provider) > MAX_LABEL_LENGTH:
        return None
    hardware = item.hardware
    if hardware is UNSET or hardware is None:
        hardware = ""
    elif len(hardware) > MAX_LABEL_LENGTH:
        return None
    # Token counts come from the canonical fields, `usage` or `attributes`: one of them.
    usage, attributes = item.usage, item.attributes
    if usage is UNSET and attributes is UNSET:
        usage_source = None
    elif attributes is UNSET and usage is not None:
        usage_source = {"usage": usage}
    elif usage is UNSET and attributes is not None:
        usage_source = {"attributes": attributes}
    else:
        return None
    if model is UNSET or model is None:
        if attributes is UNSET:
            return None
        model = ""  # gen_ai.request.model in the attributes may name it
    elif not 0 < len(model) <= MAX_MODEL_LENGTH:
        return None
    if "\x00" in event_id or "\x00" in customer or "\x00" in model:
        return None
    if "\x00" in provider or "\x00" in hardware:
        return None
    counts = [
        item.input_tokens,
        item.cache_read_input_tokens,
        item.cache_write_input_tokens,
        item.output_tokens,
        item.reasoning_output_tokens,
    ]
    for i, count in enumerate(counts):
        if count is UNSET:
            counts[i] = 0
        elif usage_source is not None:
            return None  # token fields beside usage or attributes
        elif count is None:
            counts[i] = 0
        elif not 0 <= count <= MAX_TOKENS:
            return None
    input_tokens, cache_read, cache_write, output_tokens, reasoning = counts
    if cache_read + cache_write > input_tokens or reasoning > output_tokens:
        return None
    latency = item.latency_ms
    if latency is UNSET:
        latency = None
    elif latency is not None and not 0 <= latency <= MAX_LATENCY_MS:
        return None
    errors: Errors = {}
    gpu_seconds = item.gpu_seconds
    gpu_seconds = (
        _ZERO
        if gpu_seconds is UNSET or gpu_seconds is None
        else _gpu_seconds(gpu_seconds, name="gpu_seconds", errors=errors)
    )
    properties = item.properties
    if properties is UNSET or properties is None:
        properties = {}
    elif not _plain_properties(properties):
        properties = _properties(properties, name="properties", errors=errors)
    timestamp = item.timestamp
    if timestamp is UNSET or timestamp is None:
        timestamp, given = limits.received_at, False
    else:
        timestamp, given = (
            _timestamp(timestamp, name="timestamp", errors=errors, limits=limits),
            True,
        )
    if errors:
        return None
    event = NormalizedEvent(
        event_id,
        customer,
        timestamp,
        model,
        provider,
        hardware,
        input_tokens,
        cache_read,
        cache_write,
        output_tokens,
        reasoning,
        gpu_seconds,
        latency,
        properties,
        "",
        "",
        given,
    )
    if usage_source is not None:
        # The token fields are all absent, so this is what native_event does with it.
        _fill_usage(usage_source, event, prefix="", errors=errors)
        if errors or not event.model:
            return None
    return event


_ZERO = Decimal(0)


def _plain_properties(value: Any) -> bool:
    """Whether `_properties` would accept `value` as it is, for the common case of
    string and boolean values only; False means: ask `_properties`."""
    if type(value) is not dict or len(value) > MAX_PROPERTIES:
        return False
    for key, item in value.items():
        if not 0 < len(key) <= MAX_PROPERTY_KEY_LENGTH or "\x00" in key:
            return False
        kind = type(item)
        if kind is str:
            if len(item) > MAX_PROPERTY_VALUE_LENGTH or "\x00" in item:
                return False
        elif kind is not bool:
            return False
    return True


def raw_event_id(raw: Any, *, cloudevents: bool) -> str | None:
    """The id to echo back beside a rejection, when the sender gave a usable one."""
    if isinstance(raw, dict):
        value = raw.get("id" if cloudevents else "event_id")
        if isinstance(value, str):
            return value[:MAX_ID_LENGTH]
    return None
