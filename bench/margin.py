"""Margin benchmark: refresh every customer's margin and flags from hourly rollups.

    .venv/bin/python bench/margin.py [--customers 10000] [--events 10000000] [--month YYYY-MM]

Uses DATABASE_URL when set (default postgres://postgres@127.0.0.1:5432/inferbill_bench_margin,
a database of its own, created and migrated if missing). Untimed set-up, generated inside
PostgreSQL and kept between runs with the same parameters (it resumes after the last
stage that finished; --regenerate redoes it):

- N customers on three plans: 40% a flat $20 "unlimited" plan, 40% usage pricing per
  million tokens, 20% a $49 hybrid with 5M included tokens; 1% move from flat to usage
  pricing on the 10th (a plan change mid-period);
- the demo's cost rates (real list prices; llama-3.1-70b on H100s at a GPU-hour rate)
  and a gpt-4o-mini price change on the 15th (a rate change mid-period);
- the events of the month (the current one by default, up to an hour ago): straight
  into the metering_event partition with generate_series, 1,000 per ingest batch, a
  few customers heavy and a long tail, 2% on a model with no rate (uncosted); then
  `usage_rollup_fold()` folds them (in one round: the fastest set-up); then a small
  tail of unfolded batches in the last hour, which reads take from raw events.

Timed: `pricing.services.margins_refresh` for the month, all customers: cost from
rollups plus the tail (split at the rate change and the plan changes), accrued and
projected revenue with the billing engine, snapshot upserts, flag transitions and the
finance digest email (locmem backend). Run twice: the first run raises the flags, the
second is the steady hourly state. Checked: Σ requests over the snapshots equals the
period's stored events. The last line is one JSON object (customers, events,
refresh_seconds, flagged, and more); the 1-minute load average before the run is in it,
since other work on the machine shows in the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from _common import ROOT, database_ensure, database_url

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/inferbill_bench_margin"
BATCH = 1000

# model, provider, hardware, weight (percent)
MODELS = [
    ("gpt-4o", "openai", "", 25),
    ("gpt-4o-mini", "openai", "", 33),
    ("claude-sonnet-4-20250514", "anthropic", "", 15),
    ("claude-3-5-haiku-20241022", "anthropic", "", 17),
    ("llama-3.1-70b", "self-hosted", "h100", 8),
    ("mystery-model-9b", "self-hosted", "", 2),
]


def _model_case() -> str:
    """SQL picking a model index from a uniform r in [0, 1)."""
    parts, edge = [], 0
    for index, (*_, weight) in enumerate(MODELS):
        edge += weight
        parts.append(f"WHEN r < {edge / 100} THEN {index}")
    return "CASE " + " ".join(parts) + f" ELSE {len(MODELS) - 1} END"


def _events_sql(*, g0: int, n: int, lo: int, hi: int, batch0: int, span: float) -> str:
    """Events g in [lo, hi] of a run g0 … g0 + n - 1 spread evenly over `span` seconds
    from %(start)s, BATCH per ingest batch from batch id `batch0`."""
    names = "ARRAY[" + ", ".join(f"'{m[0]}'" for m in MODELS) + "]"
    providers = "ARRAY[" + ", ".join(f"'{m[1]}'" for m in MODELS) + "]"
    hardware = "ARRAY[" + ", ".join(f"'{m[2]}'" for m in MODELS) + "]"
    return f"""
        INSERT INTO metering_event (
            batch_id, source_id, key_hash, event_id, ce_source, ce_type, customer, "timestamp",
            model, provider, hardware, input_tokens, cache_read_input_tokens,
            cache_write_input_tokens, output_tokens, reasoning_output_tokens, gpu_seconds,
            latency_ms, properties)
        SELECT {batch0} + (g - {g0}) / {BATCH}, %(source)s, md5('mb' || g)::uuid, 'mb' || g,
               '', '', 'org_' || lpad(c::text, 5, '0'),
               %(start)s::timestamptz + make_interval(secs => {span} * (g - {g0} + random()) / {n}),
               ({names})[m + 1], ({providers})[m + 1], ({hardware})[m + 1],
               inp, CASE WHEN m < 4 THEN (inp * cr)::bigint ELSE 0 END,
               CASE WHEN m IN (2, 3) AND cr < 0.1 THEN (inp * 0.2)::bigint ELSE 0 END,
               out, 0,
               CASE WHEN m = 4 THEN round((0.4 + out / 180.0)::numeric, 6) ELSE 0 END,
               200 + (random() * 2000)::int, '{{}}'::jsonb
        FROM (
            SELECT g, least(floor(%(customers)s * power(random(), 2.5))::int,
                            %(customers)s - 1) AS c,
                   {_model_case()} AS m,
                   300 + (random() * 3500)::bigint AS inp, random() * 0.6 AS cr,
                   60 + (random() * 900)::bigint AS out
            FROM (SELECT g, random() AS r FROM generate_series({lo}, {hi}) g) s
        ) e
    """


def _meta(cursor: Any) -> tuple[str, str, datetime] | None:
    cursor.execute("SELECT to_regclass('bench_margin_meta') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return None
    cursor.execute("SELECT params, stage, generated_at FROM bench_margin_meta")
    return cursor.fetchone()


def _set_stage(cursor: Any, params: str, stage: str, end: datetime) -> None:
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS bench_margin_meta (params text, stage text, "
        "generated_at timestamptz)"
    )
    cursor.execute("DELETE FROM bench_margin_meta")
    cursor.execute("INSERT INTO bench_margin_meta VALUES (%s, %s, %s)", [params, stage, end])


def catalogue_load(*, customers: int, month: date) -> None:
    """Customers, plans, subscriptions and cost rates."""
    from decimal import Decimal

    from django.db import transaction

    from billing.models import Customer, Subscription
    from billing.services import ChargeInput, plan_create
    from pricing.demo import demo_cost_rates_load
    from pricing.models import CostRate
    from pricing.services import cost_rate_create

    month_start = datetime(month.year, month.month, 1, tzinfo=UTC)
    million = Decimal(1_000_000)

    def per_million(metric: str, price: str, **kw: Any) -> ChargeInput:
        return ChargeInput(
            metric=metric, price_model="per_unit", unit_size=million, unit_price=Decimal(price),
            **kw,
        )  # fmt: skip

    with transaction.atomic():
        Customer.objects.bulk_create(
            [Customer(external_id=f"org_{i:05d}", name=f"Org {i}") for i in range(customers)],
            batch_size=2000,
        )
        flat = plan_create(code="unlimited", name="Unlimited", flat_fee=Decimal(20))
        usage = plan_create(
            code="usage",
            name="Pay as you go",
            charges=[
                per_million("uncached_input_tokens", "3.50", filter={"model": "gpt-4o"}),
                per_million("uncached_input_tokens", "4.00",
                            filter={"model": "claude-sonnet-4-20250514"}),
                per_million("output_tokens", "14", filter={"model": "gpt-4o"}),
                per_million("output_tokens", "20", filter={"model": "claude-sonnet-4-20250514"}),
                per_million("input_tokens", "1.00"),
                per_million("output_tokens", "4.00"),
                ChargeInput(metric="gpu_seconds", price_model="per_unit",
                            unit_size=Decimal(3600), unit_price=Decimal("6.00")),
            ],
        )  # fmt: skip
        hybrid = plan_create(
            code="hybrid",
            name="Team",
            flat_fee=Decimal(49),
            charges=[
                per_million("input_tokens", "2.00", included_units=Decimal(5_000_000)),
                per_million("output_tokens", "8.00", included_units=Decimal(1_000_000)),
            ],
        )
        ids = list(Customer.objects.order_by("id").values_list("id", flat=True))
        since = date(month.year - 1, 1, 1)
        change = date(month.year, month.month, 10)
        subs = []
        for i, customer_id in enumerate(ids):
            plan = (flat, flat, flat, flat, usage, usage, usage, usage, hybrid, hybrid)[i % 10]
            if i % 100 == 1:  # 1%: flat until the 10th, then usage pricing
                subs.append(Subscription(customer_id=customer_id, plan=flat, start_date=since,
                                         end_date=change))  # fmt: skip
                subs.append(Subscription(customer_id=customer_id, plan=usage, start_date=change))
            else:
                subs.append(Subscription(customer_id=customer_id, plan=plan, start_date=since))
        Subscription.objects.bulk_create(subs, batch_size=2000)
        demo_cost_rates_load()
        cost_rate_create(
            kind=CostRate.Kind.TOKEN,
            model="gpt-4o-mini",
            token_class="output",  # noqa: S106
            usd_per_million_tokens=Decimal("0.50"),
            effective_from=month_start + timedelta(days=14),
            source="bench",
            now=month_start,
        )


def generate(*, customers: int, events: int, month: date, end: datetime, tail: int,
             params: str) -> None:  # fmt: skip
    """Set up the data in stages, resuming after the last one finished."""
    from django.db import connection

    from metering.models import Source
    from metering.partitions import event_partitions_ensure_range
    from metering.rollup import usage_rollup_fold

    started = time.perf_counter()
    month_start = datetime(month.year, month.month, 1, tzinfo=UTC)
    batches = (events + BATCH - 1) // BATCH
    with connection.cursor() as cursor:
        meta = _meta(cursor)
    stage = meta[1] if meta is not None and meta[0] == params else ""
    if meta is not None and stage:
        end = meta[2]
    if not stage:
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE metering_event, metering_ingestbatch, metering_usagerollup, "
                "metering_eventkey, billing_invoiceline, billing_invoice, billing_subscription, "
                "billing_charge, billing_plan, billing_customer, pricing_marginflag, "
                "pricing_marginsnapshot, pricing_costrate RESTART IDENTITY CASCADE"
            )
        catalogue_load(customers=customers, month=month)
        source, _ = Source.objects.get_or_create(name="bench-margin")
        span = (end - month_start).total_seconds()
        event_partitions_ensure_range(start=month_start, end=end + timedelta(hours=1))
        print(f"catalogue ready; {events:,} events over {span / 86400:.1f} days", flush=True)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO metering_ingestbatch (id, source_id, received_at) "
                "SELECT g, %s, %s FROM generate_series(1, %s) g",
                [source.id, end, batches],
            )
            step = 1_000_000
            for first in range(1, events + 1, step):
                last = min(first + step - 1, events)
                cursor.execute(
                    _events_sql(g0=1, n=events, lo=first, hi=last, batch0=1, span=span),
                    {"source": source.id, "start": month_start, "customers": customers},
                )
                print(f"  {last:,} events", flush=True)
            _set_stage(cursor, params, "events", end)
        stage = "events"
    if stage == "events":
        t = time.perf_counter()
        # One round: folding every batch in one statement is the fastest set-up.
        folded = usage_rollup_fold(batches_per_round=batches, max_rounds=10)
        print(f"folded {folded.batches} batches in {time.perf_counter() - t:.0f} s", flush=True)
        with connection.cursor() as cursor:
            _set_stage(cursor, params, "folded", end)
        stage = "folded"
    if stage == "folded":
        source, _ = Source.objects.get_or_create(name="bench-margin")
        tail_batches = (tail + BATCH - 1) // BATCH
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO metering_ingestbatch (id, source_id, received_at) "
                "SELECT g, %s, %s FROM generate_series(%s, %s) g",
                [source.id, end, batches + 1, batches + tail_batches],
            )
            if tail:
                cursor.execute(
                    _events_sql(
                        g0=events + 1, n=tail, lo=events + 1, hi=events + tail,
                        batch0=batches + 1, span=3000.0,
                    ),
                    {"source": source.id, "start": end - timedelta(minutes=59),
                     "customers": customers},
                )  # fmt: skip
            cursor.execute(
                "SELECT setval('metering_ingestbatch_id_seq', %s)", [batches + tail_batches]
            )
            cursor.execute("ANALYZE")
            _set_stage(cursor, params, "done", end)
        print(f"set up in {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--tail-events", type=int, default=20_000)
    parser.add_argument("--month", help="YYYY-MM (default: the current month)")
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()

    url = database_url(DEFAULT_DATABASE_URL)
    os.environ.update(
        {
            "DATABASE_URL": url,
            "DJANGO_SETTINGS_MODULE": "inferbill.settings",
            "DEBUG": "false",
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
            "INFERBILL_FINANCE_EMAILS": "finance@example.com",
            "INFERBILL_ALERT_WEBHOOK_URL": "",
        }
    )
    os.environ.pop("CELERY_BROKER_URL", None)  # notifications run in-process
    sys.path.insert(0, str(ROOT))
    database_ensure(url)

    import django

    django.setup()
    from django.core import mail
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Sum

    from pricing.models import MarginFlag, MarginSnapshot
    from pricing.services import margins_refresh

    call_command("migrate", verbosity=0, interactive=False)
    mail.outbox = []
    now = datetime.now(UTC)
    month = date.fromisoformat(f"{args.month}-01") if args.month else now.date().replace(day=1)
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    month_end = datetime(following.year, following.month, 1, tzinfo=UTC)
    params = f"{args.customers}/{args.events}/{args.tail_events}/{month:%Y-%m}"
    with connection.cursor() as cursor:
        meta = _meta(cursor)
    if args.regenerate or meta is None or meta[0] != params or meta[1] != "done":
        end = min(now, month_end) - timedelta(hours=1)
        end = end.replace(minute=0, second=0, microsecond=0) + timedelta(minutes=59)
        if args.regenerate and meta is not None:
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM bench_margin_meta")
        generate(
            customers=args.customers,
            events=args.events,
            month=month,
            end=end,
            tail=args.tail_events,
            params=params,
        )
        with connection.cursor() as cursor:
            meta = _meta(cursor)
        assert meta is not None
    else:
        print(f"reusing the data generated for {params} (--regenerate to redo it)", flush=True)
    generated_at = meta[2]
    as_of = min(generated_at + timedelta(minutes=1), month_end)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE b.folded_at IS NULL) FROM metering_event e "
            "JOIN metering_ingestbatch b ON b.id = e.batch_id"
        )
        stored, tail = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM metering_usagerollup")
        rollups = cursor.fetchone()[0]
        cursor.execute("TRUNCATE pricing_marginflag, pricing_marginsnapshot")
    print(
        f"{stored:,} events ({tail:,} unfolded), {rollups:,} rollup rows; refreshing "
        f"{month:%Y-%m} as of {as_of.isoformat()} on {os.cpu_count()} cores",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    cpu_before = time.process_time()
    first = margins_refresh(period=month, as_of=as_of)
    cpu_first = time.process_time() - cpu_before
    print(f"first refresh:  {first.seconds:.2f} s, {first.as_dict()}", flush=True)
    second = margins_refresh(period=month, as_of=as_of + timedelta(seconds=1))
    print(f"second refresh: {second.seconds:.2f} s, {second.as_dict()}", flush=True)
    flagged = MarginFlag.objects.filter(period=month, cleared_at__isnull=True).count()
    # Every stored event of the period counted once: Σ requests in the snapshots.
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT count(*) FROM metering_event WHERE "timestamp" >= %s AND "timestamp" < %s',
            [datetime(month.year, month.month, 1, tzinfo=UTC), as_of],
        )
        in_period = cursor.fetchone()[0]
    counted = MarginSnapshot.objects.filter(period=month).aggregate(n=Sum("requests"))["n"]
    flat_flagged = MarginFlag.objects.filter(
        period=month, cleared_at__isnull=True, is_flat=True
    ).count()
    print(f"{flagged} flagged ({flat_flagged} flat); {len(mail.outbox)} digest emails", flush=True)
    print(
        json.dumps(
            {
                "customers": first.customers,
                "events": stored,
                "refresh_seconds": round(first.seconds, 2),
                "flagged": flagged,
                "refresh_again_seconds": round(second.seconds, 2),
                "rollup_rows": rollups,
                "unfolded_tail_events": tail,
                "flat_flagged": flat_flagged,
                "requests_reconciled": counted == in_period,
                "refresh_python_cpu_seconds": round(cpu_first, 2),
                "load_average_1m_before": round(load_before, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
