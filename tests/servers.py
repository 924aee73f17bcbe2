"""Real server processes for tests: gunicorn started as production starts it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn_serving(
    arguments: list[str], *, port: int, env: dict[str, str]
) -> Iterator[tuple[str, httpx.Response, subprocess.Popen[bytes]]]:
    """`python -m gunicorn <arguments>` bound to `port`: yields its URL, its first answer
    (GET /v1/schema, once it answers) and the process; stops it afterwards."""
    process = subprocess.Popen(  # noqa: S603 (fixed argv)
        [sys.executable, "-m", "gunicorn", *arguments],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"{url}/v1/schema", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr = process.stderr.read().decode() if process.stderr else ""
                    pytest.fail(f"gunicorn did not start: {stderr[-2000:]}")
                time.sleep(0.2)
        yield url, ready, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
