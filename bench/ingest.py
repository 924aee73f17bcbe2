"""Ingest benchmark: gunicorn + PostgreSQL, measured end to end. Run by hand, never in CI.

    .venv/bin/python bench/ingest.py [--events N] [--clients C] [--single-requests N] ...

Uses DATABASE_URL when set (default postgres://postgres@127.0.0.1:5432/inferbill_bench);
creates that database if it is missing and migrates it, makes an API key with
`manage.py create_api_key`, starts gunicorn with deploy/gunicorn.conf.py on a free
127.0.0.1 port and measures, in one run:

  (a) batches of --batch-size new events over HTTP from --clients concurrent clients,
  (b) the same batches sent again (every event a duplicate),
  (c) single-event requests from --single-clients concurrent clients,
  (d) the raw ceiling: metering.ingest.events_store (COPY + set-based de-dup) called
      straight from Python on already-normalised events of the same kind, no HTTP.

(d) runs first, before gunicorn starts, so that HTTP phases never get a smaller table
than the ceiling they are compared with. Every request body is encoded before the
clock starts; each client is its own process with one keep-alive connection and a
fixed number of requests. A readable line per phase, then one JSON object as the last
line. At the end the stored rows are counted: each accepted event exactly once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import PYTHON, ROOT, database_ensure, database_url, manage

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/inferbill_bench"

# --- realistic events ----------------------------------------------------------------

# (model, provider, hardware, reasoning?, relative weight)
MODELS = [
    ("gpt-4o", "openai", "", False, 18),
    ("gpt-4o-mini", "openai", "", False, 22),
    ("o3-mini", "openai", "", True, 5),
    ("claude-sonnet-4-5", "anthropic", "", False, 14),
    ("claude-haiku-4-5", "anthropic", "", False, 10),
    ("gemini-2.5-pro", "google", "", True, 6),
    ("gemini-2.5-flash", "google", "", False, 9),
    ("llama-3.1-70b-instruct", "self-hosted", "H100-80GB", False, 8),
    ("qwen2.5-72b-instruct", "self-hosted", "A100-80GB", False, 5),
    ("mistral-small-24b", "self-hosted", "L40S", False, 3),
]
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1"]
ENDPOINTS = ["chat", "completions", "embeddings-rerank", "agent"]
# Mostly the canonical token fields, some provider usage objects and OTel attributes.
SHAPES = ["native"] * 85 + ["openai_chat"] * 5 + ["anthropic"] * 4 + ["gemini"] * 3 + ["otel"] * 3


class EventFactory:
    def __init__(self, *, seed: int, customers: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.customers = [f"org_{i:05d}" for i in range(customers)]
        # A few big customers, a long tail.
        self.customer_weights = [1.0 / (i + 1) ** 0.8 for i in range(customers)]
        self.model_weights = [m[4] for m in MODELS]

    def event(self, event_id: str) -> dict[str, Any]:
        rng = self.rng
        model, provider, hardware, reasoning, _ = rng.choices(MODELS, self.model_weights)[0]
        input_tokens = int(rng.lognormvariate(6.5, 1.2)) + 1
        cache_read = int(input_tokens * rng.choice((0, 0, 0.5, 0.8, 0.9)))
        cache_write = 0 if provider != "anthropic" or rng.random() < 0.7 else input_tokens // 10
        cache_write = min(cache_write, input_tokens - cache_read)
        output_tokens = int(rng.lognormvariate(5.2, 1.0)) + 1
        reasoning_tokens = int(output_tokens * rng.uniform(0.2, 0.8)) if reasoning else 0
        ts = self.now - timedelta(seconds=rng.uniform(0, 3 * 3600))
        event: dict[str, Any] = {
            "event_id": event_id,
            "customer": rng.choices(self.customers, self.customer_weights)[0],
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "model": model,
            "provider": provider,
            "latency_ms": int(rng.lognormvariate(6.3, 0.7)),
        }
        if hardware:
            event["hardware"] = hardware
            gpu = Decimal(rng.randint(1_000, 9_000_000)).scaleb(-6)
            # Senders use both forms; neither may pass through a binary float.
            event["gpu_seconds"] = gpu if rng.random() < 0.5 else str(gpu)
        if rng.random() < 0.6:
            event["properties"] = {
                "region": rng.choice(REGIONS),
                "endpoint": rng.choice(ENDPOINTS),
                "stream": rng.random() < 0.5,
            }
        shape = rng.choice(SHAPES)
        if shape == "openai_chat" and provider == "openai":
            event["usage"] = {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "prompt_tokens_details": {"cached_tokens": cache_read},
                "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            }
        elif shape == "anthropic" and provider == "anthropic":
            event["usage"] = {
                "input_tokens": input_tokens - cache_read - cache_write,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write,
                "output_tokens": output_tokens,
            }
        elif shape == "gemini" and provider == "google":
            event["usage"] = {
                "usageMetadata": {
                    "promptTokenCount": input_tokens,
                    "cachedContentTokenCount": cache_read,
                    "candidatesTokenCount": output_tokens - reasoning_tokens,
                    "thoughtsTokenCount": reasoning_tokens,
                }
            }
        elif shape == "otel":
            event["attributes"] = {
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.cache_read.input_tokens": cache_read,
                "gen_ai.usage.output_tokens": output_tokens,
            }
            del event["model"]
        else:
            event["input_tokens"] = input_tokens
            if cache_read:
                event["cache_read_input_tokens"] = cache_read
            if cache_write:
                event["cache_write_input_tokens"] = cache_write
            event["output_tokens"] = output_tokens
            if reasoning_tokens:
                event["reasoning_output_tokens"] = reasoning_tokens
        return event


def encode_json(value: Any) -> bytes:
    import msgspec

    return msgspec.json.Encoder(decimal_format="number").encode(value)


# --- the load generator: one process per client, raw sockets, keep-alive ----------------


def http_request(path: str, body: bytes, *, port: int, key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


class Closed(Exception):
    pass


def _recv_into(sock: socket.socket, buf: bytearray) -> None:
    """Append what the server sent next to `buf`; Closed if it closed the connection."""
    chunk = sock.recv(65536)
    if not chunk:
        raise Closed
    buf.extend(chunk)


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes, bool]:
    """(status, body, server keeps the connection) of one HTTP/1.1 response."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        _recv_into(sock, buf)
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buf) < length:
            _recv_into(sock, buf)
        body = bytes(buf[:length])
        del buf[:length]
        return status, body, keep
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                _recv_into(sock, buf)
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            del buf[: eol + 2]
            while len(buf) < size + 2:
                _recv_into(sock, buf)
            body += buf[:size]
            del buf[: size + 2]
            if size == 0:
                return status, bytes(body), keep
    # No length: the body runs to the end of the connection.
    body = bytearray(buf)
    buf.clear()
    while chunk := sock.recv(65536):
        body += chunk
    return status, bytes(body), False


