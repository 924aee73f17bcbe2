"""Group commit on the ASGI ingest path (metering.group_commit): many requests'
small writes in one statement, each request still answered as if written alone:
an event shared by two requests is stored once, a revoked key's request writes
nothing without harming the others, a failing request fails alone, and every
character and number arrives as sent."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone as django_timezone

from metering.group_commit import (
    GroupJob,
    GroupWriter,
    WriteOutcome,
    connection_kwargs,
    group_write,
)
from metering.ingest import IngestResult, events_rows
from metering.models import ApiKey, Event, EventKey, IngestBatch, Source
from metering.normalize import NormalizedEvent
from metering.partitions import event_partitions_ensure, partition_name
from metering.services import api_key_create, api_key_revoke
from tests.metering.helpers import event, iso, post

pytestmark = pytest.mark.postgres

Api = Callable[..., httpx.Client]
PgConnection = psycopg.Connection[Any]

# Each test's events fall in the current month, which has its partition.
NOW = django_timezone.now().replace(microsecond=123456)
# A month whose partition each test that needs it drops first.
OLD_MONTH = datetime(2019, 3, 15, 12, tzinfo=UTC)


def usage(event_id: str, *, when: datetime = NOW, **fields: Any) -> NormalizedEvent:
    """One valid event of customer acme; fields override the defaults."""
    values: dict[str, Any] = {
        "customer": "acme",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 5,
        **fields,
    }
    return NormalizedEvent(event_id=event_id, timestamp=when, **values)


def job(source_id: int, *events: NormalizedEvent | str, key: ApiKey | None = None) -> GroupJob:
    """One request's write, as metering.api_asgi makes it; a str is usage(that id)."""
    normalized = [usage(e) if isinstance(e, str) else e for e in events]
    return GroupJob(
        source_id=source_id,
        rows=events_rows(normalized, source_id=source_id, result=IngestResult()),
        received_at=django_timezone.now(),
        confirm_key_id=None if key is None else key.id,
    )


def keyed(key: ApiKey, *events: NormalizedEvent | str) -> GroupJob:
    """A request of key's source whose key the write must confirm."""
    return job(key.source_id, *events, key=key)


def stored_by_id() -> dict[str, Event]:
    return {e.event_id: e for e in Event.objects.all()}


def nothing_stored() -> bool:
    return not (Event.objects.exists() or EventKey.objects.exists() or IngestBatch.objects.exists())


