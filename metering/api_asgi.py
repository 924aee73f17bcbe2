"""POST /v1/events on the ASGI server (inferbill.asgi): the ingest hot path.

The common request (a known key with the ingest scope, native JSON events, some of
them valid) is answered here on the event loop: validated in place, small writes
group-committed with other requests' (metering.group_commit), batches stored by
metering.ingest in a database thread. Every other request (an unknown key, a
refusal, CloudEvents, a body over the limit, a key whose last_used_at is due) is
handed whole to the synchronous view, metering.api.events_post, in a database
thread, which answers it exactly as the WSGI path does. So the rules live in one
place, and this module only decides which requests it can answer itself.

The database threads are a small pool of their own: each keeps its Django
connection between requests (CONN_MAX_AGE), as a gunicorn thread does.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import psycopg
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from inferbill.api import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS
from inferbill.dbthreads import DatabaseThreads
from metering.api import events_post
from metering.auth import api_principal_forget, api_principal_recall
from metering.group_commit import GroupJob, GroupWriter
from metering.ingest import (
    COPY_THRESHOLD,
    IngestResult,
    KeyInactive,
    events_rows,
    events_store,
    result_add,
)
from metering.models import SCOPE_INGEST
from metering.services import IngestError, events_parse, ingest_outcome

logger = logging.getLogger("django.request")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_JSON = (b"content-type", b"application/json")


class _Unavailable(Exception):
    """The database could not be reached; nothing was stored."""


class EventsEndpoint:
    """An ASGI callable for POST /v1/events; one per process (it holds the loop's
    GroupWriter and the database threads)."""

    def __init__(self, *, db_threads: int = 4, group_connections: int = 1) -> None:
        self._threads = DatabaseThreads(db_threads, name="inferbill-db")
        self._writer = GroupWriter(connections=group_connections)
        # Read once: on the event loop, each task would get a database wrapper of its own.
        self._postgres = connection.vendor == "postgresql"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, headers, body = await self._answer(scope, receive)
        except _Unavailable:
            logger.error("Service Unavailable (database): %s", scope.get("path"))
            status, headers = 503, [_JSON, (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
            body = _encoder.encode(DATABASE_UNAVAILABLE)
        except Exception:
            logger.exception("Internal Server Error: %s", scope.get("path"))
            status, headers, body = 500, [_JSON], b'{"detail": "Internal server error."}'
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, list[Any], bytes]:
        authorization = content_type = b""
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else -1
        max_bytes: int = settings.INFERBILL_MAX_BODY_BYTES
        body = b""
        if declared is None or 0 <= declared <= max_bytes:
            body = await _read_body(receive, limit=max_bytes)
        principal = None
        scheme, _, raw_key = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and raw_key.strip():
            principal = api_principal_recall(raw_key.strip(), stamp=False)
        fast = (
            principal is not None
            and SCOPE_INGEST in principal.scopes
            and content_type.split(b";")[0].strip().lower() == b"application/json"
            and declared is not None
            and 0 <= declared <= max_bytes
            and len(body) <= max_bytes
        )
        if fast:
            assert principal is not None
            try:
                parsed = events_parse(body=body, cloudevents=None)
            except IngestError:
                parsed = None  # refused: the view confirms the key first
            if parsed is not None and parsed.valid:
                try:
                    stored = await self._store(
                        source_id=principal.source_id,
                        parsed_valid=parsed.valid,
                        received_at=parsed.received_at,
                        key_id=principal.key_id,
                    )
                except KeyInactive:
                    api_principal_forget(principal.key_id)
                else:
                    outcome = ingest_outcome(parsed=parsed, stored=stored)
                    return outcome.status, [_JSON], _encoder.encode(outcome.body())
        return await self._view(scope, body)

    async def _store(
        self, *, source_id: int, parsed_valid: list[Any], received_at: Any, key_id: int
    ) -> IngestResult:
        """Store valid events, confirming the key in the write (KeyInactive if not)."""

        def store() -> IngestResult:
            return events_store(
                source_id=source_id,
                events=parsed_valid,
                received_at=received_at,
                confirm_key_id=key_id,
            )

        if not self._postgres or len(parsed_valid) >= COPY_THRESHOLD:
            return await self._in_thread(store)
        result = IngestResult()
        rows = events_rows(parsed_valid, source_id=source_id, result=result)
        job = GroupJob(
            source_id=source_id, rows=rows, received_at=received_at, confirm_key_id=key_id
        )
        try:
            outcome = await self._writer.write(job)
        except psycopg.OperationalError as exc:
            raise _Unavailable from exc
        except psycopg.Error:
            # Failed alone, on a live connection: a month without its partition yet.
            # metering.ingest knows what to do with that; nothing was stored.
            return await self._in_thread(store)
        if outcome.batch_id is None:
            raise KeyInactive
        result_add(
            result,
            rows=rows,
            batch_id=outcome.batch_id,
            accepted=outcome.accepted,
            conflicts=outcome.conflicts,
        )
        return result

    async def _view(self, scope: Scope, body: bytes) -> tuple[int, list[Any], bytes]:
        """The request answered by the synchronous view, in a database thread."""

        def run() -> tuple[int, list[Any], bytes]:
            response = events_post(ASGIRequest(scope, io.BytesIO(body)))
            if response.status_code >= 500:  # client errors are answered, not logged
                logger.error("%s: %s", response.reason_phrase, scope.get("path"))
            headers = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in response.items()
                if name.lower() != "content-length"
            ]
            return response.status_code, headers, response.content

        return await self._in_thread(run)

    async def _in_thread(self, run: Callable[[], T]) -> T:
        def wrapped() -> T:
            # What request_started and request_finished do for a Django request.
            close_old_connections()
            try:
                return run()
            except (OperationalError, InterfaceError) as exc:
                raise _Unavailable from exc
            finally:
                close_old_connections()

        return await self._threads.run(wrapped)

    def close(self) -> None:
        """Stop the threads and close their database connections."""
        self._writer.close()
        self._threads.close()


async def _read_body(receive: Receive, *, limit: int) -> bytes:
    """The request body, or its first limit + 1 bytes when it is longer."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            break
    body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
    return body[: limit + 1]
