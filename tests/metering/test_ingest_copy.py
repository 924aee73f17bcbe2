"""The PostgreSQL write path of metering.ingest: the COPY text it builds itself must
carry every character a sender may send, and its per-connection staging table must
survive being dropped behind its back."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from metering import ingest
from metering.ingest import COPY_THRESHOLD, events_store
from metering.models import Event, EventKey, Source
from metering.normalize import NormalizedEvent

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


def test_staging_table_made_again_when_it_is_gone(transactional_db: None) -> None:
    source = Source.objects.create(name="staging")
    first = events_store(source_id=source.id, events=_events("a", 20), received_at=timezone.now())
    assert first.accepted == 20
    assert connection.connection in ingest._staging_ready
    with connection.cursor() as cursor:
        cursor.execute("DISCARD TEMP")  # what a pooler handing out another session looks like
    second = events_store(source_id=source.id, events=_events("b", 20), received_at=timezone.now())
    assert (second.accepted, second.duplicates) == (20, 0)
    assert Event.objects.filter(source=source).count() == 40
