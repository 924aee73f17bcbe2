"""Billing benchmark: a month of usage rolled up and invoiced by Celery workers. By hand only.

    .venv/bin/python bench/invoice.py [--customers 2000] [--events 5000000] [--reuse] ...

Uses DATABASE_URL when set (default postgres://postgres@127.0.0.1:5432/inferbill_bench_invoice;
created and migrated if missing; the bench wipes its tables, so it refuses a database
whose name does not contain "bench") and CELERY_BROKER_URL (default
redis://127.0.0.1:6379/0; a queue of its own per run).

1. Load: customers on three plans (a flat "unlimited" one, a usage plan priced per
   million tokens by model and token class, a hybrid with included tokens and GPU-second
   overage), all subscribed from the first day of last month, and N events over last
   month generated inside PostgreSQL (generate_series) straight into last month's
   partition, in time order, in ingest batches of --batch-size events like the ingest
   path makes them: a long tail of customers, each on one to three of eight models (API
   and self-hosted on GPUs), realistic token counts, 1 % of events late (out of order).
   --reuse keeps the events of an earlier run with the same sizes and only resets
   rollups, batches and invoices.
2. Rollup: Celery workers (subprocesses, --worker-processes × --concurrency) fold every
   batch into hourly rollups; rollup_seconds runs from enqueueing to the last batch folded.
3. Invoices: billing.tasks.invoices_dispatch for every period ended (as of two days into
   this month, so past the grace period: each invoice is generated and finalized);
   invoice_seconds runs from dispatch to the last invoice finalized.
4. Reconcile in SQL: for every metered customer, Σ invoiced quantities (usage and
   adjustment lines) per metric and model = Σ of their events per model and token class,
   and every event falls under a charge; one invoice per subscription; gap-free numbers.

Readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import PYTHON, ROOT, database_ensure, manage

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/inferbill_bench_invoice"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
MILLION = Decimal(1_000_000)

# (model, provider, hardware, reasoning?, $/M uncached input, cache read, cache write, output)
MODELS = [
    ("gpt-4o", "openai", "", False, "2.50", "1.25", "2.50", "10.00"),
    ("gpt-4o-mini", "openai", "", False, "0.15", "0.075", "0.15", "0.60"),
    ("o3-mini", "openai", "", True, "1.10", "0.55", "1.10", "4.40"),
    ("claude-sonnet-4-5", "anthropic", "", False, "3.00", "0.30", "3.75", "15.00"),
    ("claude-haiku-4-5", "anthropic", "", False, "1.00", "0.10", "1.25", "5.00"),
    ("gemini-2.5-pro", "google", "", True, "1.25", "0.31", "1.25", "10.00"),
    ("llama-3.1-70b-instruct", "self-hosted", "H100-80GB", False, "0.60", "0.06", "0.60", "0.60"),
    ("qwen2.5-72b-instruct", "self-hosted", "A100-80GB", False, "0.40", "0.04", "0.40", "0.40"),
]
USAGE_METRICS = (
    ("uncached_input_tokens", 4),
    ("cache_read_input_tokens", 5),
    ("cache_write_input_tokens", 6),
    ("output_tokens", 7),
)


def log(message: str) -> None:
    print(message, flush=True)


# --- database ------------------------------------------------------------------------------


def month_start(day: date, months_back: int = 0) -> date:
    month = day.year * 12 + day.month - 1 - months_back
    return date(month // 12, month % 12 + 1, 1)


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def execute(sql: str, params: Any = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def scalar(sql: str, params: Any = None) -> Any:
    return execute(sql, params)[0][0]


# --- catalogue and events ------------------------------------------------------------------


def plans_create() -> dict[str, Any]:
    from billing.services import ChargeInput, plan_create

    usage_charges = [
        ChargeInput(
            metric=metric,
            filter={"model": model[0]},
            display_name=f"{model[0]} {metric.replace('_', ' ')}",
            price_model="per_unit",
            unit_size=MILLION,
            unit_price=Decimal(model[column]),
        )
        for model in MODELS
        for metric, column in USAGE_METRICS
    ]
    hybrid_charges = [
        ChargeInput(
            metric="input_tokens",
            display_name="Input tokens beyond the included 20M",
            price_model="per_unit",
            unit_size=MILLION,
            unit_price=Decimal("1.50"),
            included_units=Decimal(20_000_000),
        ),
        ChargeInput(
            metric="output_tokens",
            display_name="Output tokens beyond the included 5M",
            price_model="graduated",
            unit_size=MILLION,
            included_units=Decimal(5_000_000),
            tiers=[
                {"up_to": 100_000_000, "unit_price": "6.00"},
                {"up_to": None, "unit_price": "4.00"},
            ],
        ),
        ChargeInput(
            metric="gpu_seconds",
            display_name="GPU-seconds beyond the included 10 GPU-hours",
            price_model="per_unit",
            unit_price=Decimal("0.0009"),
            included_units=Decimal(36_000),
        ),
    ]
    return {
        "flat": plan_create(code="bench-unlimited", name="Unlimited", flat_fee=Decimal("2000")),
        "usage": plan_create(code="bench-usage", name="Pay as you go", charges=usage_charges),
        "hybrid": plan_create(
            code="bench-hybrid",
            name="Team",
            flat_fee=Decimal("500"),
            minimum=Decimal("750"),
            charges=hybrid_charges,
        ),
    }


def plan_of(index: int) -> str:
    """20 % flat, 50 % usage, 30 % hybrid."""
    slot = index % 10
    return "flat" if slot < 2 else ("usage" if slot < 7 else "hybrid")


EVENTS_SQL = """
INSERT INTO {partition} (
    id, batch_id, source_id, key_hash, event_id, customer, "timestamp", model, provider,
    hardware, input_tokens, cache_read_input_tokens, cache_write_input_tokens,
    output_tokens, reasoning_output_tokens, gpu_seconds, latency_ms, properties)
