"""Hourly usage rollups: exact sums, incremental, idempotent, late events, concurrent folds."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from metering.models import Event, IngestBatch, UsageRollup
from metering.normalize import NormalizedEvent
from metering.rollup import FoldResult, usage_rollup_fold
from metering.selectors import usage_rows
from metering.tasks import usage_rollup_task
from tests import factories
from tests.factories import at, ev

D = Decimal


def store(*events: NormalizedEvent) -> int:
    result = factories.store(*events, source="rollup-tests", received_at=at("2026-05-01"))
    assert result.batch_id is not None
    return result.batch_id


def buckets() -> dict[tuple[str, str, str, str, str], tuple[Any, ...]]:
    """(customer, hour, model, hardware, provider) -> (requests, input, cache read,
    cache write, output, reasoning, gpu_seconds)."""
    return {
        (
            r.customer,
            r.hour.astimezone(UTC).strftime("%m-%d %H"),
            r.model,
            r.hardware,
            r.provider,
        ): (
            r.requests,
            r.input_tokens,
            r.cache_read_input_tokens,
            r.cache_write_input_tokens,
            r.output_tokens,
            r.reasoning_output_tokens,
            r.gpu_seconds,
        )
        for r in UsageRollup.objects.all()
    }


@pytest.mark.django_db
def test_fold_sums_events_per_customer_hour_model_hardware_provider() -> None:
    store(
        ev(
            "acme",
            "2026-04-10 09:00:00",
            input_tokens=100,
            cache_read_input_tokens=40,
            output_tokens=10,
            reasoning_output_tokens=3,
            hardware="h100",
            gpu_seconds="1.234567",
        ),
        ev(
            "acme",
            "2026-04-10 09:59:59.999999",
            input_tokens=200,
            cache_write_input_tokens=7,
            output_tokens=20,
            hardware="h100",
            gpu_seconds="2.000001",
        ),
        ev("acme", "2026-04-10 10:00:00", input_tokens=400, hardware="h100"),
        ev("acme", "2026-04-10 09:30", "llama", input_tokens=800, hardware="h100"),
        ev("acme", "2026-04-10 09:30", input_tokens=1, hardware="a100"),
        ev("acme", "2026-04-10 09:30", input_tokens=2, hardware="h100", provider="azure"),
        ev("beta", "2026-04-10 09:30", input_tokens=3, hardware="h100"),
    )
    assert usage_rollup_fold() == FoldResult(batches=1, rounds=1)
    assert buckets() == {
        ("acme", "04-10 09", "gpt-4o", "h100", ""): (2, 300, 40, 7, 30, 3, D("3.234568")),
        ("acme", "04-10 10", "gpt-4o", "h100", ""): (1, 400, 0, 0, 0, 0, D(0)),
        ("acme", "04-10 09", "llama", "h100", ""): (1, 800, 0, 0, 0, 0, D(0)),
        ("acme", "04-10 09", "gpt-4o", "a100", ""): (1, 1, 0, 0, 0, 0, D(0)),
        ("acme", "04-10 09", "gpt-4o", "h100", "azure"): (1, 2, 0, 0, 0, 0, D(0)),
        ("beta", "04-10 09", "gpt-4o", "h100", ""): (1, 3, 0, 0, 0, 0, D(0)),
    }
    assert not IngestBatch.objects.filter(folded_at=None).exists()


@pytest.mark.django_db
def test_folding_twice_changes_nothing() -> None:
    store(ev("acme", "2026-04-10 09:00", output_tokens=10), ev("acme", "2026-04-10 11:00"))
    store(ev("acme", "2026-04-10 09:10", output_tokens=5))
    assert usage_rollup_fold().batches == 2
    first = buckets()
    assert first[("acme", "04-10 09", "gpt-4o", "", "")][:5] == (2, 0, 0, 0, 15)
    assert usage_rollup_fold() == FoldResult(batches=0, rounds=0)
    assert usage_rollup_task() == 0  # the Celery task runs the same fold
    assert buckets() == first


@pytest.mark.django_db
def test_fold_is_incremental_folded_batches_are_never_read_again() -> None:
    store(ev("acme", "2026-04-10 09:00", output_tokens=10))
    usage_rollup_fold()
    # Change an already folded event behind the fold's back: a rescan would see it.
    Event.objects.filter(customer="acme").update(output_tokens=999)
    store(ev("acme", "2026-04-10 09:30", output_tokens=5))
    assert usage_rollup_fold().batches == 1
    assert buckets()[("acme", "04-10 09", "gpt-4o", "", "")][:5] == (2, 0, 0, 0, 15)


@pytest.mark.django_db
def test_late_events_are_added_to_hours_folded_before() -> None:
    store(ev("acme", "2026-04-10 09:00", output_tokens=10), ev("acme", "2026-04-12 18:00"))
    usage_rollup_fold()
    store(
        ev("acme", "2026-04-10 09:59", output_tokens=7),  # an old, already folded hour
        ev("acme", "2026-03-02 01:00", output_tokens=1),  # a new hour, a month back
    )
    assert usage_rollup_fold().batches == 1
    rows = buckets()
    assert rows[("acme", "04-10 09", "gpt-4o", "", "")][:5] == (2, 0, 0, 0, 17)
    assert rows[("acme", "03-02 01", "gpt-4o", "", "")][:5] == (1, 0, 0, 0, 1)
    assert len(rows) == 3


@pytest.mark.django_db
def test_fold_works_in_rounds_of_batches() -> None:
    for i in range(5):
        store(ev("acme", f"2026-04-10 0{i}:00", output_tokens=i))
    assert usage_rollup_fold(batches_per_round=2) == FoldResult(batches=5, rounds=3)
    assert sum(r[4] for r in buckets().values()) == 10


@pytest.mark.django_db
def test_rollup_command() -> None:
    store(ev("acme", "2026-04-10 09:00"))
    store(ev("acme", "2026-04-10 10:00"))
    out = StringIO()
    call_command("rollup", stdout=out)
    assert out.getvalue().strip() == "Folded 2 ingest batches in 1 rounds."
    assert UsageRollup.objects.count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_folds_while_ingesting_count_nothing_twice() -> None:
    """Four folders race each other and a writer; every event is counted exactly once."""
    start = at("2026-04-10 00:00")
    expected_output = 0
    for b in range(40):
        events = [
            ev(
                f"c{(b + i) % 3}",
                start + timedelta(minutes=17 * (b + i)),
                output_tokens=b * 100 + i,
            )
            for i in range(5)
        ]
        expected_output += sum(e.output_tokens for e in events)
        store(*events)
    late = [
        [ev("c0", start + timedelta(hours=h, minutes=b), output_tokens=1) for h in range(4)]
        for b in range(20)
    ]
    expected_output += 80
    barrier = threading.Barrier(5)
    folded: list[int] = []
    errors: list[BaseException] = []

    def folder() -> None:
        try:
            barrier.wait()
            for _ in range(6):
                folded.append(usage_rollup_fold(batches_per_round=3).batches)
        except BaseException as exc:  # reported to the test
            errors.append(exc)
        finally:
            connection.close()

    def writer() -> None:
        try:
            barrier.wait()
            for events in late:
                store(*events)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=folder) for _ in range(4)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    folded.append(usage_rollup_fold().batches)  # whatever the writer added last
    assert sum(folded) == 60  # each batch folded by exactly one folder
    assert not IngestBatch.objects.filter(folded_at=None).exists()
    assert sum(r[4] for r in buckets().values()) == expected_output
    assert sum(r[0] for r in buckets().values()) == 40 * 5 + 80
    # The rollups agree with the raw events per bucket, too.
    per_hour = usage_rows(
        customers=["c0", "c1", "c2"],
        start=start,
        end=start + timedelta(days=3),
        group=("customer",),
    )
    raw = {
        c: sum(Event.objects.filter(customer=c).values_list("output_tokens", flat=True))
        for c in ("c0", "c1", "c2")
    }
    assert {row["customer"]: row["output_tokens"] for row in per_hour} == raw
