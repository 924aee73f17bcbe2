"""Celery tasks of the metering app: thin wrappers around services."""

from celery import shared_task

from metering.partitions import event_partitions_ensure
from metering.rollup import usage_rollup_fold


@shared_task(acks_late=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def event_partitions_ensure_task() -> list[str]:
    """Create next months' event partitions ahead of need. Idempotent."""
    return event_partitions_ensure(months_back=1, months_ahead=3)


@shared_task(acks_late=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def usage_rollup_task() -> int:
    """Fold new events into hourly rollups. Idempotent and safe to run concurrently."""
    return usage_rollup_fold().batches