def _connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    finished_at: float = 0.0


# Requests are built before the fork and inherited by the client processes, never pickled.
_REQUESTS: list[bytes] = []


def _client(
    indexes: range, port: int, timeout: float, barrier: Any, conn: Any
) -> None:  # pragma: no cover - runs in a child process
    result = ClientResult()
    sock = _connect(port, timeout)
    buf = bytearray()
    barrier.wait()
    for i in indexes:
        request = _REQUESTS[i]
        for attempt in range(2):
            try:
                started = time.perf_counter()
                sock.sendall(request)
                status, body, keep = _read_response(sock, buf)
                result.latencies.append(time.perf_counter() - started)
                break
            except (Closed, ConnectionError) as exc:
                # The server closed an idle keep-alive connection: reconnect once, resend.
                sock.close()
                sock, buf = _connect(port, timeout), bytearray()
                result.reconnects += 1
                if attempt:
                    result.errors.append(f"request {i}: {exc!r}")
                    status, body, keep = 0, b"", True
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status in (200, 202, 400) and body:
            answer = json.loads(body)
            result.accepted += answer.get("accepted", 0)
            result.duplicates += answer.get("duplicates", 0)
            result.rejected += len(answer.get("rejected", ()))
        elif len(result.errors) < 5:
            result.errors.append(f"status {status}: {body[:200]!r}")
        if not keep:
            sock.close()
            sock, buf = _connect(port, timeout), bytearray()
            result.reconnects += 1
    result.finished_at = time.perf_counter()
    sock.close()
    conn.send(result)
    conn.close()


