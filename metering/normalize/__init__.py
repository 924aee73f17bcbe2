"""Validate and normalise incoming events. Pure: no database, no Django.

Every event is checked field by field so that a rejection names each bad field,
and the valid events of the same request are kept. Provider usage objects and
OpenTelemetry attributes are mapped onto the canonical token fields by the table
in DESIGN.md. Numbers arrive as Decimal (the JSON decoder's float hook), so
`gpu_seconds` never passes through a binary float.

- `checks`: the limits and the per-field checks every shape shares;
- `shapes`: provider usage objects and OpenTelemetry attributes;
- `events`: `NormalizedEvent`, native events and CloudEvents (the generic path);
- `fast`: typed-decoded native events, the ingest hot path.
"""

from metering.normalize.checks import (
    GPU_SECONDS_PLACES,
    MAX_CE_SOURCE_LENGTH,
    MAX_CE_TYPE_LENGTH,
    MAX_GPU_SECONDS,
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_LATENCY_MS,
    MAX_MODEL_LENGTH,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_LENGTH,
    MAX_PROPERTY_NUMBER_DIGITS,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_TOKENS,
    Errors,
    Limits,
)
from metering.normalize.events import (
    CE_DATA_FIELDS,
    CE_FIELDS,
    NATIVE_FIELDS,
    NormalizedEvent,
    cloud_event,
    native_event,
    raw_event_id,
)
from metering.normalize.fast import NativeFields, native_event_fast
from metering.normalize.shapes import OTEL_USAGE

__all__ = [
    "CE_DATA_FIELDS",
    "CE_FIELDS",
    "GPU_SECONDS_PLACES",
    "MAX_CE_SOURCE_LENGTH",
    "MAX_CE_TYPE_LENGTH",
    "MAX_GPU_SECONDS",
    "MAX_ID_LENGTH",
    "MAX_LABEL_LENGTH",
    "MAX_LATENCY_MS",
    "MAX_MODEL_LENGTH",
    "MAX_PROPERTIES",
    "MAX_PROPERTY_KEY_LENGTH",
    "MAX_PROPERTY_NUMBER_DIGITS",
    "MAX_PROPERTY_VALUE_LENGTH",
    "MAX_TOKENS",
    "NATIVE_FIELDS",
    "OTEL_USAGE",
    "Errors",
    "Limits",
    "NativeFields",
    "NormalizedEvent",
    "cloud_event",
    "native_event",
    "native_event_fast",
    "raw_event_id",
]
