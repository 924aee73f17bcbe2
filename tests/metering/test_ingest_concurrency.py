"""Concurrent ingestion on PostgreSQL: overlapping batches from several threads at once,
over real HTTP, each event stored exactly once."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.db import connection

from metering.models import Event, EventKey
from tests.metering.helpers import event, post, totals

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

Api = Callable[..., httpx.Client]
THREADS = 8
IDS = [f"shared-{i:03d}" for i in range(150)]


def content(event_id: str, version: int = 0) -> dict[str, Any]:
    """Deterministic fields for an id (and a version, for conflicting sends)."""
    n = int(event_id.rsplit("-", 1)[1])
    return {
        "input_tokens": 100 + n + version * 1000,
        "cache_read_input_tokens": n % 7,
        "output_tokens": 10 + n % 13,
        "reasoning_output_tokens": n % 5,
        "gpu_seconds": f"0.{n:06d}",
        "hardware": "h100" if n % 2 else "a100",
    }


def plan(seed: int) -> list[list[str]]:
    """A thread's requests: two COPY-sized batches (>= 16 events), three small ones
    (the VALUES path, one of a single event), drawn from the shared pool."""
    rng = random.Random(seed)
    sizes = [40, 25, 5, 9, 1]
    return [rng.sample(IDS, size) for size in sizes]


def run_threads(work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def target(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[t] = work(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(not thread.is_alive() for thread in threads)
    return results


def assert_each_key_stored_once() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT source_id, ce_source, event_id, count(*) FROM metering_event "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1"
        )
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT count(*) FROM metering_event e "
            "LEFT JOIN metering_eventkey k ON k.key_hash = e.key_hash WHERE k.key_hash IS NULL"
        )
        assert cursor.fetchone() == (0,)
    assert Event.objects.count() == EventKey.objects.count()


def test_overlapping_identical_batches_store_each_event_once(api: Api) -> None:
    clients = [api() for _ in range(THREADS)]
    plans = [plan(seed) for seed in range(THREADS)]

    def work(t: int) -> list[dict[str, Any]]:
        answers = []
        for ids in plans[t]:
            response = post(clients[t], [event(i, **content(i)) for i in ids])
            assert response.status_code == 202, response.text
            answers.append(response.json())
        return answers

    answers = [a for per_thread in run_threads(work) for a in per_thread]
    sent = [i for p in plans for ids in p for i in ids]
    distinct = set(sent)
    assert len(distinct) < len(sent)  # the batches did overlap
    assert sum(a["accepted"] for a in answers) == len(distinct)
    assert sum(a["accepted"] + a["duplicates"] for a in answers) == len(sent)
    assert all(a["rejected"] == [] and "conflicts" not in a for a in answers)

    assert_each_key_stored_once()
    assert set(Event.objects.values_list("event_id", flat=True)) == distinct
    for row in Event.objects.all():
        expected = content(row.event_id)
        assert (row.input_tokens, row.output_tokens, row.hardware) == (
            expected["input_tokens"],
            expected["output_tokens"],
            expected["hardware"],
        )
    got = totals(clients[0], "acme", start="2000-01-01T00:00:00Z", end="2100-01-01T00:00:00Z")
    assert got["requests"] == len(distinct)
    assert got["input_tokens"] == sum(content(i)["input_tokens"] for i in distinct)
    assert got["output_tokens"] == sum(content(i)["output_tokens"] for i in distinct)
    gpu = sum((Decimal(content(i)["gpu_seconds"]) for i in distinct), Decimal(0))
    assert got["gpu_seconds"] == f"{gpu:.6f}"


def test_overlapping_conflicting_batches_first_version_stands(api: Api) -> None:
    clients = [api() for _ in range(THREADS)]
    plans = [plan(100 + seed) for seed in range(THREADS)]

    def work(t: int) -> list[tuple[list[str], dict[str, Any]]]:
        answers = []
        for ids in plans[t]:
            # Each thread sends its own version of the shared ids.
            response = post(clients[t], [event(i, **content(i, version=t)) for i in ids])
            assert response.status_code == 202, response.text
            answers.append((ids, response.json()))
        return answers

    results = run_threads(work)
    sent = {i for p in plans for ids in p for i in ids}
    assert sum(a["accepted"] for per in results for _, a in per) == len(sent)
    assert_each_key_stored_once()

    # The version stored is one thread's, whole; every other thread was told of the
    # conflict in each request that carried the id, and the winner never was.
    winner = {
        row.event_id: (row.input_tokens - content(row.event_id)["input_tokens"]) // 1000
        for row in Event.objects.all()
    }
    assert set(winner) == sent
    for row in Event.objects.all():
        assert (
            row.input_tokens == content(row.event_id, version=winner[row.event_id])["input_tokens"]
        )
    for t, per in enumerate(results):
        for ids, answer in per:
            conflicts = Counter(answer.get("conflicts", []))
            assert set(conflicts) == {i for i in ids if winner[i] != t}, (t, ids, answer)


def test_cloud_events_from_two_sources_concurrently(api: Api, make_key: Callable[..., str]) -> None:
    keys = [make_key(source="gateway-a"), make_key(source="gateway-b")]
    clients = [api(key=keys[t % 2]) for t in range(THREADS)]
    plans = [plan(200 + seed) for seed in range(THREADS)]

    def cloud(event_id: str, ce_source: str) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": event_id,
            "source": ce_source,
            "type": "inference",
            "subject": "acme",
            "data": {"model": "gpt-4o", **content(event_id)},
        }

    def work(t: int) -> list[dict[str, Any]]:
        answers = []
        for ids in plans[t]:
            # Two CloudEvents sources reuse the same ids; either of our API sources relays.
            body = [cloud(i, "//eu") for i in ids] + [cloud(i, "//us") for i in ids[::2]]
            response = post(clients[t], body, content_type="application/cloudevents-batch+json")
            assert response.status_code == 202, response.text
            answers.append(response.json())
        return answers

    answers = [a for per in run_threads(work) for a in per]
    eu = {i for p in plans for ids in p for i in ids}
    us = {i for p in plans for ids in p for i in ids[::2]}
    assert sum(a["accepted"] for a in answers) == len(eu) + len(us)
    assert all("conflicts" not in a for a in answers)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ce_source, event_id, count(*) FROM metering_event GROUP BY 1, 2 "
            "HAVING count(*) > 1"
        )
        assert cursor.fetchall() == []
    stored = set(Event.objects.values_list("ce_source", "event_id"))
    assert stored == {("//eu", i) for i in eu} | {("//us", i) for i in us}
