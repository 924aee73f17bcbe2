"""Celery tasks of the billing app: thin wrappers that take ids and are idempotent.

Each task may be killed at any point and run again (acks_late with
reject_on_worker_lost re-delivers it): every write underneath is one transaction
guarded by a unique constraint or a row lock, so a re-run changes no total.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from celery import shared_task
from django.db import transaction

from billing import invoicing

# Subscriptions per invoice task: one transaction of about twenty statements whatever its
# size (see billing.invoicing.chunk._generate_together), so bigger chunks spread the fixed
# cost further; 100 made about 10 % more invoices per second than 50 in bench/invoice.py.
CHUNK_SIZE = 100
RETRY = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (Exception,),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": 8,
}


@shared_task(**RETRY)
def invoices_chunk_generate_task(subscription_ids: list[int], period_start: str, as_of: str) -> int:
    return invoicing.invoices_generate_chunk(
        subscription_ids=subscription_ids,
        period_start=date.fromisoformat(period_start),
        as_of=datetime.fromisoformat(as_of),
    )


def invoices_dispatch(*, as_of: datetime) -> int:
    """Enqueue generation of every due period, in chunks of subscriptions sharing a
    period start. Returns the number of chunks. Enqueued on commit."""
    due = invoicing.due_periods(as_of=as_of)
    by_period: dict[date, list[int]] = {}
    for subscription_id, period_start in due:
        by_period.setdefault(period_start, []).append(subscription_id)
    chunks = 0
    # Oldest period first, so a period is finalized before its successor looks for
    # late usage to adjust (with one worker; with several, the next cycle catches up).
    for period_start in sorted(by_period):
        ids = by_period[period_start]
        for i in range(0, len(ids), CHUNK_SIZE):
            chunk = ids[i : i + CHUNK_SIZE]
            transaction.on_commit(
                lambda chunk=chunk, period_start=period_start: (
                    invoices_chunk_generate_task.delay(
                        chunk, period_start.isoformat(), as_of.isoformat()
                    )
                )
            )
            chunks += 1
    return chunks


@shared_task(**RETRY)
def invoices_cycle_task(as_of: str | None = None) -> int:
    """Beat, hourly: generate due invoices, refresh drafts, finalize past grace."""
    moment = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    return invoices_dispatch(as_of=moment)
