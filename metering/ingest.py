"""The ingest write path: validated events in, each stored exactly once.

PostgreSQL, in one transaction: one statement claims the batch's idempotency keys
(`INSERT … SELECT FROM unnest(keys) RETURNING`, the keys sent as two array
parameters; if any key is stored already, the transaction is rolled back and a new
one claims with ON CONFLICT DO NOTHING), then the events whose keys it claimed are
COPYed straight into the partitioned event table, which routes each row to its
month. Two requests racing on the same key both try the key insert; PostgreSQL lets
one win and the other wait for it and then fail or skip, so no event lands twice. Keys go in
sorted order so that two overlapping batches lock keys in the same order and
cannot deadlock each other. Below COPY_THRESHOLD events, one autocommitted
statement over a VALUES list does claim and insert together.

SQLite (the embedded demo default) takes the same steps row by row inside one
IMMEDIATE transaction, which serialises writers.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from django.db import connection, transaction

from inferbill.db import UuidArray, first_query
from metering.fields import SUMMED_FIELDS, TOKEN_FIELDS
from metering.models import SCOPE_INGEST
from metering.normalize import NormalizedEvent
from metering.partitions import event_partitions_ensure_range

logger = logging.getLogger(__name__)

# Below this many events a multi-row VALUES list beats the COPY round trips.
COPY_THRESHOLD = 16

# The columns of one event row as the VALUES path sends it, with their types.
ROW_COLUMNS = (
    "key_hash",
    "content_hash",
    "event_id",
    "ce_source",
    "ce_type",
    "customer",
    "timestamp",
    "model",
    "provider",
    "hardware",
    *SUMMED_FIELDS,
    "latency_ms",
    "properties",
)
ROW_TYPES = (
    "uuid",
    "uuid",
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "text",
    "text",
    "text",
    *["bigint"] * len(TOKEN_FIELDS),
    "numeric",
    "integer",
    "jsonb",
)
_COLUMN_LIST = ", ".join(ROW_COLUMNS)


# The batch row, written only if the API key given as key_id (when one is) is still
# active with the ingest scope: the key check of a request whose key this process
# recalled (metering.auth) rides in its write, and no batch means nothing is stored.
_BATCH_CTE = f"""
    batch AS (
        INSERT INTO metering_ingestbatch (source_id, received_at)
        SELECT %(source_id)s, %(received_at)s
        WHERE %(key_id)s::bigint IS NULL OR EXISTS (
            SELECT 1 FROM metering_apikey
            WHERE id = %(key_id)s AND revoked_at IS NULL AND scopes ? '{SCOPE_INGEST}'
        )
        RETURNING id
    )