@dataclass
class PhaseResult:
    requests: int
    events: int
    seconds: float
    latencies_ms: list[float]
    accepted: int
    duplicates: int
    rejected: int
    statuses: dict[int, int]
    reconnects: int
    errors: list[str]
    app_cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    # The share of all cores busy with anything (load generator, kernel, other work).
    machine_busy: float = 0.0
    # CPU seconds of each gunicorn process (the master among them), largest first.
    process_cpu_s: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        values = sorted(self.latencies_ms)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def run_http_phase(
    requests: list[bytes], *, events_per_request: int, clients: int, port: int, timeout: float
) -> PhaseResult:
    """Send `requests` from `clients` processes, each with one keep-alive connection."""
    global _REQUESTS
    _REQUESTS = requests
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    procs, pipes = [], []
    for c in range(clients):
        parent_end, child_end = ctx.Pipe(duplex=False)
        share = range(c, len(requests), clients)
        proc = ctx.Process(target=_client, args=(share, port, timeout, barrier, child_end))
        proc.start()
        child_end.close()
        procs.append(proc)
        pipes.append(parent_end)
    barrier.wait(timeout=60)
    started = time.perf_counter()
    results: list[ClientResult] = []
    for proc, pipe in zip(procs, pipes, strict=True):
        if pipe.poll(timeout + len(requests) * timeout / clients):
            results.append(pipe.recv())
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    _REQUESTS = []
    if len(results) != clients:
        raise SystemExit("a load-generator client died; see its traceback above")
    statuses: dict[int, int] = {}
    for r in results:
        for status, n in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    return PhaseResult(
        requests=len(requests),
        events=len(requests) * events_per_request,
        seconds=max(r.finished_at for r in results) - started,
        latencies_ms=[x * 1000 for r in results for x in r.latencies],
        accepted=sum(r.accepted for r in results),
        duplicates=sum(r.duplicates for r in results),
        rejected=sum(r.rejected for r in results),
        statuses=statuses,
        reconnects=sum(r.reconnects for r in results),
        errors=[e for r in results for e in r.errors][:5],
    )


# --- where the CPU went (Linux /proc; a diagnostic beside the rates) -------------------


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo += [int(child) for child in fh.read().split()]
        except OSError:
            pass
    return found


