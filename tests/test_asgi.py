"""The production server: gunicorn with deploy/gunicorn.conf.py (uvicorn's worker,
inferbill.asgi), started as a real process against the test database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from django.db import connection

from metering.models import Event, IngestBatch
from tests.metering.helpers import event
from tests.servers import ROOT, free_port, gunicorn_serving

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

APPLICATION_NAME = "inferbill-production-server-test"


def _server_sessions() -> int:
    """The database sessions the server process holds (its connections carry
    APPLICATION_NAME; the test's own live server may hold others)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [APPLICATION_NAME],
        )
        (count,) = cursor.fetchone()
    return int(count)


@pytest.fixture
def production_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """gunicorn as deployed (two workers, preloaded app), on the test database."""
    settings = connection.settings_dict
    database_url = (
        f"postgres://{settings['USER'] or 'postgres'}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}?application_name={APPLICATION_NAME}"
    )
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "CELERY_BROKER_URL": "",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    arguments = ["-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with gunicorn_serving(arguments, port=port, env=env) as (url, _, process):
        yield url, process


def test_production_server_stores_each_kind_of_request_once_and_stops_cleanly(
    production_server: tuple[str, subprocess.Popen[bytes]], make_key: Callable[..., str]
) -> None:
    url, process = production_server
    headers = {"Authorization": f"Bearer {make_key()}", "Content-Type": "application/json"}
    batch = [event(f"b{i}", input_tokens=i) for i in range(50)]  # the COPY path
    cloud_event = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "/svc",
        "type": "inference",
        "subject": "acme",
        "data": {"model": "gpt-4o", "input_tokens": 7},
    }
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        # The first request resolves the key in a database thread; later ones are
        # recalled on the event loop and single events are group-committed.
        answers = [client.post("/v1/events", content=json.dumps(event(f"s{i}"))) for i in range(5)]
        answers.append(client.post("/v1/events", content=json.dumps(batch)))
        answers.append(client.post("/v1/events", content=json.dumps(batch)))  # a retry
        answers.append(
            client.post(
                "/v1/events",
                content=json.dumps(cloud_event),
                headers={"Content-Type": "application/cloudevents+json"},
            )
        )
        refused = client.post(
            "/v1/events", content=b"[]", headers={"Authorization": "Bearer ib_0_nope"}
        )
        usage = client.get("/v1/customers/acme/usage")
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    assert [a.json()["accepted"] for a in answers] == [1, 1, 1, 1, 1, 50, 0, 1]
    assert answers[6].json()["duplicates"] == 50
    assert refused.status_code == 401
    assert usage.status_code == 200
    assert usage.json()["totals"]["requests"] == 56
    assert usage.json()["totals"]["input_tokens"] == 5 * 10 + sum(range(50)) + 7
    assert Event.objects.count() == 56
    # One batch row per request that wrote (the all-duplicate retry's holds no event).
    assert IngestBatch.objects.count() == 8

    before_stop = _server_sessions()
    assert before_stop > 0  # the workers hold database sessions while they serve
    process.send_signal(signal.SIGTERM)
    # A graceful stop (each worker's lifespan shutdown joins its writer and database
    # threads): in time, with gunicorn's clean exit status, and no session left behind.
    assert process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while _server_sessions() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _server_sessions() == 0
