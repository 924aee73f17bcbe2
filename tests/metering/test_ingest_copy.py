"""The PostgreSQL write path of metering.ingest: the COPY text it builds itself must
carry every character a sender may send, and a batch partly made of keys already
stored must COPY exactly the new events."""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from metering import ingest
from metering.ingest import COPY_THRESHOLD, events_store
from metering.models import Event, EventKey, Source
from metering.normalize import NormalizedEvent
from metering.services import events_ingest

pytestmark = pytest.mark.postgres

# Characters COPY's text format treats specially, and their look-alikes.
AWKWARD = [
    "back\\slash",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "\\N",
    "\\.",
    "ends with \\",
    "\\t not a tab",
    "é 😀 ünïcode",
    "quotes ' \"",
    "plain",
]


def _events(prefix: str, n: int) -> list[NormalizedEvent]:
    now = timezone.now().replace(microsecond=123456)
    events = []
    for i in range(n):
        text = AWKWARD[i % len(AWKWARD)]
        events.append(
            NormalizedEvent(
                event_id=f"{prefix}-{i}-{text}",
                customer=f"cust {text}",
                timestamp=now,
                model=f"model {text}",
                provider=text,
                hardware=text,
                input_tokens=10 + i,
                cache_read_input_tokens=i % 3,
                output_tokens=5,
                reasoning_output_tokens=i % 2,
                gpu_seconds=Decimal("0.000001") * i,
                latency_ms=None if i % 2 else i,
                properties={"label": text, f"key {text}"[:64]: i, "flag": True},
            )
        )
    return events


@pytest.mark.parametrize("n", [COPY_THRESHOLD - 1, COPY_THRESHOLD, 3 * len(AWKWARD)])
def test_every_character_stored_as_sent(transactional_db: None, n: int) -> None:
    source = Source.objects.create(name=f"copy-{n}")
    events = _events("e", n)
    result = events_store(source_id=source.id, events=events, received_at=timezone.now())
    assert (result.accepted, result.duplicates, result.conflicts) == (n, 0, [])
    stored = {e.event_id: e for e in Event.objects.filter(source=source)}
    assert len(stored) == n
    for sent in events:
        row = stored[sent.event_id]
        assert row.customer == sent.customer
        assert row.model == sent.model
        assert row.provider == sent.provider
        assert row.hardware == sent.hardware
        assert row.timestamp == sent.timestamp
        assert row.gpu_seconds == sent.gpu_seconds
        assert row.latency_ms == sent.latency_ms
        assert row.properties == sent.properties
        assert (row.input_tokens, row.cache_read_input_tokens, row.reasoning_output_tokens) == (
            sent.input_tokens,
            sent.cache_read_input_tokens,
            sent.reasoning_output_tokens,
        )
    # The stored content hashes are the ones normalize computes: a retry is no conflict.
    again = events_store(source_id=source.id, events=events, received_at=timezone.now())
    assert (again.accepted, again.duplicates, again.conflicts) == (0, n, [])
    assert EventKey.objects.count() == n


def test_a_batch_of_new_and_stored_keys_copies_only_the_new(transactional_db: None) -> None:
    source = Source.objects.create(name="mixed")
    events = _events("m", 40)
    first = events_store(source_id=source.id, events=events[::2], received_at=timezone.now())
    assert (first.accepted, first.duplicates) == (20, 0)
    changed = events[2]
    changed.input_tokens += 1  # a stored key sent again with other content: a conflict
    second = events_store(source_id=source.id, events=events, received_at=timezone.now())
    assert (second.accepted, second.duplicates, second.conflicts) == (20, 20, [changed.event_id])
    stored = list(Event.objects.filter(source=source).values_list("event_id", flat=True))
    assert sorted(stored) == sorted(e.event_id for e in events)
    # The first version stands.
    assert Event.objects.get(event_id=changed.event_id).input_tokens == changed.input_tokens - 1
    third = events_store(source_id=source.id, events=events, received_at=timezone.now())
    assert (third.accepted, third.duplicates) == (0, 40)
    assert Event.objects.filter(source=source).count() == 40


