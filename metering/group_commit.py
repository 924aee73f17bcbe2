"""Group commit for small ingest writes, on the ASGI path (inferbill.asgi).

A request of a few events costs PostgreSQL more in its statement and transaction
(a round trip, a commit and its WAL flush) than in its rows. Here the small writes
that arrive while the writers are busy wait, and then go together: one prepared
statement (GROUP_SQL) takes the rows of every request of the group as column
arrays, checks each request's API key, writes one ingest batch per request whose
key is active, claims the keys and inserts the new events; one commit. Each
request gets its own answer, and only after the commit: a 2xx still means durably
stored.

Why this is exactly-once: keys are claimed with ON CONFLICT DO NOTHING as in
metering.ingest, in key order (two groups cannot deadlock), and an event that two
requests of one group share is offered once, by the first of them
(DISTINCT ON ... ORDER BY job), so the others count it as a duplicate. A revoked
key's request writes nothing, without touching the others. If the statement fails,
nothing of the group was written, and each request is written again alone, so one
request's failure (a month without its partition yet) is its own. Writing again
is safe for the same reason a client retry is: a write that did commit after all
comes back as duplicates.

Each process (a gunicorn worker with its event loop) holds its writer threads for
this (INFERBILL_GROUP_COMMIT_CONNECTIONS, default one: fewer writers make fuller
groups), each with a connection of its own opened on first use with the Django
database settings.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from django.db import connections

from inferbill.dbthreads import QueueThreads, future_resolve
from metering.fields import SUMMED_FIELDS
from metering.ingest import EventRow
from metering.models import SCOPE_INGEST

logger = logging.getLogger(__name__)

# Event columns sent as arrays, with their array types, after job, key_hash and
# content_hash.
_ARRAY_COLUMNS = (
    ("event_id", "text"),
    ("ce_source", "text"),
    ("ce_type", "text"),
    ("customer", "text"),
    ("timestamp", "timestamptz"),
    ("model", "text"),
    ("provider", "text"),
    ("hardware", "text"),
    *((name, "numeric" if name == "gpu_seconds" else "bigint") for name in SUMMED_FIELDS),
    ("latency_ms", "integer"),
    ("properties", "jsonb"),
)
_EVENT_COLUMNS = ", ".join(name for name, _ in _ARRAY_COLUMNS)

GROUP_SQL = f"""
    WITH s AS (
        SELECT * FROM unnest(
            %(job)s::bigint[], %(key_hash)s::uuid[], %(content_hash)s::uuid[],
            {", ".join(f"%({name})s::{kind}[]" for name, kind in _ARRAY_COLUMNS)}
        ) AS s (job, key_hash, content_hash, {_EVENT_COLUMNS})
    ), jobs AS (
        -- The requests whose key (when one is to confirm) is still active with the
        -- ingest scope, each with the id of its batch row.
        SELECT j.job, j.source_id, j.received_at,
               nextval('metering_ingestbatch_id_seq') AS batch_id
        FROM unnest(%(job_source)s::bigint[], %(job_key)s::bigint[],
                    %(job_received)s::timestamptz[])
             WITH ORDINALITY AS j (source_id, key_id, received_at, job)
        LEFT JOIN metering_apikey k ON k.id = j.key_id
        WHERE j.key_id IS NULL
           OR (k.revoked_at IS NULL AND k.scopes ? '{SCOPE_INGEST}' AND k.id IS NOT NULL)
    ), batch AS (
        INSERT INTO metering_ingestbatch (id, source_id, received_at)
        SELECT batch_id, source_id, received_at FROM jobs
    ), offered AS (
        -- An event that several requests of the group carry: the first one's.
        SELECT DISTINCT ON (s.key_hash) s.*, jobs.batch_id, jobs.source_id
        FROM s JOIN jobs USING (job)
        ORDER BY s.key_hash, s.job
    ), claimed AS (
        INSERT INTO metering_eventkey (key_hash, content_hash)
        SELECT key_hash, content_hash FROM offered ORDER BY key_hash
        ON CONFLICT DO NOTHING
        RETURNING key_hash
    ), stored AS (
        INSERT INTO metering_event (batch_id, source_id, key_hash, {_EVENT_COLUMNS})
        SELECT o.batch_id, o.source_id, o.key_hash, {", ".join(f"o.{n}" for n, _ in _ARRAY_COLUMNS)}
        FROM offered o JOIN claimed USING (key_hash)
        RETURNING batch_id
    )
    SELECT jobs.job, jobs.batch_id,
           (SELECT count(*) FROM stored WHERE stored.batch_id = jobs.batch_id)
    FROM jobs
