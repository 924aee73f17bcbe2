"""Shared fixtures. Tests run against whatever DATABASE_URL names (PostgreSQL in CI);
tests that need PostgreSQL are marked `postgres` and skipped, with the reason, on SQLite."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test.utils import modify_settings

from metering.services import api_key_create


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if connection.vendor == "postgresql":
        return
    if os.environ.get("INFERBILL_REQUIRE_SERVICES"):
        raise pytest.UsageError(
            "INFERBILL_REQUIRE_SERVICES is set but DATABASE_URL is not PostgreSQL"
        )
    skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://…")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def celery_eager() -> Iterator[None]:
    """Tasks run in-process in tests, even where CELERY_BROKER_URL is set (as in CI) and
    settings say otherwise. Tests of a real worker and broker send through an app of their
    own (see tests/billing/test_exactly_once_celery.py)."""
    from inferbill.celery import app

    before = app.conf.task_always_eager
    app.conf.update(CELERY_TASK_ALWAYS_EAGER=True)
    yield
    app.conf.update(CELERY_TASK_ALWAYS_EAGER=before)


@pytest.fixture
def make_key(db: None) -> Callable[..., str]:
    """Create an API key and return the raw key string."""

    def make(source: str = "test-product", scopes: tuple[str, ...] = ("ingest", "read")) -> str:
        _, raw = api_key_create(source_name=source, scopes=scopes)
        return raw

    return make


class AsgiLiveServer:
    """The ASGI application (inferbill.asgi, as deploy/gunicorn.conf.py serves it)
    under uvicorn with uvloop and httptools, in a thread of the test process."""

    def __init__(self) -> None:
        import uvicorn

        from inferbill.asgi import InferbillASGIHandler

        # An application of its own: stop() closes its database sessions, so the test
        # database can be dropped at the end.
        self.application = application = InferbillASGIHandler()

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://localhost:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            application, lifespan="off", log_level="warning", loop="uvloop", http="httptools"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        # What pytest-django's live server does while a test uses it.
        self._live_server_modified_settings = modify_settings(ALLOWED_HOSTS={"append": "localhost"})
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.application.close()


@pytest.fixture(scope="session")
def live_server(django_db_setup: None) -> Iterator[Any]:
    """A live server serving what production serves, so HTTP tests go the way
    production requests go: on PostgreSQL the ASGI application under uvicorn (group
    commit and all); on SQLite, whose in-memory test database only pytest-django's
    own server thread can share, the WSGI application (inferbill.wsgi, with its direct
    route for POST /v1/events). It depends on django_db_setup so that it stops, and
    closes its database sessions, before the test database is dropped."""
    if connection.vendor == "postgresql":
        server: Any = AsgiLiveServer()
        yield server
        server.stop()
        return
    from pytest_django.live_server_helper import LiveServer

    from inferbill.wsgi import application

    server = LiveServer("localhost", start=False)
    server.thread.static_handler = lambda _handler: application
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(live_server: Any, make_key: Callable[..., str]) -> Iterator[Callable[..., httpx.Client]]:
    """Real HTTP clients against a live server: `api()` uses a fresh ingest+read key,
    `api(key=raw)` a given one, `api(key=None)` none."""
    clients: list[httpx.Client] = []
    default = object()

    def client(key: Any = default) -> httpx.Client:
        raw = make_key() if key is default else key
        headers = {"Authorization": f"Bearer {raw}"} if raw else {}
        c = httpx.Client(base_url=live_server.url, headers=headers, timeout=30)
        clients.append(c)
        return c

    yield client
    for c in clients:
        c.close()