def _plain(prefix: str, n: int, **fields: object) -> list[NormalizedEvent]:
    now = timezone.now()
    return [
        NormalizedEvent(
            event_id=f"{prefix}-{i}",
            customer="acme",
            timestamp=now,
            model="gpt-4o",
            input_tokens=i,
            latency_ms=None if i % 3 else 250,
            **fields,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


def test_missing_latencies_alone_need_no_escaping(transactional_db: None) -> None:
    source = Source.objects.create(name="nulls")
    events = _plain("n", 20)
    rows = ingest.events_rows(events, source_id=source.id, result=ingest.IngestResult())
    text = ingest._copy_text(rows, batch_id=1, source_id=source.id).decode()
    # Built once, unescaped: each missing latency is its own \N and nothing else is.
    assert text == "".join(ingest._copy_line(row, f"1\t{source.id}\t") for row in rows)
    assert text.count("\\N") == sum(e.latency_ms is None for e in events)
    assert events_store(source_id=source.id, events=events, received_at=timezone.now()).accepted
    stored = dict(Event.objects.filter(source=source).values_list("event_id", "latency_ms"))
    assert stored == {e.event_id: e.latency_ms for e in events}


def test_a_sender_string_that_reads_like_null_is_kept(transactional_db: None) -> None:
    source = Source.objects.create(name="backslash-n")
    events = _plain("b", 20)
    events[4].customer = "\\N"
    events[5].model = "\\N"
    events[6].properties = {"x": "\\N"}
    result = events_store(source_id=source.id, events=events, received_at=timezone.now())
    assert result.accepted == 20
    stored = {e.event_id: e for e in Event.objects.filter(source=source)}
    assert stored["b-4"].customer == "\\N"
    assert stored["b-5"].model == "\\N"
    assert stored["b-6"].properties == {"x": "\\N"}


def test_timestamps_stored_as_the_instant_validated(transactional_db: None) -> None:
    """The COPY line carries the sender's own timestamp text where it names the exact
    microsecond validated, and the formatted instant where it does not (a seventh
    fraction digit, which Python truncates and PostgreSQL would round)."""
    source = Source.objects.create(name="times")
    now = timezone.now().astimezone(UTC).replace(microsecond=0) - timedelta(hours=1)
    base = now.strftime("%Y-%m-%dT%H:%M:%S")
    in_india = (now + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    sent = {
        "z": (f"{base}.5Z", now + timedelta(microseconds=500_000)),
        "lower": (f"{base.replace('T', 't')}.25z", now + timedelta(microseconds=250_000)),
        "space": (f"{base.replace('T', ' ')}Z", now),
        "offset": (f"{in_india}.123456+05:30", now + timedelta(microseconds=123_456)),
        "seven": (f"{base}.9999999Z", now + timedelta(microseconds=999_999)),
    }
    body = [
        {"event_id": f"{name}-{i}", "customer": "acme", "model": "m", "timestamp": text}
        for name, (text, _) in sent.items()
        for i in range(4)  # 20 events: the COPY path
    ]
    outcome = events_ingest(source_id=source.id, body=json.dumps(body).encode(), cloudevents=None)
    assert (outcome.accepted, outcome.rejected) == (20, [])
    stored = dict(Event.objects.filter(source=source).values_list("event_id", "timestamp"))
    for name, (_, instant) in sent.items():
        for i in range(4):
            assert stored[f"{name}-{i}"] == instant, name
    # Sent again in another offset, the same instant is the same content: no conflict.
    again = [
        {**e, "timestamp": sent["z"][1].astimezone(timezone.get_fixed_timezone(-120)).isoformat()}
        for e in body[:4]
    ]
    retry = events_ingest(source_id=source.id, body=json.dumps(again).encode(), cloudevents=None)
    assert (retry.accepted, retry.duplicates, retry.conflicts) == (0, 4, [])


@pytest.mark.parametrize("size", [2, COPY_THRESHOLD + 4], ids=["values", "copy"])
def test_a_connection_that_died_since_the_last_request_is_replaced(
    transactional_db: None, size: int
) -> None:
    """A write is a request's first query when its key was recalled (no Django health
    check runs before it): if the kept connection died meanwhile (a database
    restart), it is replaced and the events stored, not refused."""
    source = Source.objects.create(name="reconnect")
    assert events_store(source_id=source.id, events=_plain("a", 1), received_at=timezone.now())
    pid = connection.connection.info.backend_pid
    with psycopg.connect(connection.connection.info.dsn, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    result = events_store(source_id=source.id, events=_plain("b", size), received_at=timezone.now())
    assert (result.accepted, result.duplicates) == (size, 0)
    assert connection.connection.info.backend_pid != pid
    assert Event.objects.filter(source=source).count() == 1 + size