class CpuMeter:
    """CPU seconds of the service's processes and of this database's PostgreSQL
    backends, so a rate measured on a busy machine can be read as CPU per event."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def snapshot(self, app_pids: list[int]) -> tuple[dict[int, float], dict[int, float]]:
        backends = self.conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        app = {pid: _cpu_seconds(pid) for pid in app_pids}
        return app, {pid: _cpu_seconds(pid) for (pid,) in backends}

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def close(self) -> None:
        self.conn.close()


# --- service ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    probe = f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {proc.returncode}")
        try:
            with _connect(port, 5) as sock:
                sock.sendall(probe)
                status, _, _ = _read_response(sock, bytearray())
                if status:
                    return
        except (OSError, Closed):
            time.sleep(0.2)
    raise SystemExit("gunicorn did not answer within 60 s")


def gunicorn_start(*, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "-c",
                os.environ.get("GUNICORN_CONF", str(ROOT / "deploy" / "gunicorn.conf.py")),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def gunicorn_stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --- the raw ceiling ----------------------------------------------------------------


def run_raw_phase(bodies: list[bytes], *, source_id: int) -> PhaseResult:
    """events_store on pre-normalised batches, one connection, no HTTP."""
    from django.db import connection
    from django.utils import timezone

    from metering import normalize
    from metering.ingest import events_store
    from metering.services import _decoder

    limits = normalize.Limits(
        received_at=timezone.now(), max_age=timedelta(days=35), max_future=timedelta(minutes=5)
    )
    batches = []
    for body in bodies:
        events = []
        for raw in _decoder.decode(body):
            event, errors = normalize.native_event(raw, limits=limits)
            if event is None:
                raise SystemExit(f"bench generated an invalid event: {errors}")
            events.append(event)
        batches.append(events)
    latencies, accepted, duplicates = [], 0, 0
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid
    db0, app0 = _cpu_seconds(backend), time.process_time()
    started = time.perf_counter()
    for events in batches:
        t0 = time.perf_counter()
        result = events_store(source_id=source_id, events=events, received_at=timezone.now())
        latencies.append((time.perf_counter() - t0) * 1000)
        accepted += result.accepted
        duplicates += result.duplicates
    seconds = time.perf_counter() - started
    db_cpu, app_cpu = _cpu_seconds(backend) - db0, time.process_time() - app0
    connection.close()
    return PhaseResult(
        requests=len(batches),
        events=sum(len(b) for b in batches),
        seconds=seconds,
        latencies_ms=latencies,
        accepted=accepted,
        duplicates=duplicates,
        rejected=0,
        statuses={},
        reconnects=0,
        errors=[],
        app_cpu_s=app_cpu,
        db_cpu_s=db_cpu,
    )


# --- main ---------------------------------------------------------------------------


def measured_http(
    meter: CpuMeter | None, server_pid: int, requests: list[bytes], **kwargs: Any
) -> PhaseResult:
    """run_http_phase, with the CPU the service and PostgreSQL spent on it."""
    if meter is None:
        return run_http_phase(requests, **kwargs)
    app_pids = _descendants(server_pid)
    app0, db0 = meter.snapshot(app_pids)
    busy0, total0 = _machine_jiffies()
    phase = run_http_phase(requests, **kwargs)
    busy1, total1 = _machine_jiffies()
    app1, db1 = meter.snapshot(app_pids)
    phase.app_cpu_s, phase.db_cpu_s = meter.spent(app0, app1), meter.spent(db0, db1)
    phase.process_cpu_s = sorted((app1[pid] - app0.get(pid, 0.0) for pid in app_pids), reverse=True)
    if total1 > total0:
        phase.machine_busy = (busy1 - busy0) / (total1 - total0)
    return phase


def describe(label: str, phase: PhaseResult, *, unit: str = "events") -> str:
    rate = phase.events_per_s if unit == "events" else phase.requests_per_s
    line = (
        f"{label:<34} {rate:>10,.0f} {unit}/s   p50 {phase.pct(50):7.2f} ms   "
        f"p99 {phase.pct(99):7.2f} ms   ({phase.requests:,} requests, {phase.events:,} events, "
        f"{phase.seconds:.2f} s; accepted {phase.accepted:,}, duplicates {phase.duplicates:,}"
    )
    if phase.rejected:
        line += f", rejected {phase.rejected:,}"
    if phase.statuses and set(phase.statuses) != {202}:
        line += f", statuses {phase.statuses}"
    if phase.reconnects:
        line += f", reconnects {phase.reconnects:,}"
    line += ")"
    if phase.app_cpu_s or phase.db_cpu_s:
        if unit == "events":
            per, what = 1000 / phase.events, "1,000 events"
        else:
            per, what = 1 / phase.requests, "request"
        line += (
            f"\n{'':<34} CPU per {what}: Python {phase.app_cpu_s * per * 1000:.2f} ms, "
            f"PostgreSQL {phase.db_cpu_s * per * 1000:.2f} ms"
        )
        if phase.machine_busy:
            line += f"; machine busy {phase.machine_busy:.0%} of {os.cpu_count()} cores"
        if len(phase.process_cpu_s) > 1:
            # A worker's Python runs under one GIL: a worker near 100% while others idle
            # means the clients' connections landed unevenly.
            shares = ", ".join(f"{cpu / phase.seconds:.0%}" for cpu in phase.process_cpu_s)
            line += f"\n{'':<34} gunicorn processes, CPU over the phase: {shares}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in phase (a)")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=4, help="concurrent batch clients")
    parser.add_argument("--single-requests", type=int, default=24_000, help="requests in (c)")
    parser.add_argument("--single-clients", type=int, default=16)
    parser.add_argument("--raw-events", type=int, default=None, help="default: --events")
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--workers", type=int, help="gunicorn workers (GUNICORN_WORKERS)")
    parser.add_argument("--threads", type=int, help="gunicorn threads (GUNICORN_THREADS)")
    parser.add_argument("--worker-class", help="gunicorn worker class (GUNICORN_WORKER_CLASS)")
    parser.add_argument(
        "--app", help="application gunicorn serves (GUNICORN_APP; default inferbill.asgi)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request socket timeout")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="drop and re-create the benchmark database first (its name must contain 'bench')",
    )
    args = parser.parse_args()
    raw_events = args.events if args.raw_events is None else args.raw_events
    size = args.batch_size

    url = database_url(DEFAULT_DATABASE_URL)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "inferbill.settings",
        "DEBUG": "false",
        "PYTHONPATH": str(ROOT),
    }
    for option, name in (
        ("workers", "GUNICORN_WORKERS"),
        ("threads", "GUNICORN_THREADS"),
        ("worker_class", "GUNICORN_WORKER_CLASS"),
        ("app", "GUNICORN_APP"),
    ):
        if getattr(args, option) is not None:
            env[name] = str(getattr(args, option))
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))

    database_ensure(url, fresh=args.fresh)
    manage("migrate", "--noinput", env=env)
    run = uuid.uuid4().hex[:10]
    key = manage("create_api_key", "--source", f"bench-{run}", "--scope", "ingest", env=env)
    key = key.strip().splitlines()[-1]
    print(
        f"database {urlsplit(url).path.lstrip('/')}, run {run}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} (other work on the machine slows every phase)"
    )

    import django

    django.setup()
    from django.db import connection

    from metering.models import Event, Source

    factory = EventFactory(seed=args.seed, customers=args.customers, now=datetime.now(UTC))

    def batch_bodies(prefix: str, n_events: int) -> list[bytes]:
        return [
            encode_json(
                [factory.event(f"{prefix}-{i + j}") for j in range(min(size, n_events - i))]
            )
            for i in range(0, n_events, size)
        ]

    # (d) first: the ceiling is measured on the smaller table.
    raw_source = Source.objects.create(name=f"bench-{run}-raw")
    run_raw_phase(batch_bodies(f"bench-{run}-rawwarm", 3 * size), source_id=raw_source.id)
    raw = run_raw_phase(batch_bodies(f"bench-{run}-raw", raw_events), source_id=raw_source.id)
    print(describe("(d) raw events_store, no HTTP", raw))

    batches = batch_bodies(f"bench-{run}-b", args.events)
    singles = [
        encode_json(factory.event(f"bench-{run}-s-{i}")) for i in range(args.single_requests)
    ]
    warm_batches = batch_bodies(f"bench-{run}-wb", 2 * args.clients * size)
    warm_singles = [
        encode_json(factory.event(f"bench-{run}-ws-{i}")) for i in range(20 * args.single_clients)
    ]
    port = free_port()

    def requests(bodies: list[bytes]) -> list[bytes]:
        return [http_request("/v1/events", b, port=port, key=key) for b in bodies]

    workdir = Path(tempfile.mkdtemp(prefix="inferbill-bench-"))
    log = workdir / "gunicorn.log"
    server = gunicorn_start(port=port, env=env, log=log)
    meter = CpuMeter(url) if os.path.exists(f"/proc/{os.getpid()}/stat") else None
    try:
        wait_ready(port, server)
        http = {"port": port, "timeout": args.timeout}
        batched = {"events_per_request": size, "clients": args.clients, **http}
        single_kw = {"events_per_request": 1, "clients": args.single_clients, **http}
        run_http_phase(requests(warm_batches), **batched)
        batch = measured_http(meter, server.pid, requests(batches), **batched)
        print(describe(f"(a) new batches of {size:,}, {args.clients} clients", batch))
        dup = measured_http(meter, server.pid, requests(batches), **batched)
        print(describe(f"(b) same batches again, {args.clients} clients", dup))
        run_http_phase(requests(warm_singles), **single_kw)
        single = measured_http(meter, server.pid, requests(singles), **single_kw)
        print(
            describe(f"(c) single events, {args.single_clients} clients", single, unit="requests")
        )
    except BaseException:
        gunicorn_stop(server)
        sys.stderr.write(log.read_text()[-4000:])
        raise
    finally:
        if meter is not None:
            meter.close()
    gunicorn_stop(server)

    problems = []
    for name, phase, want_accepted in (("(a)", batch, batch.events), ("(c)", single, len(singles))):
        if phase.accepted != want_accepted or set(phase.statuses) != {202}:
            problems.append(f"{name} accepted {phase.accepted} of {want_accepted}: {phase.errors}")
    if dup.duplicates != dup.events or dup.accepted:
        problems.append(f"(b) counted {dup.duplicates} duplicates of {dup.events}: {dup.errors}")
    key_source = Source.objects.get(name=f"bench-{run}")
    stored = Event.objects.filter(source=key_source).count()
    expected = len(warm_batches) * size + batch.events + len(warm_singles) + len(singles)
    stored_raw = Event.objects.filter(source=raw_source).count()
    expected_raw = 3 * size + raw_events
    connection.close()
    print(
        f"check: {stored:,} events stored over HTTP (expected {expected:,}), {stored_raw:,} "
        f"by the raw phase (expected {expected_raw:,})"
    )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if stored != expected or stored_raw != expected_raw:
        problems.append("stored row counts differ from what was accepted")
    for problem in problems:
        print(f"PROBLEM: {problem}")

    summary = {
        "batch_events_per_s": round(batch.events_per_s),
        "batch_p99_ms": round(batch.pct(99), 2),
        "duplicate_events_per_s": round(dup.events_per_s),
        "single_requests_per_s": round(single.requests_per_s),
        "single_p50_ms": round(single.pct(50), 2),
        "single_p99_ms": round(single.pct(99), 2),
        "raw_events_per_s": round(raw.events_per_s),
        "batch_to_raw_ratio": round(batch.events_per_s / raw.events_per_s, 3),
    }
    print(json.dumps(summary))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
