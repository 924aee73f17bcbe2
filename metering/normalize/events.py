"""Native events and CloudEvents: the generic path, which names every bad field."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from metering.fields import TOKEN_FIELDS
from metering.normalize.checks import (
    MAX_CE_SOURCE_LENGTH,
    MAX_CE_TYPE_LENGTH,
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_LATENCY_MS,
    MAX_MODEL_LENGTH,
    Errors,
    Limits,
    _count,
    _gpu_seconds,
    _properties,
    _string,
    _timestamp,
)
from metering.normalize.shapes import _otel_tokens, _usage_tokens

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
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
    }
)

_json_encoder = msgspec.json.Encoder(decimal_format="number", order="sorted")
# 128-bit BLAKE2b states to copy: a copy costs a third of what making one does.
_BLAKE2B_128 = hashlib.blake2b(digest_size=16)


@functools.lru_cache(maxsize=1024)
def _blake2b_state(prefix: str) -> Any:
    state = _BLAKE2B_128.copy()
    state.update(prefix.encode())
    return state


def _blake2b_after(prefix: str) -> Any:
    """A fresh BLAKE2b-128 state that has read `prefix` (one of few: a source's)."""
    return _blake2b_state(prefix).copy()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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
    # The sender's text of `timestamp` when it is exact (see checks._timestamp), for
    # the database to parse; "" when a writer must format `timestamp` itself.
    timestamp_text: str = ""

    def properties_json(self) -> str:
        if not self.properties:
            return "{}"
        return _json_encoder.encode(self.properties).decode()

    def key_hash(self, *, source_id: int) -> bytes:
        """128-bit idempotency key. CloudEvents are keyed by (source, id) alone, as the
        spec makes them globally unique; native events by (our source, event_id)."""
        if self.ce_source:
            digest = _blake2b_after(f"ce\x1f{self.ce_source}\x1f")
        else:
            digest = _blake2b_after(f"native\x1f{source_id}\x1f")
        digest.update(self.event_id.encode())
        return digest.digest()

    def content_fields(
        self, *, properties_json: str, escape: Callable[[str], str] | None = None
    ) -> str:
        """The fields that make two sends of one event the same content, the timestamp
        aside, tab-separated in the order metering.ingest COPYs them into the event
        table, so that one string serves both the content hash and the stored row. A
        missing latency is COPY's \\N. `escape`, when given, is applied to each string
        the sender chose (for COPY; the hash is always taken unescaped)."""
        latency = "\\N" if self.latency_ms is None else self.latency_ms
        customer, model, provider, hardware, ce_type = (
            self.customer,
            self.model,
            self.provider,
            self.hardware,
            self.ce_type,
        )
        if escape is not None:
            customer, model, provider, hardware, ce_type, properties_json = map(
                escape, (customer, model, provider, hardware, ce_type, properties_json)
            )
        return (
            f"{customer}\t{model}\t{provider}\t{hardware}"
            f"\t{self.input_tokens}\t{self.cache_read_input_tokens}"
            f"\t{self.cache_write_input_tokens}\t{self.output_tokens}"
            f"\t{self.reasoning_output_tokens}\t{self.gpu_seconds:f}\t{latency}"
            f"\t{properties_json}\t{ce_type}"
        )

    def content_hash(self) -> bytes:
        return self.content_hash_from(
            fields=self.content_fields(properties_json=self.properties_json())
        )

    def content_hash_from(self, *, fields: str) -> bytes:
        """The content hash, given content_fields(), which a writer needs anyway. The
        timestamp counts as microseconds since the epoch: one instant, one value,
        whatever offset it was sent with; one the sender did not give counts not."""
        ts = (self.timestamp - _EPOCH) // _MICROSECOND if self.timestamp_given else ""
        digest = _BLAKE2B_128.copy()
        digest.update(f"{fields}\t{ts}".encode())
        return digest.digest()


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
                event.model = _attribute_label(
                    attributes, "gen_ai.response.model", "gen_ai.request.model", MAX_MODEL_LENGTH
                )
            if not event.provider:
                event.provider = _attribute_label(
                    attributes, "gen_ai.provider.name", "gen_ai.system", MAX_LABEL_LENGTH
                )
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


def _attribute_label(attributes: dict[str, Any], name: str, fallback: str, max_length: int) -> str:
    """An OTel attribute that names the model or provider, when it is a usable one."""
    value = attributes.get(name) or attributes.get(fallback)
    if isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value:
        return value
    return ""


def _fill_timestamp(
    event: NormalizedEvent, value: Any, *, name: str, errors: Errors, limits: Limits
) -> None:
    """The event's time; a missing one is the time received, not part of the content."""
    if value is None:
        event.timestamp_given = False
        return
    parsed = _timestamp(value, name=name, errors=errors, limits=limits)
    if parsed is None:
        event.timestamp = limits.received_at
    else:
        event.timestamp, event.timestamp_text = parsed


def _text(
    raw: dict[str, Any],
    key: str,
    *,
    errors: Errors,
    max_length: int,
    required: bool = True,
    prefix: str = "",
) -> str:
    """`raw[key]` checked as a string; an error is named `prefix + key`."""
    return _string(
        raw.get(key), name=f"{prefix}{key}", errors=errors, max_length=max_length, required=required
    )


def _fill_body(raw: dict[str, Any], event: NormalizedEvent, *, prefix: str, errors: Errors) -> None:
    """The fields a native event and a CloudEvent's data share."""
    event.provider, event.hardware = (
        _text(raw, key, errors=errors, max_length=MAX_LABEL_LENGTH, required=False, prefix=prefix)
        for key in ("provider", "hardware")
    )
    if raw.get("model") is not None or "attributes" not in raw:
        event.model = _text(raw, "model", errors=errors, max_length=MAX_MODEL_LENGTH, prefix=prefix)
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
        event_id=_text(raw, "event_id", errors=errors, max_length=MAX_ID_LENGTH),
        customer=_text(raw, "customer", errors=errors, max_length=MAX_ID_LENGTH),
        timestamp=limits.received_at,
        model="",
    )
    _fill_timestamp(event, raw.get("timestamp"), name="timestamp", errors=errors, limits=limits)
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
        event_id=_text(raw, "id", errors=errors, max_length=MAX_ID_LENGTH),
        customer=_text(raw, "subject", errors=errors, max_length=MAX_ID_LENGTH),
        timestamp=limits.received_at,
        model="",
        ce_source=_text(raw, "source", errors=errors, max_length=MAX_CE_SOURCE_LENGTH),
        ce_type=_text(raw, "type", errors=errors, max_length=MAX_CE_TYPE_LENGTH),
    )
    _fill_timestamp(event, raw.get("time"), name="time", errors=errors, limits=limits)
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


def raw_event_id(raw: Any, *, cloudevents: bool) -> str | None:
    """The id to echo back beside a rejection, when the sender gave a usable one."""
    if isinstance(raw, dict):
        value = raw.get("id" if cloudevents else "event_id")
        if isinstance(value, str):
            return value[:MAX_ID_LENGTH]
    return None