"""


class KeyInactive(Exception):
    """The API key to confirm is revoked, gone or without the ingest scope; nothing
    was stored."""


def _insert_sql(*, values_cte: str) -> str:
    """The claim-and-insert statement over the VALUES list `s` of `values_cte`."""
    columns = ", ".join(c for c in ROW_COLUMNS if c != "content_hash")
    event_columns = ", ".join(f"s.{c}" for c in ROW_COLUMNS if c != "content_hash")
    return f"""
        WITH {values_cte} {_BATCH_CTE}, claimed AS (
            INSERT INTO metering_eventkey (key_hash, content_hash)
            SELECT s.key_hash, s.content_hash FROM s CROSS JOIN batch ORDER BY s.key_hash
            ON CONFLICT DO NOTHING
            RETURNING key_hash
        ), stored AS (
            INSERT INTO metering_event (batch_id, source_id, {columns})
            SELECT batch.id, %(source_id)s, {event_columns}
            FROM s JOIN claimed ON claimed.key_hash = s.key_hash CROSS JOIN batch
            RETURNING 1
        )
        SELECT (SELECT id FROM batch), (SELECT count(*) FROM stored)
    """


def _conflicts_sql(*, values_cte: str) -> str:
    return f"""
        WITH {values_cte.rstrip(", ")}
        SELECT s.event_id FROM s
        JOIN metering_eventkey k ON k.key_hash = s.key_hash
        WHERE k.content_hash <> s.content_hash
    """


@functools.cache
def _values_sql(n_rows: int) -> tuple[str, str]:
    """The insert and conflicts statements over an n-row VALUES list (built once per n)."""
    values_cte = _values_cte(n_rows)
    return (
        _insert_sql(values_cte=values_cte),
        _conflicts_sql(values_cte=values_cte),
    )


def _values_cte(n_rows: int) -> str:
    rows = ", ".join(
        "(" + ", ".join(f"%(v{i}_{j})s::{t}" for j, t in enumerate(ROW_TYPES)) + ")"
        for i in range(n_rows)
    )
    return f"s ({_COLUMN_LIST}) AS (VALUES {rows}),"


# The COPY path. The claim statement takes the keys as two uuid[] parameters in
# binary form (inferbill.db.UuidArray: the text form of 2 x 1,000 keys cost the
# server 1.3 ms to parse, the binary 0.3 ms) and returns the batch id, how many keys
# it claimed and, only when that is not all of them, which.
#
# It comes in two kinds. For new keys (the common case) a plain INSERT checks each
# key's uniqueness in the one index descent that inserts it, where ON CONFLICT first
# probes the index for every key and then descends again to insert. A single stored
# key makes the plain one fail (unique_violation): then its transaction is rolled
# back and the ON CONFLICT one runs in a new one. (The claim is the transaction's
# first statement, so nothing else is lost, and no savepoint is needed.)
def _claim_sql(*, on_conflict: bool) -> str:
    return f"""
        WITH {_BATCH_CTE}, claimed AS (
            INSERT INTO metering_eventkey (key_hash, content_hash)
            SELECT k, c FROM unnest(%(keys)s::uuid[], %(contents)s::uuid[]) AS t (k, c)
            CROSS JOIN batch ORDER BY k
            {"ON CONFLICT DO NOTHING" if on_conflict else ""}
            RETURNING key_hash
        )
        SELECT (SELECT id FROM batch), count(*),
               CASE WHEN count(*) < %(n)s
                    THEN string_agg(replace(key_hash::text, '-', ''), ',') END
        FROM claimed
    """


_CLAIM_NEW_SQL = _claim_sql(on_conflict=False)
_CLAIM_SQL = _claim_sql(on_conflict=True)
# Of the keys that were already stored, those whose content differs from this send.
_CLAIM_CONFLICTS_SQL = """
    SELECT replace(t.k::text, '-', '')
    FROM unnest(%(keys)s::uuid[], %(contents)s::uuid[]) AS t (k, c)
    JOIN metering_eventkey e ON e.key_hash = t.k
    WHERE e.content_hash <> t.c
