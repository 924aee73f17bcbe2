"""Database glue shared by the apps."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connection
from psycopg.adapt import Dumper
from psycopg.pq import Format

T = TypeVar("T")


def first_query(run: Callable[[], T]) -> T:
    """Run a request's first query on the connection kept from an earlier request,
    in place of Django's health check (a SELECT 1 of its own before the first query).

    A kept connection can have died with the server since (a database restart): if
    `run` fails on a broken connection outside a transaction, it is run once more on
    a fresh one, so `run` must be safe to repeat. A failure on a live connection (a
    deadlock, a constraint) is not retried here. The connection counts as checked
    for this request, so that Django does not check it again (it would, for one,
    when `run` opens a transaction)."""
    for attempt in (0, 1):
        kept = None
        try:
            with connection.wrap_database_errors:
                connection.ensure_connection()
                kept = connection.connection
                connection.health_check_done = True
                return run()
        except (OperationalError, InterfaceError):
            # Broken: closed, or dropped already (a transaction that `run` opened and
            # could not roll back drops its connection, and may have opened a new one).
            broken = kept is None or kept.closed or connection.connection is not kept
            if attempt or connection.in_atomic_block or not broken:
                raise
            connection.close()
    raise AssertionError("unreachable: the loop returns or raises")


class UuidArray(bytes):
    """A uuid[] in PostgreSQL's binary array format, sent as a query parameter as it
    is: the server reads 16 bytes per element where the text form (32 hex digits and
    a comma each) costs it a parse per element, and building it costs one join."""

    # The header: one dimension, no NULLs, element type uuid; then the dimension's
    # length and lower bound (1).
    _HEADER = struct.Struct("!iiiii")
    _ELEMENT_LENGTH = (16).to_bytes(4, "big")

    @classmethod
    def of(cls, uuids: Sequence[bytes]) -> UuidArray:
        """The array of `uuids`, each 16 bytes."""
        if set(map(len, uuids)) - {16}:
            raise ValueError("each uuid must be 16 bytes")
        if not uuids:
            return cls(cls._HEADER.pack(0, 0, UUID_OID, 0, 0)[:12])  # no dimension
        length = cls._ELEMENT_LENGTH
        return cls(cls._HEADER.pack(1, 0, UUID_OID, len(uuids), 1) + length + length.join(uuids))


UUID_OID = 2950
UUID_ARRAY_OID = 2951


class _UuidArrayDumper(Dumper):
    format = Format.BINARY
    oid = UUID_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return obj  # type: ignore[no-any-return]


def uuid_array_register(*, connection: Any, **_: Any) -> None:
    """Teach a new Django connection to send UuidArray (connection_created receiver,
    metering.apps). Per connection, not on psycopg's global map: a connection copies
    the global map when it is made, so one made before this module was imported
    would send the array as bytea."""
    if connection.vendor == "postgresql":
        connection.connection.adapters.register_dumper(UuidArray, _UuidArrayDumper)
