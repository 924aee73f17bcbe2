"""The fast path for native events: typed decoding, and the clean case inline."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from metering.normalize.checks import (
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_LATENCY_MS,
    MAX_MODEL_LENGTH,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_TOKENS,
    Errors,
    Limits,
    _gpu_seconds,
    _properties,
    _timestamp,
)
from metering.normalize.events import NormalizedEvent, _fill_usage, native_event

# Limits msgspec checks in C while it decodes; a value beyond one fails the typed
# decode, and the generic path then names the field (see NativeFields).
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Model = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_LENGTH)]
_Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_LENGTH)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
_Latency = Annotated[int, msgspec.Meta(ge=0, le=MAX_LATENCY_MS)]


# gc=False: decoded from JSON, an instance can hold no reference cycle.
class NativeFields(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A native event as clean senders send it, for msgspec's typed decoder.

    A body of these decodes several times faster than into dicts, and the types are
    checked in C. Anything else (an unknown field, a float or a string where a count
    goes, a missing event_id) fails the typed decode, and the caller decodes the body
    again generically and runs `native_event`, which names every bad field. Each
    decoded event still goes through `native_event_fast`, whose results are exactly
    those of `native_event` on the same JSON object (tests/metering check this).
    """

    event_id: _Id
    customer: _Id
    timestamp: str | None | UnsetType = UNSET
    model: _Model | None | UnsetType = UNSET
    provider: _Label | None | UnsetType = UNSET
    hardware: _Label | None | UnsetType = UNSET
    input_tokens: _Count | None | UnsetType = UNSET
    cache_read_input_tokens: _Count | None | UnsetType = UNSET
    cache_write_input_tokens: _Count | None | UnsetType = UNSET
    output_tokens: _Count | None | UnsetType = UNSET
    reasoning_output_tokens: _Count | None | UnsetType = UNSET
    # Untyped: numbers arrive as Decimal through the decoder's float hook.
    gpu_seconds: Any = UNSET
    latency_ms: _Latency | None | UnsetType = UNSET
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
    trivial), but stops at the first problem instead of naming every one. String
    lengths and count ranges were checked by the typed decode (NativeFields)."""
    event_id, customer, model = item.event_id, item.customer, item.model
    provider = item.provider
    if provider is UNSET or provider is None:
        provider = ""
    hardware = item.hardware
    if hardware is UNSET or hardware is None:
        hardware = ""
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
    input_tokens, cache_read, cache_write, output_tokens, reasoning = counts
    if cache_read + cache_write > input_tokens or reasoning > output_tokens:
        return None
    latency = item.latency_ms
    if latency is UNSET:
        latency = None
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
        timestamp, given, timestamp_text = limits.received_at, False, ""
    else:
        parsed = _timestamp(timestamp, name="timestamp", errors=errors, limits=limits)
        if parsed is None:
            return None
        (timestamp, timestamp_text), given = parsed, True
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
        timestamp_text,
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