"""
# The order of a COPY line: our columns, then NormalizedEvent.content_fields().
EVENT_COPY_COLUMNS = (
    "batch_id",
    "source_id",
    "key_hash",
    "event_id",
    "ce_source",
    "timestamp",
    "customer",
    "model",
    "provider",
    "hardware",
    *SUMMED_FIELDS,
    "latency_ms",
    "properties",
    "ce_type",
)
_COPY_SQL = f"COPY metering_event ({', '.join(EVENT_COPY_COLUMNS)}) FROM STDIN"
# Tabs in a COPY line: one between each two of its columns.
_COPY_TABS = len(EVENT_COPY_COLUMNS) - 1


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)
    batch_id: int | None = None


@dataclass(slots=True)
class EventRow:
    key: bytes
    content: bytes
    # The key as 32 hex digits, which PostgreSQL reads as a uuid.
    key_hex: str
    event: NormalizedEvent
    # The event's timestamp as text (its timestamp_text, or else its isoformat()),
    # properties_json() and content_fields(), computed once for the hash and the row.
    timestamp: str
    properties: str
    fields: str


def events_rows(
    events: Iterable[NormalizedEvent], *, source_id: int, result: IngestResult
) -> list[EventRow]:
    """The rows to store, repeats inside one request dropped (the first occurrence
    stands, the others are counted into `result`), in key order."""
    first: dict[bytes, EventRow] = {}
    # Timestamps the sender did not give are all the request's time: formatted once.
    formatted: datetime | None = None
    formatted_text = ""
    for event in events:
        key = event.key_hash(source_id=source_id)
        timestamp = event.timestamp_text
        if not timestamp:
            if event.timestamp is not formatted:
                formatted, formatted_text = event.timestamp, event.timestamp.isoformat()
            timestamp = formatted_text
        properties = event.properties_json()
        fields = event.content_fields(properties_json=properties)
        content = event.content_hash_from(fields=fields)
        seen = first.get(key)
        if seen is None:
            first[key] = EventRow(key, content, key.hex(), event, timestamp, properties, fields)
            continue
        result.duplicates += 1
        if seen.content != content:
            result.conflicts.append(event.event_id)
    # Sorted keys: see the module docstring on deadlocks.
    return [first[key] for key in sorted(first)]


def _row_values(row: EventRow) -> tuple[Any, ...]:
    e = row.event
    return (
        uuid.UUID(bytes=row.key),
        uuid.UUID(bytes=row.content),
        e.event_id,
        e.ce_source,
        e.ce_type,
        e.customer,
        e.timestamp,
        e.model,
        e.provider,
        e.hardware,
        e.input_tokens,
        e.cache_read_input_tokens,
        e.cache_write_input_tokens,
        e.output_tokens,
        e.reasoning_output_tokens,
        e.gpu_seconds,
        e.latency_ms,
        row.properties,
    )


def _copy_escape(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _copy_line(row: EventRow, prefix: str, escape: Any = None) -> str:
    """One event row in COPY text format, after `prefix` (batch and source ids). Only
    the sender's strings can hold a character COPY treats specially; numbers, hashes
    and timestamps never do."""
    e = row.event
    if escape is None:
        event_id, ce_source, fields = e.event_id, e.ce_source, row.fields
    else:
        event_id, ce_source = escape(e.event_id), escape(e.ce_source)
        fields = e.content_fields(properties_json=row.properties, escape=escape)
    return f"{prefix}{row.key_hex}\t{event_id}\t{ce_source}\t{row.timestamp}\t{fields}\n"


def _copy_text(rows: list[EventRow], *, batch_id: int, source_id: int) -> bytes:
    """The rows in COPY text format. Built without escaping, then checked as a whole:
    if any sender string held a backslash, tab, newline or carriage return, the rows
    are built again with each such string escaped. (The only backslashes of our own
    are the \\N of missing latencies.)"""
    prefix = f"{batch_id}\t{source_id}\t"
    text = "".join([_copy_line(row, prefix) for row in rows])
    if (
        text.count("\t") != _COPY_TABS * len(rows)
        or text.count("\n") != len(rows)
        or text.count("\\") != sum(row.event.latency_ms is None for row in rows)
        or "\r" in text
    ):
        text = "".join([_copy_line(row, prefix, _copy_escape) for row in rows])
    return text.encode()


def events_store(
    *,
    source_id: int,
    events: Sequence[NormalizedEvent],
    received_at: datetime,
    confirm_key_id: int | None = None,
) -> IngestResult:
    """Store valid events, each exactly once. Returns how many were new, how many
    were duplicates, and which duplicates differ from the version stored first.

    With `confirm_key_id`, the same statement that writes checks that this API key
    is still active with the ingest scope, and stores nothing (raising KeyInactive)
    when it is not. Commits before returning: a caller may acknowledge the events
    as durable."""
    result = IngestResult()
    rows = events_rows(events, source_id=source_id, result=result)
    if not rows:
        return result
    if connection.vendor == "postgresql":
        for attempt in range(3):
            try:
                _store_postgres(
                    source_id=source_id,
                    rows=rows,
                    received_at=received_at,
                    confirm_key_id=confirm_key_id,
                    result=result,
                )
                break
            except psycopg.errors.CheckViolation:
                # No partition for some month yet (a beat that has not run): make it, retry.
                if attempt:
                    raise
                timestamps = [row.event.timestamp for row in rows]
                event_partitions_ensure_range(start=min(timestamps), end=max(timestamps))
            except psycopg.errors.DeadlockDetected:
                # Sorted keys make this rare (a batch deduplicated against a concurrent
                # one still waits on its keys); the whole transaction rolled back, so a
                # retry stores each event once.
                if attempt == 2:
                    raise
                logger.warning("ingest deadlock, retrying (attempt %d)", attempt + 1)
    else:
        _store_sqlite(
            source_id=source_id,
            rows=rows,
            received_at=received_at,
            confirm_key_id=confirm_key_id,
            result=result,
        )
    return result


_RETRIED_ERRORS = (
    psycopg.errors.CheckViolation,
    psycopg.errors.DeadlockDetected,
)


def _unwrap_errors(func: Any) -> Any:
    """Django wraps driver errors; re-raise the psycopg cause so callers can tell
    a missing partition or a deadlock from other failures."""

    def wrapper(**kwargs: Any) -> Any:
        try:
            return func(**kwargs)
        except Exception as exc:
            cause = exc.__cause__
            if isinstance(cause, _RETRIED_ERRORS):
                raise cause from exc
            raise

    return wrapper


@_unwrap_errors
def _store_postgres(
    *,
    source_id: int,
    rows: list[EventRow],
    received_at: datetime,
    confirm_key_id: int | None,
    result: IngestResult,
) -> None:
    params: dict[str, Any] = {
        "source_id": source_id,
        "received_at": received_at,
        "key_id": confirm_key_id,
    }
    conflicts: list[str] = []
    nested = connection.in_atomic_block
    if len(rows) < COPY_THRESHOLD:
        insert_sql, conflicts_sql = _values_sql(len(rows))
        for i, row in enumerate(rows):
            for j, value in enumerate(_row_values(row)):
                params[f"v{i}_{j}"] = value

        # One statement. Outside a transaction it is a transaction of its own, committed
        # before execute() returns, which saves the BEGIN and COMMIT round trips; inside
        # one, a savepoint keeps a failure from spoiling the caller's transaction.
        def store() -> tuple[int | None, int]:
            # Server-side binding with prepared statements: PostgreSQL parses and plans
            # each statement once per connection, not once per request.
            with (
                transaction.atomic() if nested else nullcontext(),
                psycopg.Cursor(connection.connection) as cursor,
            ):
                cursor.execute(insert_sql, params, prepare=True)
                batch_id, accepted = cursor.fetchone()
                if batch_id is not None and accepted < len(rows):
                    cursor.execute(conflicts_sql, params, prepare=True)
                    conflicts[:] = [r[0] for r in cursor.fetchall()]
                return batch_id, accepted

        # With a recalled key this is the request's first query (see first_query); a
        # repeat is safe: had the first try committed, its events come back as
        # duplicates.
        batch_id, accepted = first_query(store)
        if batch_id is None:
            raise KeyInactive
    else:
        params["keys"] = UuidArray.of([row.key for row in rows])
        params["contents"] = UuidArray.of([row.content for row in rows])
        params["n"] = len(rows)

        def store() -> tuple[int | None, int]:
            try:
                return _store_copy(new_keys=True, rows=rows, params=params, conflicts=conflicts)
            except _KeyStored:
                # Some key is stored already (a retry, a duplicate) or was just stored by
                # a concurrent request; that transaction is rolled back: claim key by key.
                return _store_copy(new_keys=False, rows=rows, params=params, conflicts=conflicts)

        # The request's first query, in place of Django's health check (see first_query);
        # a repeat is safe, as above.
        batch_id, accepted = first_query(store)
    result_add(result, rows=rows, batch_id=batch_id, accepted=accepted, conflicts=conflicts)


class _KeyStored(Exception):
    """The plain claim met a key that is stored already; nothing was written."""


def _store_copy(
    *, new_keys: bool, rows: list[EventRow], params: dict[str, Any], conflicts: list[str]
) -> tuple[int | None, int]:
    """One transaction of the COPY path: claim the keys (with the plain claim when
    `new_keys`, raising _KeyStored if one is stored), COPY the events whose keys it
    claimed, list the conflicts. Returns (batch id, accepted)."""
    source_id = params["source_id"]
    with (
        transaction.atomic(),
        connection.wrap_database_errors,
        psycopg.Cursor(connection.connection) as cursor,
    ):
        try:
            cursor.execute(_CLAIM_NEW_SQL if new_keys else _CLAIM_SQL, params, prepare=True)
        except psycopg.errors.UniqueViolation:
            if not new_keys:
                raise
            raise _KeyStored from None
        row = cursor.fetchone()
        assert row is not None
        batch_id, accepted, claimed_keys = row
        if batch_id is None:
            raise KeyInactive
        claimed = rows
        if accepted < len(rows):
            kept = set(claimed_keys.split(",")) if accepted else set()
            claimed = [row for row in rows if row.key_hex in kept]
        if claimed:
            with cursor.copy(_COPY_SQL) as copy:
                copy.write(_copy_text(claimed, batch_id=batch_id, source_id=source_id))
        if accepted < len(rows):
            cursor.execute(_CLAIM_CONFLICTS_SQL, params, prepare=True)
            differing = {r[0] for r in cursor.fetchall()}
            conflicts[:] = [row.event.event_id for row in rows if row.key_hex in differing]
    return batch_id, accepted


def result_add(
    result: IngestResult,
    *,
    rows: list[EventRow],
    batch_id: int | None,
    accepted: int,
    conflicts: list[str],
) -> None:
    """Count a stored write of `rows` into `result`."""
    result.conflicts.extend(conflicts)
    result.accepted += accepted
    result.duplicates += len(rows) - accepted
    result.batch_id = batch_id


def _store_sqlite(
    *,
    source_id: int,
    rows: list[EventRow],
    received_at: datetime,
    confirm_key_id: int | None,
    result: IngestResult,
) -> None:
    from metering.models import ApiKey, Event, EventKey, IngestBatch

    with transaction.atomic():
        if confirm_key_id is not None:
            key = ApiKey.objects.filter(pk=confirm_key_id, revoked_at=None).first()
            if key is None or SCOPE_INGEST not in key.scopes:
                raise KeyInactive
        batch = IngestBatch.objects.create(source_id=source_id, received_at=received_at)
        stored: list[Event] = []
        # IMMEDIATE transactions (settings) make this read-then-write safe on SQLite.
        existing: dict[uuid.UUID, uuid.UUID] = {}
        keys = [uuid.UUID(bytes=row.key) for row in rows]
        for i in range(0, len(keys), 500):
            existing.update(
                EventKey.objects.filter(key_hash__in=keys[i : i + 500]).values_list(
                    "key_hash", "content_hash"
                )
            )
        new_keys: list[EventKey] = []
        for row, key in zip(rows, keys, strict=True):
            content = uuid.UUID(bytes=row.content)
            if key in existing:
                result.duplicates += 1
                if existing[key] != content:
                    result.conflicts.append(row.event.event_id)
                continue
            new_keys.append(EventKey(key_hash=key, content_hash=content))
            e = row.event
            stored.append(
                Event(
                    batch=batch,
                    source_id=source_id,
                    key_hash=key,
                    event_id=e.event_id,
                    ce_source=e.ce_source,
                    ce_type=e.ce_type,
                    customer=e.customer,
                    timestamp=e.timestamp,
                    model=e.model,
                    provider=e.provider,
                    hardware=e.hardware,
                    input_tokens=e.input_tokens,
                    cache_read_input_tokens=e.cache_read_input_tokens,
                    cache_write_input_tokens=e.cache_write_input_tokens,
                    output_tokens=e.output_tokens,
                    reasoning_output_tokens=e.reasoning_output_tokens,
                    gpu_seconds=e.gpu_seconds,
                    latency_ms=e.latency_ms,
                    properties=e.properties,
                )
            )
        EventKey.objects.bulk_create(new_keys, batch_size=500)
        Event.objects.bulk_create(stored, batch_size=500)
    result.accepted += len(stored)
    result.batch_id = batch.id