"""
# Of the events that were not new, those whose stored content differs.
CONFLICTS_SQL = """
    SELECT t.job, t.event_id
    FROM unnest(%(job)s::bigint[], %(key_hash)s::uuid[], %(content_hash)s::uuid[],
                %(event_id)s::text[]) AS t (job, key_hash, content_hash, event_id)
    JOIN metering_eventkey e ON e.key_hash = t.key_hash
    WHERE e.content_hash <> t.content_hash
"""


_TEXT_COLUMNS = tuple(name for name, kind in _ARRAY_COLUMNS if kind == "text")


def _quoted(value: str) -> str:
    """An element of a PostgreSQL array literal, quoted (validation has already
    refused NUL characters)."""
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def _array(elements: Any) -> str:
    """A PostgreSQL array literal. The group's columns go as literals that the
    statement casts: psycopg's own list adaptation, measured here, cost more Python
    per request than the rest of the write."""
    return "{" + ",".join(elements) + "}"


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    # None: the key to confirm is inactive, nothing was written.
    batch_id: int | None
    accepted: int
    conflicts: list[str] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class GroupJob:
    """One request's write: its rows (metering.ingest.events_rows), and the key to
    confirm in the write (None: nothing to confirm)."""

    source_id: int
    rows: list[EventRow]
    received_at: datetime
    confirm_key_id: int | None


@dataclass(eq=False, slots=True)
class _Pending:
    job: GroupJob
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[WriteOutcome]

    def answer(self, outcome: WriteOutcome | BaseException) -> None:
        """From a writer thread: settle the future on its loop."""
        future_resolve(self.loop, self.future, outcome, isinstance(outcome, BaseException))


def connection_kwargs() -> dict[str, Any]:
    """psycopg connection arguments for the Django default database, as Django's own
    connections get them (every OPTIONS entry, DATABASE_PREPARE_THRESHOLD included),
    read when a connection is opened (tests point Django at their own database
    first). Without Django's cursor class and adapters: the writer binds its
    parameters on the server, as prepared statements."""
    kwargs = connections["default"].get_connection_params()
    kwargs.pop("cursor_factory", None)
    kwargs.pop("context", None)
    return kwargs


class GroupWriter:
    """Writes GroupJobs in groups, from `connections` writer threads, each with a
    connection of its own (opened on first use, opened again after it breaks).

    Threads rather than an async driver: measured with psycopg's AsyncConnection,
    the driver's per-round-trip Python cost (futures and generators per wait) came
    to more than the rest of a single-event request; the synchronous connection
    waits in C with the GIL released. The event loop only queues a job and awaits
    its future."""

    def __init__(self, *, connections: int = 1, max_group: int = 64) -> None:
        self._max_group = max_group
        self._threads: QueueThreads[_Pending] = QueueThreads(
            connections, name="inferbill-group", serve=self._run
        )

    async def write(self, job: GroupJob) -> WriteOutcome:
        """Store one request's rows; returns after the commit. Raises what the
        write raised when it failed alone (psycopg errors)."""
        loop = asyncio.get_running_loop()
        pending = _Pending(job, loop, loop.create_future())
        self._threads.put(pending)
        return await pending.future

    def close(self) -> None:
        """Stop the writer threads (after what is queued) and close their connections."""
        self._threads.close()

    def _run(self, jobs: queue.SimpleQueue[_Pending | None]) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while (first := jobs.get()) is not None:
                group = [first]
                while len(group) < self._max_group:
                    try:
                        pending = jobs.get_nowait()
                    except queue.Empty:
                        break
                    if pending is None:  # close(): this thread stops after this group
                        jobs.put(None)
                        break
                    group.append(pending)
                try:
                    conn = self._flush(conn, group)
                except BaseException as exc:  # never lose the thread, nor a request
                    logger.exception("group writer")
                    for pending in group:
                        pending.answer(exc)  # those already answered keep their answer
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def _flush(
        self, conn: psycopg.Connection[Any] | None, group: list[_Pending], *, retry: bool = True
    ) -> psycopg.Connection[Any] | None:
        """Write the group in one transaction, or, if that fails, each job alone.
        Returns the connection to keep (None if it broke)."""
        kept = conn is not None and not conn.closed
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(**connection_kwargs(), autocommit=True)
                # One plan for GROUP_SQL, made once: a custom plan per execution (what
                # PostgreSQL may choose for array parameters) costs about as much
                # planning as a small group's execution.
                conn.execute("SET plan_cache_mode = force_generic_plan")
            outcomes = group_write(conn, [pending.job for pending in group])
        except Exception as exc:
            broken = conn is not None and (conn.closed or conn.broken)
            if broken:
                assert conn is not None
                conn.close()
                conn = None
            if broken and kept and retry:
                # The connection kept from the last write died since (a database
                # restart): once more on a new one, as Django's own health check would.
                # Safe to repeat: had the statement committed, its events come back as
                # duplicates.
                return self._flush(None, group, retry=False)
            if len(group) == 1:
                group[0].answer(exc)
                return conn
            logger.info("group of %d writes failed (%r); writing each alone", len(group), exc)
            for pending in group:
                conn = self._flush(conn, [pending])
            return conn
        for pending, outcome in zip(group, outcomes, strict=True):
            pending.answer(outcome)
        return conn


def group_params(jobs: list[GroupJob]) -> dict[str, str]:
    """GROUP_SQL's parameters for the jobs: one array literal per column."""
    params = {
        "job_source": _array(str(job.source_id) for job in jobs),
        "job_key": _array(
            "NULL" if job.confirm_key_id is None else str(job.confirm_key_id) for job in jobs
        ),
        "job_received": _array(_quoted(job.received_at.isoformat()) for job in jobs),
    }
    numbers: list[str] = []
    rows: list[EventRow] = []
    for number, job in enumerate(jobs, start=1):
        numbers.extend([str(number)] * len(job.rows))
        rows.extend(job.rows)
    events = [row.event for row in rows]
    params["job"] = _array(numbers)
    params["key_hash"] = _array(row.key_hex for row in rows)
    params["content_hash"] = _array(row.content.hex() for row in rows)
    params["timestamp"] = _array(_quoted(row.timestamp) for row in rows)
    params["properties"] = _array(_quoted(row.properties) for row in rows)
    params["latency_ms"] = _array(
        "NULL" if e.latency_ms is None else str(e.latency_ms) for e in events
    )
    for name in _TEXT_COLUMNS:
        params[name] = _array(_quoted(getattr(e, name)) for e in events)
    for name in SUMMED_FIELDS:
        params[name] = _array(str(getattr(e, name)) for e in events)
    return params


def group_write(conn: psycopg.Connection[Any], jobs: list[GroupJob]) -> list[WriteOutcome]:
    """Write the jobs' rows in one statement on an autocommit connection: committed
    when this returns. One outcome per job, in order."""
    params = group_params(jobs)
    with conn.cursor() as cursor:
        # Prepared: parsed and planned once per connection.
        cursor.execute(GROUP_SQL, params, prepare=True)
        answers = {number: (batch_id, accepted) for number, batch_id, accepted in cursor}
        outcomes = [
            WriteOutcome(*answers[number]) if number in answers else WriteOutcome(None, 0)
            for number in range(1, len(jobs) + 1)
        ]
        if any(
            o.batch_id is not None and o.accepted < len(j.rows)
            for o, j in zip(outcomes, jobs, strict=True)
        ):
            cursor.execute(
                CONFLICTS_SQL,
                {name: params[name] for name in ("job", "key_hash", "content_hash", "event_id")},
                prepare=True,
            )
            for number, event_id in cursor:
                if outcomes[number - 1].batch_id is not None:
                    outcomes[number - 1].conflicts.append(event_id)
    return outcomes
