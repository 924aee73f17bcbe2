"""inferbill.wsgi: the body of POST /v1/events read whole from gunicorn's own classes."""

from __future__ import annotations

import socket
import threading

from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader

from inferbill.wsgi import _body_at_once


def _gunicorn_body(payload: bytes, then: bytes) -> tuple[Body, SocketUnreader, socket.socket]:
    sender, receiver = socket.socketpair()
    threading.Thread(target=sender.sendall, args=(payload + then,)).start()
    unreader = SocketUnreader(receiver)
    return Body(LengthReader(unreader, len(payload))), unreader, sender


def test_a_large_body_is_read_whole_and_the_connection_stays_in_step() -> None:
    payload = bytes(range(256)) * 1200  # 307,200 bytes: dozens of socket chunks
    following = b"POST /v1/events HTTP/1.1\r\n"  # the next request on the connection
    body, unreader, sender = _gunicorn_body(payload, following)
    stream = _body_at_once(body)
    assert stream is not body
    assert stream.read(len(payload)) == payload
    assert stream.read(1024) == b""  # the body is used up…
    assert body.read() == b""  # …as gunicorn itself sees it when it drains the rest
    assert unreader.read()[: len(following)] == following  # and the next request is intact
    sender.close()


def test_a_part_read_first_is_not_lost() -> None:
    payload = b"x" * 50_000
    body, _, sender = _gunicorn_body(payload, b"")
    stream = _body_at_once(body)
    assert stream.readline(10) == b"x" * 10  # gunicorn buffers what readline read past
    assert stream.read(len(payload)) == payload[10:]
    sender.close()


def test_other_streams_are_left_alone() -> None:
    import io

    stream = io.BytesIO(b"{}")
    assert _body_at_once(stream) is stream