@pytest.fixture
def pg(transactional_db: None) -> Iterator[PgConnection]:
    """A connection of its own, as a group writer's: autocommit, Django's settings."""
    event_partitions_ensure()  # the current month, whatever an earlier test dropped
    conn = psycopg.connect(**connection_kwargs(), autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def old_month(transactional_db: None) -> datetime:
    """A moment in a month without a partition."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {partition_name(OLD_MONTH.date().replace(day=1))}")
    return OLD_MONTH


@pytest.fixture
def source(transactional_db: None) -> Source:
    return Source.objects.create(name="group")


# --- group_write: several requests in one statement ------------------------------------


@pytest.mark.parametrize(
    ("second_input_tokens", "second_conflicts"),
    [(10, []), (99, ["shared"])],
    ids=["same content", "other content"],
)
def test_an_event_two_jobs_share_is_stored_once_for_the_first(
    pg: PgConnection, source: Source, second_input_tokens: int, second_conflicts: list[str]
) -> None:
    first = job(source.id, "a1", "shared")
    second = job(source.id, "b1", usage("shared", input_tokens=second_input_tokens), "b2")

    outcomes = group_write(pg, [first, second])

    assert [(o.accepted, o.conflicts) for o in outcomes] == [(2, []), (2, second_conflicts)]
    first_batch, second_batch = (o.batch_id for o in outcomes)
    assert first_batch is not None and second_batch is not None and first_batch != second_batch
    assert Event.objects.filter(event_id="shared").count() == 1
    shared = Event.objects.get(event_id="shared")
    assert (shared.batch_id, shared.input_tokens) == (first_batch, 10)
    assert {e.event_id: e.batch_id for e in Event.objects.all()} == {
        "a1": first_batch,
        "shared": first_batch,
        "b1": second_batch,
        "b2": second_batch,
    }
    assert EventKey.objects.count() == 4


@pytest.mark.parametrize("inactive", ["revoked", "read-only", "deleted"])
def test_a_job_whose_key_is_inactive_writes_nothing_and_spares_the_others(
    pg: PgConnection, inactive: str
) -> None:
    active, _ = api_key_create(source_name="product")
    other, _ = api_key_create(source_name="other product")
    scopes = ("read",) if inactive == "read-only" else ("ingest", "read")
    gone, _ = api_key_create(source_name="product", scopes=scopes)
    if inactive == "revoked":
        api_key_revoke(prefix=gone.prefix)
    elif inactive == "deleted":
        ApiKey.objects.filter(id=gone.id).delete()

    outcomes = group_write(
        pg,
        [
            keyed(active, "a1", "a2"),
            keyed(gone, "g1", "shared"),
            keyed(active, "shared", "b1"),
            keyed(other, "o1"),
        ],
    )

    assert outcomes[1] == WriteOutcome(batch_id=None, accepted=0)
    # The inactive job offered nothing, so the shared event is the next job's own.
    assert [(o.accepted, o.conflicts) for o in outcomes] == [(2, []), (0, []), (2, []), (1, [])]
    a_batch, _, b_batch, o_batch = (o.batch_id for o in outcomes)
    assert dict(IngestBatch.objects.values_list("id", "source_id")) == {
        a_batch: active.source_id,
        b_batch: active.source_id,
        o_batch: other.source_id,
    }
    assert {e.event_id: (e.batch_id, e.source_id) for e in Event.objects.all()} == {
        "a1": (a_batch, active.source_id),
        "a2": (a_batch, active.source_id),
        "shared": (b_batch, active.source_id),
        "b1": (b_batch, active.source_id),
        "o1": (o_batch, other.source_id),
    }
    assert EventKey.objects.count() == 5  # g1's key was never claimed


def test_a_month_without_partition_fails_the_whole_call(
    pg: PgConnection, source: Source, old_month: datetime
) -> None:
    jobs = [
        job(source.id, "n1"),
        job(source.id, "n2", usage("old", when=old_month)),
        job(source.id, "n3"),
    ]

    with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        group_write(pg, jobs)

    assert nothing_stored()
    # The connection is still fit for the next group (the writer rewrites on it).
    outcomes = group_write(pg, [jobs[0], jobs[2]])
    assert [o.accepted for o in outcomes] == [1, 1]
    assert set(stored_by_id()) == {"n1", "n3"}


AWKWARD = [
    'a"b\\c,{d}é',
    "NULL",
    "  spaced  ",
    "",
    "new\nline\ttab",
    "\\",
    '"',
    "{}",
    "ends with \\",
    "😀 ünïcode",
]


def test_every_character_and_number_arrives_as_sent(pg: PgConnection, source: Source) -> None:
    events = [
        usage(
            f"q{i}-{text}",
            customer=f"cust {text}",
            model=f"model {text}",
            provider=text,
            hardware=text,
            ce_type=text,
            properties={"label": text, f"key {text}": i, "nested": {"x": [text]}},
            latency_ms=None if i % 2 else 250 + i,
            gpu_seconds=Decimal("0.000001") if i % 2 else Decimal("123456789012345678.123456"),
        )
        for i, text in enumerate(AWKWARD)
    ]
    events.append(
        usage(
            "cloud",
            ce_source='//gw/a"b\\c,{d}é',
            when=NOW.astimezone(timezone(timedelta(hours=5, minutes=30))),
        )
    )
    # Split across jobs, so the columns of several requests share each array.
    jobs = [job(source.id, *events[:4]), job(source.id, *events[4:])]

    outcomes = group_write(pg, jobs)

    assert [o.accepted for o in outcomes] == [4, len(events) - 4]
    stored = stored_by_id()
    assert set(stored) == {e.event_id for e in events}
    for sent in events:
        row = stored[sent.event_id]
        assert (row.customer, row.model, row.provider, row.hardware) == (
            sent.customer,
            sent.model,
            sent.provider,
            sent.hardware,
        )
        assert (row.ce_source, row.ce_type) == (sent.ce_source, sent.ce_type)
        assert row.properties == sent.properties
        assert row.latency_ms == sent.latency_ms
        assert row.gpu_seconds == sent.gpu_seconds
        assert row.timestamp == sent.timestamp
        assert (row.input_tokens, row.output_tokens) == (10, 5)
    assert stored["q0-" + AWKWARD[0]].gpu_seconds == Decimal("123456789012345678.123456")
    assert stored["q1-NULL"].gpu_seconds == Decimal("0.000001")
    assert stored["q1-NULL"].latency_ms is None
    assert stored["q0-" + AWKWARD[0]].latency_ms == 250


# --- GroupWriter: requests that wait go together ---------------------------------------


def _wait_until_blocked(blocker_pid: int) -> None:
    """Until some session waits on a lock the blocking transaction holds."""
    with psycopg.connect(**connection_kwargs(), autocommit=True) as observer:
        deadline = time.monotonic() + 30
        while True:
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (blocker_pid,),
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the first write never waited on the held key")
            time.sleep(0.01)


async def _write_while_the_first_waits(
    writer: GroupWriter, blocker: PgConnection, first: GroupJob, queued: list[GroupJob]
) -> list[WriteOutcome | BaseException]:
    """Write `first`, which waits on the key `blocker` holds; queue the others behind
    it; then end the blocking transaction, so the others go as one group."""
    first_task = asyncio.create_task(writer.write(first))
    await asyncio.to_thread(_wait_until_blocked, blocker.info.backend_pid)
    queued_tasks = [asyncio.create_task(writer.write(j)) for j in queued]
    await asyncio.sleep(0)  # each queued task has run up to its wait: all are queued
    await asyncio.to_thread(blocker.rollback)
    # Every write is answered: a writer that lost one fails here instead of hanging.
    return await asyncio.wait_for(
        asyncio.gather(first_task, *queued_tasks, return_exceptions=True), timeout=60
    )


def test_a_failing_job_in_a_group_fails_alone(
    transactional_db: None, old_month: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    event_partitions_ensure()
    key, _ = api_key_create(source_name="product")
    revoked, _ = api_key_create(source_name="product")
    api_key_revoke(prefix=revoked.prefix)
    first = keyed(key, "a1", "a2")
    queued = [
        keyed(key, "b1", "b2"),
        keyed(key, "o1", usage("old", when=old_month)),
        keyed(key, "b1", "d1"),  # b1 again: a duplicate
        keyed(revoked, "r1"),
        keyed(key, "f1", "f2", "f3"),
    ]
    # Another session holds a1's key (uncommitted), so the first write waits on it.
    blocker = psycopg.connect(**connection_kwargs())
    held = first.rows[[r.event.event_id for r in first.rows].index("a1")]
    blocker.execute(
        "INSERT INTO metering_eventkey (key_hash, content_hash) VALUES (%s, %s)",
        (held.key_hex, held.content.hex()),
    )
    writer = GroupWriter(connections=1)
    try:
        with caplog.at_level(logging.INFO, logger="metering.group_commit"):
            results = asyncio.run(_write_while_the_first_waits(writer, blocker, first, queued))
    finally:
        blocker.close()
        writer.close()

    assert "group of 5 writes failed" in caplog.text  # the five did go as one group
    a, b, old, d, r, f = results
    assert isinstance(old, psycopg.errors.CheckViolation)
    assert r == WriteOutcome(batch_id=None, accepted=0)
    written = {
        name: o
        for name, o in {"a": a, "b": b, "d": d, "f": f}.items()
        if isinstance(o, WriteOutcome) and o.batch_id is not None
    }
    assert {name: (o.accepted, o.conflicts) for name, o in written.items()} == {
        "a": (2, []),  # the held key was rolled back: a1 is a's
        "b": (2, []),
        "d": (1, []),
        "f": (3, []),
    }
    batch = {name: o.batch_id for name, o in written.items()}
    assert {e.event_id: e.batch_id for e in Event.objects.all()} == {
        "a1": batch["a"],
        "a2": batch["a"],
        "b1": batch["b"],
        "b2": batch["b"],
        "d1": batch["d"],
        "f1": batch["f"],
        "f2": batch["f"],
        "f3": batch["f"],
    }
    assert set(IngestBatch.objects.values_list("id", flat=True)) == set(batch.values())
    assert EventKey.objects.count() == 8


# --- over HTTP: concurrent single-event requests, the case group commit is for --------


def _writer_backends() -> list[int]:
    """The backends that last ran the group statement (asked on a connection of its
    own, closed after)."""
    with psycopg.connect(**connection_kwargs(), autocommit=True) as observer:
        rows = observer.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE %s",
            ["%WITH s AS (%SELECT * FROM unnest(%"],
        ).fetchall()
    return [pid for (pid,) in rows]


def test_a_writer_whose_connection_died_writes_on_a_new_one(
    pg: PgConnection, source: Source
) -> None:
    """A database restart kills the connection a writer kept; its next write is not
    refused (which the API would answer 503) but made on a new connection."""

    async def scenario() -> tuple[WriteOutcome, WriteOutcome]:
        writer = GroupWriter(connections=1)
        try:
            first = await writer.write(job(source.id, "before"))
            backends = await asyncio.to_thread(_writer_backends)
            assert len(backends) == 1
            pg.execute("SELECT pg_terminate_backend(%s)", [backends[0]])
            second = await asyncio.wait_for(writer.write(job(source.id, "after")), timeout=60)
            assert await asyncio.to_thread(_writer_backends) not in ([], backends)
            return first, second
        finally:
            await asyncio.to_thread(writer.close)

    first, second = asyncio.run(scenario())
    assert (first.accepted, second.accepted) == (1, 1)
    assert set(stored_by_id()) == {"before", "after"}


def test_concurrent_single_event_posts_store_each_event_once(
    api: Api, make_key: Callable[..., str]
) -> None:
    threads, posts_each = 8, 40
    ids = [f"same-{i:02d}" for i in range(60)]
    when = iso(django_timezone.now().replace(microsecond=0))
    raw = make_key()
    clients = [api(key=raw) for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def send(t: int) -> list[httpx.Response]:
        # Together the threads send every id; each id about five times, in any order.
        sequence = [ids[(t * posts_each + i) % len(ids)] for i in range(posts_each)]
        random.Random(t).shuffle(sequence)
        barrier.wait(timeout=30)
        return [post(clients[t], event(event_id, timestamp=when)) for event_id in sequence]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        responses = [r for rs in pool.map(send, range(threads)) for r in rs]

    assert len(responses) == threads * posts_each
    assert {r.status_code for r in responses} == {202}, {r.text for r in responses}
    bodies = [r.json() for r in responses]
    assert sum(b["accepted"] for b in bodies) == len(ids)
    assert sum(b["accepted"] + b["duplicates"] for b in bodies) == threads * posts_each
    counts = dict(Event.objects.values_list("event_id").annotate(n=Count("id")))
    assert counts == dict.fromkeys(ids, 1)