SELECT i + 1, %(first_batch)s + i / %(batch_size)s, %(source)s,
       md5('bench-event-' || i)::uuid, 'bench-event-' || i,
       'bench-' || lpad(c::text, 5, '0'), ts,
       (%(models)s::text[])[m + 1], (%(providers)s::text[])[m + 1],
       (%(hardware)s::text[])[m + 1],
       input_tokens, cache_read, cache_write, output_tokens,
       CASE WHEN (%(reasoning)s::bool[])[m + 1] THEN floor(output_tokens * r_reason)::bigint
            ELSE 0 END,
       CASE WHEN (%(hardware)s::text[])[m + 1] <> ''
            THEN round((0.05 + (input_tokens + 4 * output_tokens) / 40000.0 * (0.6 + r_gpu))
                       ::numeric, 6)
            ELSE 0 END,
       (120 + output_tokens * 12 * (0.5 + r_gpu))::int,
       '{{}}'::jsonb
FROM (
    SELECT i, c, m, ts, input_tokens, cache_read, output_tokens, r_reason, r_gpu,
           CASE WHEN (%(providers)s::text[])[m + 1] = 'anthropic' AND r_write < 0.15
                THEN floor((input_tokens - cache_read) * 0.6)::bigint ELSE 0 END AS cache_write
    FROM (
        SELECT i, c,
               -- each customer uses up to three models: 70, 20 and 10 percent
               (c * 3 + CASE WHEN r_model < 0.7 THEN 0 WHEN r_model < 0.9 THEN 1 ELSE 2 END)
                   %% %(n_models)s AS m,
               CASE WHEN r_late < 0.01 THEN %(start)s + r_ts * %(span)s
                    ELSE %(start)s + ((i + r_ts) / %(events)s) * %(span)s END AS ts,
               input_tokens,
               CASE WHEN r_cache < 0.45 THEN floor(input_tokens * r_hit * 0.9)::bigint
                    ELSE 0 END AS cache_read,
               1 + floor(power(r_out, 2) * 2400)::bigint AS output_tokens,
               r_reason, r_gpu, r_write
        FROM (
            SELECT i,
                   -- a long tail: the biggest customer sends about 3 percent of events
                   least(floor(%(customers)s * power(random(), 2.2))::int,
                         %(customers)s - 1) AS c,
                   60 + floor(power(random(), 3) * 32000)::bigint AS input_tokens,
                   random() AS r_model, random() AS r_late, random() AS r_ts,
                   random() AS r_cache, random() AS r_hit, random() AS r_out,
                   random() AS r_reason, random() AS r_gpu, random() AS r_write
            FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
        ) raw
    ) shaped
) final
"""


def load(*, customers: int, events: int, batch_size: int, period: date) -> None:
    from django.db import connection, transaction

    from billing.models import Customer, Subscription
    from metering.models import Source
    from metering.partitions import event_partitions_ensure_range, partition_name

    start = at(period)
    end = at(month_start(period, -1))
    execute(
        "TRUNCATE metering_event, metering_ingestbatch, metering_usagerollup, "
        "metering_eventkey, billing_invoiceline, billing_invoice, billing_invoicenumbersequence, "
        "billing_subscription, billing_charge, billing_plan, billing_customer, metering_source "
        "RESTART IDENTITY CASCADE"
    )
    event_partitions_ensure_range(start=start, end=end - timedelta(microseconds=1))
    with transaction.atomic():
        plans = plans_create()
        Customer.objects.bulk_create(
            Customer(external_id=f"bench-{i:05d}", name=f"Bench customer {i}")
            for i in range(customers)
        )
        by_external = dict(Customer.objects.values_list("external_id", "id"))
        Subscription.objects.bulk_create(
            Subscription(
                customer_id=by_external[f"bench-{i:05d}"],
                plan=plans[plan_of(i)],
                start_date=period,
            )
            for i in range(customers)
        )
        source = Source.objects.create(name="bench-invoice")
    n_batches = (events + batch_size - 1) // batch_size
    # Ingest batches arrive through the month, in order, a little after their events.
    execute(
        "INSERT INTO metering_ingestbatch (id, source_id, received_at) "
        "SELECT b, %s, %s + (b::float8 / %s) * %s + interval '2 seconds' "
        "FROM generate_series(1, %s) AS b",
        [source.id, start, n_batches, end - start, n_batches],
    )
    execute(
        "SELECT setval('metering_ingestbatch_id_seq', %s), setval('metering_event_id_seq', %s)",
        [n_batches, events],
    )
    partition = partition_name(period)
    params = {
        "first_batch": 1,
        "batch_size": batch_size,
        "source": source.id,
        "models": [m[0] for m in MODELS],
        "providers": [m[1] for m in MODELS],
        "hardware": [m[2] for m in MODELS],
        "reasoning": [m[3] for m in MODELS],
        "n_models": len(MODELS),
        "start": start,
        "span": end - start,
        "events": events,
        "customers": customers,
    }
    sql = EVENTS_SQL.format(partition=partition)
    step = 1_000_000
    began = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SELECT setseed(0.42)")
        for lo in range(0, events, step):
            hi = min(events, lo + step) - 1
            cursor.execute(sql, {**params, "lo": lo, "hi": hi})
            log(f"  events {hi + 1:,}/{events:,} ({time.monotonic() - began:.0f} s)")
        cursor.execute("SET synchronous_commit = on")
    execute(f"VACUUM (ANALYZE) {partition}")
    execute("VACUUM (ANALYZE) metering_ingestbatch")
    execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text NOT NULL)")
    execute("DELETE FROM bench_meta")
    execute(
        "INSERT INTO bench_meta VALUES ('shape', %s)",
        [json.dumps([customers, events, batch_size, period.isoformat()])],
    )


def batches_unfolded() -> bool:
    return scalar("SELECT EXISTS (SELECT 1 FROM metering_ingestbatch WHERE folded_at IS NULL)")


def loaded_shape() -> Any:
    if not scalar("SELECT to_regclass('bench_meta') IS NOT NULL"):
        return None
    rows = execute("SELECT value FROM bench_meta WHERE key = 'shape'")
    return json.loads(rows[0][0]) if rows else None


def reset_processing(*, keep_rollups: bool) -> None:
    """Back to 'events stored, nothing folded, nothing invoiced' (or, keeping rollups,
    to 'everything folded, nothing invoiced')."""
    execute(
        "TRUNCATE billing_invoiceline, billing_invoice, billing_invoicenumbersequence "
        "RESTART IDENTITY CASCADE"
    )
    if not keep_rollups:
        execute("TRUNCATE metering_usagerollup RESTART IDENTITY")
        execute("UPDATE metering_ingestbatch SET folded_at = NULL")
    execute("VACUUM (ANALYZE) metering_ingestbatch")
    execute("VACUUM (ANALYZE) metering_usagerollup")
    execute("VACUUM (ANALYZE) billing_invoice")
    execute("VACUUM (ANALYZE) billing_invoiceline")
    execute("CHECKPOINT")


# --- workers ---------------------------------------------------------------------------------


class Workers:
    def __init__(self, *, processes: int, concurrency: int, env: dict[str, str], queue: str):
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.env = env
        self.queue = queue
        self.processes = processes
        self.concurrency = concurrency
        self.dir = Path(tempfile.mkdtemp(prefix="inferbill-bench-invoice-"))

    def start(self) -> None:
        for n in range(self.processes):
            path = self.dir / f"worker-{n}.log"
            self.logs.append(path)
            with path.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [
                            PYTHON,
                            "-m",
                            "celery",
                            "-A",
                            "inferbill",
                            "worker",
                            "-Q",
                            self.queue,
                            "-n",
                            f"{self.queue}-{n}@%h",
                            "--pool",
                            "prefork",
                            "--concurrency",
                            str(self.concurrency),
                            "-l",
                            "info",
                            "--without-gossip",
                            "--without-mingle",
                            "--without-heartbeat",
                        ],
                        cwd=ROOT,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 60
        while not all(" ready." in p.read_text(errors="replace") for p in self.logs):
            self.check()
            if time.monotonic() > deadline:
                raise SystemExit(f"workers not ready after 60 s; logs in {self.dir}")
            time.sleep(0.1)

    def check(self) -> None:
        for proc, path in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"a worker exited ({proc.returncode}); see {path}")

    def failures(self) -> list[str]:
        return [
            line
            for path in self.logs
            for line in path.read_text(errors="replace").splitlines()
            if "ERROR" in line or "Traceback" in line or " retry: " in line
        ]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def broker_cleanup(url: str, queue: str) -> None:
    """Drop this run's queue (anything left in it) and its binding from Redis."""
    import redis

    client = redis.Redis.from_url(url)
    client.delete(queue, f"_kombu.binding.{queue}")
    client.close()


