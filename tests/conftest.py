"""Shared fixtures. Tests run against whatever DATABASE_URL names (PostgreSQL in CI);
tests that need PostgreSQL are marked `postgres` and skipped, with the reason, on SQLite."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.db import connection

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


@pytest.fixture(scope="session")
def live_server() -> Iterator[Any]:
    """pytest-django's live server, serving the application gunicorn serves
    (inferbill.wsgi.application, with its direct route for POST /v1/events) rather
    than Django's bare handler, so HTTP tests go the way production requests go."""
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
