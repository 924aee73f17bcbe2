"""Database glue shared by the apps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")


def first_query(run: Callable[[], T]) -> T:
    """Run a request's first query on the connection kept from an earlier request,
    in place of Django's health check (a SELECT 1 of its own before the first query).

    A kept connection can have died with the server since (a database restart): if
    `run` fails on a broken connection outside a transaction, it is run once more on
    a fresh one, so `run` must be safe to repeat. A failure on a live connection (a
    deadlock, a constraint) is not retried here. After a success the connection
    counts as checked for this request."""
    for attempt in (0, 1):
        try:
            with connection.wrap_database_errors:
                connection.ensure_connection()
                result = run()
            connection.health_check_done = True
            return result
        except (OperationalError, InterfaceError):
            broken = connection.connection is None or connection.connection.closed
            if attempt or connection.in_atomic_block or not broken:
                raise
            connection.close()
    raise AssertionError("unreachable: the loop returns or raises")