def wait_until(condition: Any, *, what: str, workers: Workers, timeout: float) -> None:
    began = time.monotonic()
    while not condition():
        workers.check()
        if time.monotonic() - began > timeout:
            raise SystemExit(f"{what}: not done after {timeout:.0f} s; logs in {workers.dir}")
        time.sleep(0.05)


# --- reconciliation ----------------------------------------------------------------------------

EVENT_METRIC = """
    CASE c.metric
        WHEN 'requests' THEN ev.requests
        WHEN 'input_tokens' THEN ev.input_tokens
        WHEN 'uncached_input_tokens'
            THEN ev.input_tokens - ev.cache_read_input_tokens - ev.cache_write_input_tokens
        WHEN 'cache_read_input_tokens' THEN ev.cache_read_input_tokens
        WHEN 'cache_write_input_tokens' THEN ev.cache_write_input_tokens
        WHEN 'output_tokens' THEN ev.output_tokens
        WHEN 'reasoning_output_tokens' THEN ev.reasoning_output_tokens
        WHEN 'gpu_seconds' THEN ev.gpu_seconds
    END
"""

RECONCILE_SQL = f"""
WITH ev AS (
    SELECT customer, model, count(*) AS requests, sum(input_tokens) AS input_tokens,
           sum(cache_read_input_tokens) AS cache_read_input_tokens,
           sum(cache_write_input_tokens) AS cache_write_input_tokens,
           sum(output_tokens) AS output_tokens,
           sum(reasoning_output_tokens) AS reasoning_output_tokens,
           sum(gpu_seconds) AS gpu_seconds
    FROM metering_event WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s
    GROUP BY customer, model
), charged AS (
    SELECT DISTINCT cu.external_id AS customer, ch.metric, ch.filter ->> 'model' AS model
    FROM billing_subscription s
    JOIN billing_customer cu ON cu.id = s.customer_id
    JOIN billing_charge ch ON ch.plan_id = s.plan_id
), expected AS (
    -- Within a plan, the charges of one metric have disjoint filters (per model, or one
    -- for every model), so each event is counted once per metric.
    SELECT c.customer, c.metric, coalesce(c.model, '*') AS model,
           sum({EVENT_METRIC}) AS quantity
    FROM charged c JOIN ev ON ev.customer = c.customer AND (c.model IS NULL OR c.model = ev.model)
    GROUP BY 1, 2, 3
), invoiced AS (
    SELECT cu.external_id AS customer, l.metric, coalesce(l.filter ->> 'model', '*') AS model,
           sum(l.quantity) AS quantity
    FROM billing_invoiceline l
    JOIN billing_invoice i ON i.id = l.invoice_id
    JOIN billing_customer cu ON cu.id = i.customer_id
    WHERE l.kind IN ('usage', 'adjustment') AND i.status <> 'void'
    GROUP BY 1, 2, 3
), compared AS (
    SELECT coalesce(e.quantity, 0) AS expected, coalesce(v.quantity, 0) AS invoiced
    FROM expected e FULL JOIN invoiced v USING (customer, metric, model)
), coverage AS (
    -- Every event of a metered customer is under one charge of each metric charged.
    SELECT m.customer, m.metric,
           sum(CASE WHEN c.customer IS NOT NULL THEN {EVENT_METRIC} ELSE 0 END) AS covered,
           sum({EVENT_METRIC.replace("c.metric", "m.metric")}) AS total
    FROM (SELECT DISTINCT customer, metric FROM charged) m
    JOIN ev ON ev.customer = m.customer
    LEFT JOIN charged c ON c.customer = m.customer AND c.metric = m.metric
        AND (c.model IS NULL OR c.model = ev.model)
    GROUP BY 1, 2
)
SELECT (SELECT count(*) FROM compared WHERE expected <> invoiced),
       (SELECT count(*) FROM compared),
       (SELECT count(*) FROM coverage WHERE covered <> total),
       (SELECT coalesce(sum(invoiced), 0) FROM compared)
"""


