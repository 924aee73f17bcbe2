"""Exactly once, proven with a real Celery worker, a real Redis broker and PostgreSQL.

A worker subprocess (prefork, two processes) rolls usage up and generates the
invoices of many customers while it is killed with SIGKILL (its whole process
group) in the middle of the run and started again; late usage then arrives, the
worker is killed again mid-run, and every task is finally dispatched once more.
Afterwards:

- each subscription has exactly one invoice per billing period, all finalized;
- for every customer, Σ invoiced quantities (usage lines plus adjustment lines of
  non-void invoices) per metric and model equals Σ of their stored events per model
  and token class, to the unit;
- invoice numbers are gap-free;
- the last re-run changed nothing.

Celery's Redis transport can lose a message the kill catches between the worker's BRPOP
and its record of unacknowledged messages; production recovers it with the next periodic
cycle (beat re-runs the rollup every minute and the invoice cycle every hour), and so does
the test: when nothing is left on the broker and work is missing, it runs the cycle again.

The worker sees the test's data because the test uses `transactional_db` (rows are
committed) and the worker's DATABASE_URL names the test database. Each run uses its
own queue, and a short broker visibility timeout, so the messages the killed worker
had taken but not acknowledged (acks_late) are delivered again to the new worker.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.conf import settings
from django.db import connection

from billing import tasks as billing_tasks
from billing.models import Customer, Invoice, InvoiceLine, InvoiceNumberSequence, Subscription
from billing.services import ChargeInput, customer_create, plan_create, subscription_create
from metering.ingest import events_store
from metering.models import IngestBatch, Source
from metering.normalize import NormalizedEvent
from metering.tasks import usage_rollup_task

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
VISIBILITY_TIMEOUT = 5  # seconds before a dead worker's unacknowledged tasks come back
# The whole test's budget. Measured: 15.7–16.8 s a run on a 2-core machine at load average
# 1–2 (three runs); the rest is headroom for a loaded machine.
BUDGET_SECONDS = 110.0
IDLE_SECONDS = 1.0  # nothing on the broker this long, and work missing: a message was lost
CUSTOMERS = 80
PLAN_CHANGES = 8  # customers who move to the other plan in the middle of last month
CHUNK_SIZE = 10  # subscriptions per invoice task here, so a run is many tasks

# (model, provider, hardware)
MODELS = (
    ("gpt-4o", "openai", ""),
    ("claude-sonnet-4-5", "anthropic", ""),
    ("llama-3.1-70b-instruct", "self-hosted", "H100-80GB"),
)
TOKEN_CLASSES = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)
METRICS = ("requests", *TOKEN_CLASSES, "gpu_seconds")
PER_MILLION = Decimal(1_000_000)


# --- broker and worker --------------------------------------------------------------------


@dataclass
class Broker:
    url: str
    queue: str
    client: redis.Redis

    def pending(self) -> int:
        """Messages of our queue waiting, plus those taken but not acknowledged."""
        waiting = sum(
            self.client.llen(key) for key in self.client.scan_iter(match=f"{self.queue}*")
        )
        unacked = 0
        for raw in self.client.hvals("unacked"):
            with suppress(ValueError, TypeError, IndexError):
                if json.loads(raw)[2] == self.queue:
                    unacked += 1
        return waiting + unacked

    def purge(self) -> None:
        for key in list(self.client.scan_iter(match=f"{self.queue}*")):
            self.client.delete(key)
        self.client.delete(f"_kombu.binding.{self.queue}")
        for tag, raw in self.client.hgetall("unacked").items():
            with suppress(ValueError, TypeError, IndexError):
                if json.loads(raw)[2] == self.queue:
                    self.client.hdel("unacked", tag)
                    self.client.zrem("unacked_index", tag)


@pytest.fixture
def broker() -> Iterator[Broker]:
    url = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    if os.environ.get("CELERY_BROKER_URL"):
        # CI's environment: tasks must go to the broker, never run eagerly in-process.
        assert settings.CELERY_TASK_ALWAYS_EAGER is False
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("INFERBILL_REQUIRE_SERVICES"):
            pytest.fail(f"Redis is required (INFERBILL_REQUIRE_SERVICES) but {url}: {exc}")
        pytest.skip(f"needs a Redis broker at {url} (set CELERY_BROKER_URL): {exc}")
    b = Broker(url=url, queue=f"inferbill-test-eo-{uuid.uuid4().hex[:12]}", client=client)
    yield b
    b.purge()
    client.close()


def _database_url() -> str:
    """The test database (not DATABASE_URL's), for the worker subprocess."""
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{quote(s['NAME'], safe='')}"


@dataclass
class Worker:
    """`celery -A inferbill worker` in its own process group, so SIGKILL takes the main
    process and its prefork children at once, the way a lost host or OOM kill would."""

    broker: Broker
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    cycles: int = 0  # times the periodic cycle was run again for a lost message
    killed_at: float = 0.0
    logs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "DATABASE_CONN_MAX_AGE": "0",
            "CELERY_BROKER_URL": self.broker.url,
            "CELERY_TASK_DEFAULT_QUEUE": self.broker.queue,
            "INFERBILL_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "INFERBILL_INVOICE_GRACE_HOURS": "24",
            "LOG_LEVEL": "WARNING",
        }

    def start(self) -> None:
        assert self.process is None
        if self.killed_at:
            # A worker restores unacknowledged messages older than the visibility timeout
            # when it starts polling; start it once the dead worker's tasks are that old.
            delay = self.killed_at + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.starts += 1
        log = self.log_dir / f"worker-{self.starts}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and args
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "inferbill",
                    "worker",
                    "-Q",
                    self.broker.queue,
                    "-n",
                    f"{self.broker.queue}-{self.starts}@%h",
                    "--concurrency",
                    "2",
                    "--pool",
                    "prefork",
                    "-l",
                    os.environ.get("INFERBILL_TEST_WORKER_LOGLEVEL", "warning"),
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the worker's own group only
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.process = None
        self.killed_at = time.monotonic()

    def assert_alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, (
            f"worker exited with {self.process and self.process.returncode}:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 4000) -> str:
        text = "".join(p.read_text(errors="replace") for p in self.logs if p.exists())
        return text[-chars:]


@pytest.fixture
def worker(transactional_db: None, broker: Broker, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(broker=broker, log_dir=tmp_path)
    yield w
    w.kill()
    # Let the dead worker's sessions go before the test database is flushed and dropped.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.1)


@contextmanager
def to_broker(broker: Broker) -> Iterator[None]:
    """Send tasks from this process to the broker and our queue: a Celery app of its own,
    current for the duration (shared tasks resolve against the current app)."""
    from celery import Celery, _state

    previous = _state.get_current_app()
    sender = Celery("inferbill-test-sender", set_as_current=False)
    sender.conf.update(
        broker_url=broker.url,
        broker_connection_retry_on_startup=True,
        task_always_eager=False,
        task_default_queue=broker.queue,
        task_ignore_result=True,
    )
    sender.set_current()
    try:
        yield
    finally:
        previous.set_current()
        sender.close()


def wait_for(
    condition: Callable[[], bool],
    *,
    what: str,
    worker: Worker,
    deadline: float,
    cycle: Callable[[], object] | None = None,
) -> None:
    """Wait until `condition` holds, failing at `deadline` (time.monotonic()).

    `cycle` is what beat runs again and again in production (the rollup every minute,
    the invoice cycle every hour): it is run whenever nothing is left on the broker, no
    message waiting and none taken, and the work is still not done. That happens when
    the kill lands between a worker's BRPOP of a message and kombu recording it as
    unacknowledged: the Redis transport then loses the message, and the next cycle is
    what generates those invoices. Re-runs are harmless, so the result is the same."""
    idle_since: float | None = None
    while not condition():
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(
                f"out of time waiting for {what} ({worker.broker.pending()} messages on the "
                f"broker, {worker.cycles} cycles re-run)\n{worker.log_tail()}"
            )
        worker.assert_alive()
        if cycle is not None and worker.broker.pending() == 0:
            idle_since = idle_since or now
            if now - idle_since > IDLE_SECONDS:
                cycle()
                worker.cycles += 1
                idle_since = None
        else:
            idle_since = None
        time.sleep(0.05)


def beat_cycle(as_of: datetime) -> Callable[[], None]:
    """What beat sends again and again: the rollup, and the invoice cycle as of `as_of`."""

    def cycle() -> None:
        usage_rollup_task.delay()
        billing_tasks.invoices_dispatch(as_of=as_of)

    return cycle


# --- data ------------------------------------------------------------------------------------


def month_start(day: date, months_back: int = 0) -> date:
    month = day.year * 12 + day.month - 1 - months_back
    return date(month // 12, month % 12 + 1, 1)


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def usage_charges(*, hybrid: bool) -> list[ChargeInput]:
    """One charge per model and metric, so every invoice line names its model."""
    charges = []
    for index, (model, _, _) in enumerate(MODELS):
        rate = Decimal(index + 1)
        for metric in METRICS:
            unit_size = Decimal(1) if metric in ("requests", "gpu_seconds") else PER_MILLION
            base = {
                "metric": metric,
                "filter": {"model": model},
                "display_name": f"{model} {metric}",
                "unit_size": unit_size,
            }
            if hybrid and metric == "output_tokens":
                charges.append(
                    ChargeInput(
                        **base,
                        price_model="graduated",
                        included_units=Decimal(20_000),
                        tiers=[
                            {"up_to": 50_000, "unit_price": str(rate * 10)},
                            {"up_to": None, "unit_price": str(rate * 8), "flat_fee": "1.00"},
                        ],
                    )
                )
            elif metric == "requests":
                charges.append(
                    ChargeInput(
                        **base,
                        price_model="package",
                        package_size=Decimal(100),
                        unit_price=Decimal("0.01"),
                    )
                )
            elif metric == "gpu_seconds":
                charges.append(
                    ChargeInput(**base, price_model="per_unit", unit_price=Decimal("0.00061"))
                )
            else:
                charges.append(
                    ChargeInput(
                        **base,
                        price_model="per_unit",
                        unit_price=rate * Decimal("2.5"),
                        included_units=Decimal(10_000) if hybrid else Decimal(0),
                    )
                )
    return charges


def make_event(
    rng: random.Random, *, event_id: str, customer: str, ts: datetime
) -> NormalizedEvent:
    model, provider, hardware = rng.choice(MODELS)
    input_tokens = rng.randint(1, 12_000)
    cache_read = rng.randint(0, input_tokens // 2)
    cache_write = rng.randint(0, (input_tokens - cache_read) // 3)
    output = rng.randint(0, 3_000)
    reasoning = rng.randint(0, output) if model != "gpt-4o" else 0
    gpu = Decimal(rng.randint(1, 9_000_000)) / 1_000_000 if hardware else Decimal(0)
    return NormalizedEvent(
        event_id=event_id,
        customer=customer,
        timestamp=ts,
        model=model,
        provider=provider,
        hardware=hardware,
        input_tokens=input_tokens,
        cache_read_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
        output_tokens=output,
        reasoning_output_tokens=reasoning,
        gpu_seconds=gpu,
        latency_ms=rng.randint(50, 9_000),
    )


def random_moment(rng: random.Random, start: date, end: date) -> datetime:
    span = int((at(end) - at(start)).total_seconds() * 1_000_000)
    return at(start) + timedelta(microseconds=rng.randrange(span))


def store(source: Source, events: list[NormalizedEvent], *, batch: int = 40) -> int:
    accepted = 0
    for i in range(0, len(events), batch):
        result = events_store(
            source_id=source.id, events=events[i : i + batch], received_at=datetime.now(UTC)
        )
        accepted += result.accepted
    return accepted


# --- reading the outcome ---------------------------------------------------------------------


def event_totals() -> dict[tuple[str, str, str], Decimal]:
    """Σ of stored events per customer, model and metric: the system of record."""
    sums = ", ".join(f"sum({m})" for m in TOKEN_CLASSES)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT customer, model, count(*), {sums}, sum(gpu_seconds) "
            "FROM metering_event GROUP BY customer, model"
        )
        rows = cursor.fetchall()
    totals: dict[tuple[str, str, str], Decimal] = {}
    for customer, model, *values in rows:
        for metric, value in zip(METRICS, values, strict=True):
            if value:
                totals[(customer, model, metric)] = Decimal(value)
    return totals


def invoiced_totals() -> dict[tuple[str, str, str], Decimal]:
    """Σ invoiced quantities (usage and adjustment lines of non-void invoices)."""
    totals: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    lines = (
        InvoiceLine.objects.filter(kind__in=[InvoiceLine.Kind.USAGE, InvoiceLine.Kind.ADJUSTMENT])
        .exclude(invoice__status=Invoice.Status.VOID)
        .values_list("invoice__customer__external_id", "filter", "metric", "quantity")
    )
    for customer, line_filter, metric, quantity in lines:
        totals[(customer, line_filter["model"], metric)] += quantity
    return {key: value for key, value in totals.items() if value}


def invoice_snapshot() -> list[tuple[Any, ...]]:
    return list(
        Invoice.objects.order_by("id").values_list(
            "id", "subscription_id", "period_start", "status", "number", "total", "computed_at"
        )
    )


# --- the test ------------------------------------------------------------------------------


def test_invoices_exactly_once_with_worker_killed_mid_run(
    worker: Worker, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    rng = random.Random(20261126)
    monkeypatch.setattr(billing_tasks, "CHUNK_SIZE", CHUNK_SIZE)
    today = datetime.now(UTC).date()
    this_month, last_month, month_before = (month_start(today, n) for n in (0, 1, 2))
    middle = last_month + timedelta(days=14)
    # Last month within its grace period (drafts), the month before past it (finalized).
    as_of_in_grace = at(this_month) + timedelta(hours=1)
    as_of_final = max(datetime.now(UTC), at(this_month) + timedelta(days=2))
    assert not Invoice.objects.exists() and not InvoiceNumberSequence.objects.exists()

    # Catalogue: two plans, each with a charge per model and metric; customers on them
    # from the month before last; a few move to the other plan in the middle of last month.
    usage = plan_create(code="eo-usage", name="Usage", charges=usage_charges(hybrid=False))
    hybrid = plan_create(
        code="eo-hybrid",
        name="Hybrid",
        flat_fee=Decimal("49.00"),
        minimum=Decimal("120.00"),
        charges=usage_charges(hybrid=True),
    )
    customers: list[Customer] = []
    for i in range(CUSTOMERS):
        customer = customer_create(external_id=f"eo-cust-{i:03d}", name=f"Customer {i}")
        subscription_create(
            customer=customer, plan=usage if i % 2 else hybrid, start_date=month_before
        )
        customers.append(customer)
    changed = {c.external_id for c in customers[:PLAN_CHANGES]}
    for i, customer in enumerate(customers[:PLAN_CHANGES]):
        subscription_create(customer=customer, plan=hybrid if i % 2 else usage, start_date=middle)
    subscriptions = list(Subscription.objects.all())
    expected_periods = {
        (s.id, month_before) for s in subscriptions if s.start_date == month_before
    } | {(s.id, last_month) for s in subscriptions}
    assert len(expected_periods) == 2 * CUSTOMERS + PLAN_CHANGES

    # Usage over the two months, in many ingest batches mixing customers.
    source = Source.objects.create(name="eo-test")
    first: list[NormalizedEvent] = []
    for customer in customers:
        for _ in range(rng.randint(15, 45)):
            ts = random_moment(rng, month_before, this_month)
            first.append(
                make_event(rng, event_id=uuid.uuid4().hex, customer=customer.external_id, ts=ts)
            )
    rng.shuffle(first)
    assert store(source, first) == len(first)

    with to_broker(broker):
        # --- phase 1: rollup and invoices; the worker dies mid-run ---------------------------
        for _ in range(3):
            usage_rollup_task.delay()
        chunks = billing_tasks.invoices_dispatch(as_of=as_of_in_grace)
        assert chunks >= len(expected_periods) // CHUNK_SIZE
        assert broker.pending() == chunks + 3  # on the broker, not run in-process
        worker.start()

        total_invoices = len(expected_periods)
        wait_for(
            lambda: Invoice.objects.count() >= total_invoices // 4,
            what="the first invoices",
            worker=worker,
            deadline=deadline,
        )
        worker.kill()
        assert Invoice.objects.count() < total_invoices, "the kill came after the run"
        worker.start()

        def phase_one_done() -> bool:
            finalized = Invoice.objects.filter(status=Invoice.Status.FINALIZED).count()
            drafts = Invoice.objects.filter(status=Invoice.Status.DRAFT).count()
            return (
                finalized == CUSTOMERS + PLAN_CHANGES  # the month before, and the ended halves
                and drafts == CUSTOMERS  # last month, in its grace period
                and not IngestBatch.objects.filter(folded_at=None).exists()
                and broker.pending() == 0
            )

        wait_for(
            phase_one_done,
            what="phase 1 to complete",
            worker=worker,
            deadline=deadline,
            cycle=beat_cycle(as_of_in_grace),
        )

        # --- phase 2: late usage, a duplicate re-send; refresh and finalize, killed again ----
        late: list[NormalizedEvent] = []
        for customer in rng.sample(customers, CUSTOMERS // 3) + customers[:PLAN_CHANGES]:
            # Late usage of a finalized month (an adjustment next month) and of a draft one
            # (the draft picks it up); never of a finalized half of a changed plan, which
            # the invoice after last month's would adjust.
            for _ in range(rng.randint(1, 4)):
                ts = random_moment(rng, month_before, last_month)
                late.append(
                    make_event(rng, event_id=uuid.uuid4().hex, customer=customer.external_id, ts=ts)
                )
            draft_from = middle if customer.external_id in changed else last_month
            for _ in range(rng.randint(1, 4)):
                ts = random_moment(rng, draft_from, this_month)
                late.append(
                    make_event(rng, event_id=uuid.uuid4().hex, customer=customer.external_id, ts=ts)
                )
        assert store(source, late, batch=7) == len(late)
        assert store(source, first[:200]) == 0  # every one a duplicate

        for _ in range(2):
            usage_rollup_task.delay()
        billing_tasks.invoices_dispatch(as_of=as_of_in_grace)  # refresh drafts
        billing_tasks.invoices_dispatch(as_of=as_of_final)  # and finalize them
        finalized_before = CUSTOMERS + PLAN_CHANGES
        wait_for(
            lambda: Invoice.objects.filter(status=Invoice.Status.FINALIZED).count()
            >= finalized_before + CUSTOMERS // 5,
            what="last month's first finalized invoices",
            worker=worker,
            deadline=deadline,
        )
        worker.kill()
        finalized = Invoice.objects.filter(status=Invoice.Status.FINALIZED).count()
        assert finalized < total_invoices, "the kill came after the run"
        worker.start()

        def all_final() -> bool:
            return (
                Invoice.objects.filter(status=Invoice.Status.FINALIZED).count() == total_invoices
                and not IngestBatch.objects.filter(folded_at=None).exists()
                and broker.pending() == 0
            )

        wait_for(
            all_final,
            what="phase 2 to complete",
            worker=worker,
            deadline=deadline,
            cycle=beat_cycle(as_of_final),
        )

        # --- phase 3: everything again; nothing may change -----------------------------------
        before = invoice_snapshot()
        lines_before = InvoiceLine.objects.count()
        assert billing_tasks.invoices_dispatch(as_of=as_of_final) == 0  # nothing is due
        for period in (month_before, last_month):
            ids = sorted(s for s, p in expected_periods if p == period)
            for i in range(0, len(ids), CHUNK_SIZE):
                billing_tasks.invoices_chunk_generate_task.delay(
                    ids[i : i + CHUNK_SIZE], period.isoformat(), as_of_final.isoformat()
                )
        usage_rollup_task.delay()
        wait_for(lambda: broker.pending() == 0, what="the re-run", worker=worker, deadline=deadline)
    worker.kill()

    assert invoice_snapshot() == before, "a re-run changed an invoice"
    assert InvoiceLine.objects.count() == lines_before

    # Exactly one invoice per subscription and period, each finalized.
    pairs = list(Invoice.objects.values_list("subscription_id", "period_start"))
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == expected_periods
    assert set(Invoice.objects.values_list("status", flat=True)) == {Invoice.Status.FINALIZED}

    # Σ invoiced = Σ events, per customer, model and metric, to the unit.
    events = event_totals()
    assert len(events) > CUSTOMERS * len(MODELS)
    invoiced = invoiced_totals()
    missing = {
        k: (events.get(k), invoiced.get(k))
        for k in events.keys() | invoiced.keys()
        if events.get(k) != invoiced.get(k)
    }
    assert not missing, f"{len(missing)} mismatches, e.g. {sorted(missing.items())[:5]}"
    adjustments = InvoiceLine.objects.filter(kind=InvoiceLine.Kind.ADJUSTMENT).exclude(quantity=0)
    assert adjustments.exists(), "late usage of a finalized month should be an adjustment"

    # Gap-free numbers: INV-000001 … INV-<n>, and the sequence stopped at n.
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"INV-{n:06d}" for n in range(1, total_invoices + 1)]
    assert InvoiceNumberSequence.objects.get(name="invoice").last_value == total_invoices
