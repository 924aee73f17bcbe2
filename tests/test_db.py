"""inferbill.db: the binary uuid[] parameter the ingest claim sends."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from django.db import connection, connections

from inferbill.db import UuidArray

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _round_trip(array: UuidArray) -> tuple[list[uuid.UUID], int]:
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        # Prepared, as the claim is: the parameter's type goes with the statement.
        cursor.execute(
            "SELECT %(a)s::uuid[], cardinality(%(a)s::uuid[])", {"a": array}, prepare=True
        )
        values, count = cursor.fetchone()
    return values, count


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_uuid_array_reaches_the_server_element_for_element(size: int) -> None:
    uuids = [uuid.uuid4() for _ in range(size)]
    # Bytes a text form would mangle: NUL, separators, quotes, braces.
    uuids[0] = uuid.UUID(bytes=b'\x00,{}"\\\t\n\r 012345')

    values, count = _round_trip(UuidArray.of([u.bytes for u in uuids]))

    assert count == size
    assert values == uuids


def test_empty_uuid_array_is_an_empty_array() -> None:
    values, count = _round_trip(UuidArray.of([]))

    assert values == []
    assert count == 0


def test_uuid_array_refuses_an_element_that_is_not_16_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        UuidArray.of([uuid.uuid4().bytes, b"short"])


def test_every_new_django_connection_can_send_a_uuid_array() -> None:
    # A connection made after start-up (a new thread's, a reconnect) gets the dumper
    # from the connection_created receiver, not from import order.
    fresh = connections.create_connection("default")
    try:
        fresh.ensure_connection()
        key = uuid.uuid4()
        with psycopg.Cursor(fresh.connection) as cursor:
            cursor.execute("SELECT (%(a)s::uuid[])[1]", {"a": UuidArray.of([key.bytes])})
            assert cursor.fetchone() == (key,)
    finally:
        fresh.close()