def reconcile(*, start: datetime, end: datetime, periods: int) -> dict[str, Any]:
    mismatches, compared, uncovered, quantity = execute(
        RECONCILE_SQL, {"start": start, "end": end}
    )[0]
    invoices, subscriptions, pairs = execute(
        "SELECT (SELECT count(*) FROM billing_invoice), "
        "(SELECT count(*) FROM billing_subscription), "
        "(SELECT count(DISTINCT (subscription_id, period_start)) FROM billing_invoice)"
    )[0]
    numbered, top, distinct_numbers = execute(
        "SELECT count(number), coalesce(max(substr(number, 5)::int), 0), count(DISTINCT number) "
        "FROM billing_invoice"
    )[0]
    return {
        "mismatches": mismatches,
        "compared": compared,
        "uncovered": uncovered,
        "quantity": quantity,
        "one_per_period": invoices == pairs == subscriptions * periods,
        "gap_free": numbered == top == distinct_numbers == invoices,
    }


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--batch-size", type=int, default=1000, help="events per ingest batch")
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2, help="prefork children each")
    parser.add_argument(
        "--chunk-size", type=int, help="subscriptions per invoice task (default: billing's)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep events of the same shape")
    parser.add_argument(
        "--history",
        action="store_true",
        help="subscriptions from the month before, whose invoices are finalized before the "
        "clock starts: each invoice then looks back for late usage to adjust, as every "
        "month after a customer's first does",
    )
    parser.add_argument("--load-only", action="store_true", help="load the data and stop")
    parser.add_argument("--rollup-only", action="store_true", help="stop after the rollup")
    parser.add_argument(
        "--invoices-only",
        action="store_true",
        help="with --reuse: keep the rollups of the last run, time the invoices alone",
    )
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if "bench" not in urlsplit(database_url).path:
        raise SystemExit("refusing to wipe a database whose name does not contain 'bench'")
    broker_url = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    queue = f"inferbill-bench-invoice-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "DJANGO_SETTINGS_MODULE": "inferbill.settings",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    database_ensure(database_url)
    manage("migrate", "--noinput", env=env)

    import django

    django.setup()
    from billing import tasks as billing_tasks
    from billing.models import Invoice
    from metering.tasks import usage_rollup_task

    if args.chunk_size:
        billing_tasks.CHUNK_SIZE = args.chunk_size  # the dispatch runs in this process

    today = datetime.now(UTC).date()
    period = month_start(today, 1)
    start, end = at(period), at(month_start(today))
    shape = [args.customers, args.events, args.batch_size, period.isoformat()]
    if args.reuse and loaded_shape() == shape:
        log(f"reusing {args.events:,} events of {args.customers:,} customers")
    else:
        log(f"loading {args.customers:,} customers and {args.events:,} events of {period:%B %Y}")
        began = time.monotonic()
        load(
            customers=args.customers, events=args.events, batch_size=args.batch_size, period=period
        )
        log(f"loaded in {time.monotonic() - began:.0f} s")
    keep_rollups = args.invoices_only and not batches_unfolded()
    reset_processing(keep_rollups=keep_rollups)
    month_before = month_start(today, 2)
    execute(
        "UPDATE billing_subscription SET start_date = %s",
        [month_before if args.history else period],
    )
    if args.history:
        log(f"history: every subscription's invoice of {month_before:%B %Y}, finalized")
        from billing.invoicing import invoices_generate_chunk

        ids = [row[0] for row in execute("SELECT id FROM billing_subscription ORDER BY id")]
        for i in range(0, len(ids), 100):
            invoices_generate_chunk(
                subscription_ids=ids[i : i + 100],
                period_start=month_before,
                as_of=start + timedelta(days=2),
            )
    if args.load_only:
        return
    batches = scalar("SELECT count(*) FROM metering_ingestbatch")
    subscriptions = scalar("SELECT count(*) FROM billing_subscription")

    workers = Workers(
        processes=args.worker_processes, concurrency=args.concurrency, env=env, queue=queue
    )
    workers.start()
    try:
        log(
            f"rollup: {batches:,} ingest batches, "
            f"{args.worker_processes}×{args.concurrency} workers"
        )
        began = time.monotonic()
        if not keep_rollups:
            for _ in range(args.worker_processes * args.concurrency):
                usage_rollup_task.delay()
        wait_until(
            lambda: not batches_unfolded(),
            what="rollup",
            workers=workers,
            timeout=900,
        )
        rollup_seconds = 0.0 if keep_rollups else time.monotonic() - began
        rollup_rows = scalar("SELECT count(*) FROM metering_usagerollup")
        log(f"  {rollup_seconds:.2f} s, {rollup_rows:,} hourly rollup rows")
        if args.rollup_only:
            print(json.dumps({"rollup_seconds": round(rollup_seconds, 2)}))
            return
        # What autovacuum does after a big change (untimed): statistics that know the
        # batches are folded, and hint bits set on the new rollup rows.
        execute("VACUUM (ANALYZE) metering_ingestbatch")
        execute("VACUUM (ANALYZE) metering_usagerollup")

        as_of = max(datetime.now(UTC), end + timedelta(days=2))
        log(f"invoices: {subscriptions:,} subscriptions, as of {as_of:%Y-%m-%d %H:%M}")
        began = time.monotonic()
        chunks = billing_tasks.invoices_dispatch(as_of=as_of)
        wait_until(
            lambda: Invoice.objects.filter(
                status=Invoice.Status.FINALIZED, period_start=period
            ).count()
            >= subscriptions,
            what="invoicing",
            workers=workers,
            timeout=900,
        )
        invoice_seconds = time.monotonic() - began  # the dispatch included
        invoices = Invoice.objects.filter(period_start=period).count()
        log(f"  {invoice_seconds:.2f} s, {invoices:,} invoices in {chunks} chunks")
        failures = workers.failures()
    finally:
        workers.stop()
        broker_cleanup(broker_url, queue)

    checks = reconcile(start=start, end=end, periods=2 if args.history else 1)
    reconciled = (
        checks["mismatches"] == 0
        and checks["uncovered"] == 0
        and checks["compared"] > 0
        and checks["one_per_period"]
        and checks["gap_free"]
    )
    log(f"reconciliation: {checks}")
    if failures:
        log(f"worker errors or retries ({len(failures)}), e.g. {failures[:3]}")
    result = {
        "customers": args.customers,
        "events": args.events,
        "rollup_seconds": round(rollup_seconds, 2) if not keep_rollups else None,
        "invoice_seconds": round(invoice_seconds, 2),
        "invoices_per_s": round(invoices / invoice_seconds, 1),
        "reconciled": reconciled,
        "invoices": invoices,
        "ingest_batches": batches,
        "rollup_rows": rollup_rows,
        "workers": f"{args.worker_processes}x{args.concurrency}",
        "total_seconds": round(rollup_seconds + invoice_seconds, 2),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
