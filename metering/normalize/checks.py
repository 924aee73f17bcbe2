"""Field checks shared by every event shape: each names its field in `errors` and
returns a harmless default when the value is bad."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

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

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)

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


def _timestamp(
    value: Any, *, name: str, errors: Errors, limits: Limits
) -> tuple[datetime, str] | None:
    """The instant in UTC, and the text the database may read it from: the sender's
    own when it names exactly that microsecond, else "" (PostgreSQL rounds a seventh
    fraction digit where Python truncates it). Formatting the instant again costs
    more than all the checks here together."""
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
        # Python 3.11 reads "Z" (as the UTC singleton), not "z".
        parsed = datetime.fromisoformat(value[:-1] + "Z" if value[-1] == "z" else value)
    except ValueError:
        errors[name] = "must be an RFC 3339 date-time with offset, e.g. 2026-01-31T12:00:00Z"
        return None
    # One instant, one value: the same time sent with another offset is the same content.
    if parsed.tzinfo is not UTC:
        parsed = parsed.astimezone(UTC)
    if parsed > limits.latest:
        errors[name] = "is more than 5 minutes in the future"
        return None
    if parsed < limits.earliest:
        days = limits.max_age.days
        errors[name] = f"is older than the lateness window of {days} days"
        return None
    fraction = match["fraction"]
    return parsed, value if fraction is None or len(fraction) <= 6 else ""


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
