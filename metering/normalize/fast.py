"""The fast path for native events: typed decoding, and the clean case inline."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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
