"""Writes of the metering app: API keys and event ingestion."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from metering import normalize
from metering.ingest import IngestResult, events_store
from metering.models import ALL_SCOPES, DEFAULT_SCOPES, ApiKey, Source

_decoder = msgspec.json.Decoder(float_hook=Decimal)
# The fast path for native events: typed decoding (see normalize.NativeFields).
_native_decoder = msgspec.json.Decoder(
    list[normalize.NativeFields] | normalize.NativeFields, float_hook=Decimal
)


class IngestError(Exception):
    """A request that cannot be read at all; carries the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class IngestOutcome:
    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }
        if self.conflicts:
            body["conflicts"] = self.conflicts
        return body

    @property
    def status(self) -> int:
        # Nothing stored and something wrong: the request as a whole failed.
        return 400 if self.accepted == 0 and self.duplicates == 0 and self.rejected else 202


def api_key_create(
    *, source_name: str, scopes: Iterable[str] = DEFAULT_SCOPES, name: str = ""
) -> tuple[ApiKey, str]:
    """Create a key (and its source if new). Returns the key and the raw secret,
    which is shown once and never stored."""
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in ALL_SCOPES]
    if unknown or not scope_list:
        raise ValueError(f"scopes must be among {', '.join(ALL_SCOPES)}; got {unknown or 'none'}")
    raw, prefix, secret = ApiKey.generate()
    with transaction.atomic():
        source, _ = Source.objects.get_or_create(name=source_name)
        key = ApiKey.objects.create(
            source=source,
            name=name,
            prefix=prefix,
            secret_hash=ApiKey.hash_secret(secret),
            scopes=scope_list,
        )
    return key, raw


def api_key_revoke(*, prefix: str) -> ApiKey:
    """Revoke a key by its public prefix. Idempotent: revoking twice keeps the first time."""
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(prefix=prefix)
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
    return key


def _decode(body: bytes) -> list[Any] | dict[str, Any]:
    try:
        payload = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a JSON string.
        raise IngestError(400, f"Body is not valid JSON: {exc}") from None
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, list):
        if not payload:
            raise IngestError(400, "Body is an empty array: send at least one event.")
        return payload
    raise IngestError(400, "Body must be a JSON object (one event) or an array of events.")


def _decode_native(body: bytes) -> list[normalize.NativeFields] | None:
    """The body as typed native events, or None when it is anything else (invalid
    JSON, a wrong type, an unknown field): then the generic path decodes it and says
    exactly what is wrong."""
    try:
        payload = _native_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, list) else [payload]


@dataclass
class ParsedEvents:
    """A request body read and validated: the valid events, the rejections, and the
    time the request was received (the default timestamp)."""

    valid: list[normalize.NormalizedEvent]
    rejected: list[dict[str, Any]]
    received_at: datetime


def events_parse(*, body: bytes, cloudevents: str | None) -> ParsedEvents:
    """Decode and validate a request body; no database. `cloudevents` is None for
    native events, "single" for one CloudEvent, "batch" for a CloudEvents batch.
    Raises IngestError for a body that is not events at all."""
    max_events: int = settings.INFERBILL_MAX_BATCH_EVENTS
    typed = _decode_native(body) if cloudevents is None else None
    if typed is not None:
        if not typed:
            raise IngestError(400, "Body is an empty array: send at least one event.")
        raw_events: list[Any] = typed
        parse: Any = normalize.native_event_fast
    else:
        payload = _decode(body)
        if cloudevents == "single" and not isinstance(payload, dict):
            raise IngestError(400, "application/cloudevents+json takes one CloudEvent object.")
        if cloudevents == "batch" and not isinstance(payload, list):
            raise IngestError(
                400, "application/cloudevents-batch+json takes an array of CloudEvents."
            )
        raw_events = payload if isinstance(payload, list) else [payload]
        parse = normalize.cloud_event if cloudevents else normalize.native_event
    if len(raw_events) > max_events:
        raise IngestError(
            413, f"Too many events: {len(raw_events)} in one request; the limit is {max_events}."
        )
    limits = normalize.Limits(
        received_at=timezone.now(),
        max_age=timedelta(days=settings.INFERBILL_MAX_EVENT_AGE_DAYS),
        max_future=timedelta(seconds=settings.INFERBILL_MAX_EVENT_FUTURE_SECONDS),
    )
    valid: list[normalize.NormalizedEvent] = []
    rejected: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_events):
        event, errors = parse(raw, limits=limits)
        if event is None:
            if typed is not None:
                raw = raw.raw()
            rejected.append(
                {
                    "index": index,
                    "event_id": normalize.raw_event_id(raw, cloudevents=bool(cloudevents)),
                    "errors": errors,
                }
            )
        else:
            valid.append(event)
    return ParsedEvents(valid=valid, rejected=rejected, received_at=limits.received_at)


def events_ingest(
    *, source_id: int, body: bytes, cloudevents: str | None, confirm_key_id: int | None = None
) -> IngestOutcome:
    """Validate a request body and store its valid events exactly once.

    See `events_parse` for `cloudevents` and IngestError. With `confirm_key_id` (a
    key not yet checked in this request), the write checks that the key is still
    active and raises metering.ingest.KeyInactive if not; when nothing is valid,
    nothing is written, so nothing confirms the key either. Returns only after the
    accepted events are committed."""
    parsed = events_parse(body=body, cloudevents=cloudevents)
    stored = (
        events_store(
            source_id=source_id,
            events=parsed.valid,
            received_at=parsed.received_at,
            confirm_key_id=confirm_key_id,
        )
        if parsed.valid
        else IngestResult()
    )
    return ingest_outcome(parsed=parsed, stored=stored)


def ingest_outcome(*, parsed: ParsedEvents, stored: IngestResult) -> IngestOutcome:
    return IngestOutcome(
        accepted=stored.accepted,
        duplicates=stored.duplicates,
        rejected=parsed.rejected,
        conflicts=stored.conflicts,
    )
