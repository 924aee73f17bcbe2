"""The ASGI application gunicorn serves in production (deploy/gunicorn.conf.py, with
uvicorn's worker class).

Django's ASGI handler, except that POST /v1/events, the ingest hot path, goes to
metering.api_asgi: answered on the event loop, small writes group-committed. The
Host header is still checked against ALLOWED_HOSTS (a bad one takes Django's way
and gets its 400).

Why ASGI: with the same load generator, a do-nothing application answers about
7,200 requests/s from gunicorn's threaded worker on the 2-core benchmark machine
and about 21,900 from uvicorn's worker (httptools parser, uvloop): the threaded
worker's pure-Python HTTP handling alone cost more per single-event request than
storing the event does.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler
from django.http.request import split_domain_port, validate_host
from django.urls import reverse

from inferbill.gctune import gc_tune

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferbill.settings")


class InferbillASGIHandler:
    def __init__(self) -> None:
        from django.conf import settings

        from metering.api_asgi import EventsEndpoint

        self._django = ASGIHandler()
        self._events = EventsEndpoint(
            db_threads=settings.INFERBILL_ASGI_DB_THREADS,
            group_connections=settings.INFERBILL_GROUP_COMMIT_CONNECTIONS,
        )
        self._events_path = reverse("events")
        # Host header -> allowed, as Django's validate_host answered it for the
        # ALLOWED_HOSTS object it was asked with (tests swap the setting).
        self._hosts_seen: dict[bytes, bool] = {}
        self._hosts_seen_for: object = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == self._events_path
            and self._host_allowed(scope)
        ):
            await self._events(scope, receive, send)
            return
        await self._django(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        """Startup needs nothing; shutdown closes the ingest path's database sessions."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        self._events.close()

    def _host_allowed(self, scope: dict[str, Any]) -> bool:
        from django.conf import settings

        allowed_hosts = settings.ALLOWED_HOSTS
        if allowed_hosts is not self._hosts_seen_for or len(self._hosts_seen) >= 1000:
            self._hosts_seen, self._hosts_seen_for = {}, allowed_hosts
        for name, value in scope["headers"]:
            if name == b"host":
                allowed = self._hosts_seen.get(value)
                if allowed is None:
                    hosts = list(allowed_hosts)
                    if settings.DEBUG and not hosts:  # Django's rule for DEBUG
                        hosts = [".localhost", "127.0.0.1", "[::1]"]
                    domain, _port = split_domain_port(value.decode("latin-1"))
                    allowed = bool(domain) and validate_host(domain, hosts)
                    self._hosts_seen[value] = allowed
                return allowed
        return False  # no Host header: Django's way decides


def get_application() -> InferbillASGIHandler:
    django.setup(set_prefix=False)
    handler = InferbillASGIHandler()
    gc_tune()
    return handler


application = get_application()
