"""Celery tasks of the pricing app: thin wrappers around pricing.services.

All take ids or ISO strings, run with acks_late (a killed worker's task is delivered
again) and are idempotent: a refresh recomputes the same numbers and moves no flag
twice; a flag already emailed or delivered is not sent again. Retries are explicit,
with exponential backoff.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from pricing import alerts, selectors, services

OPTIONS: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}
MAX_RETRIES = 8


def backoff(retries: int) -> int:
    """Seconds before retry n: 30 s, 60 s, 2 min, … at most an hour."""
    return int(min(3600, 30 * 2**retries))


def _moment(value: str | None) -> datetime:
    return datetime.fromisoformat(value) if value else timezone.now().astimezone(UTC)


@shared_task(**OPTIONS, max_retries=MAX_RETRIES)
def margins_refresh_task(self: Task, as_of: str | None = None) -> list[dict[str, Any]]:
    """Beat, hourly: refresh every customer's open period and its flags."""
    try:
        results = services.margins_refresh_open(as_of=_moment(as_of))
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc
    return [r.as_dict() for r in results]


@shared_task(**OPTIONS, max_retries=MAX_RETRIES)
def margins_refresh_previous_task(self: Task, as_of: str | None = None) -> dict[str, Any]:
    """Beat, daily: refresh last month (invoices finalize, late usage arrives)."""
    moment = _moment(as_of)
    previous = selectors.previous_month(moment.date())
    try:
        result = services.margins_refresh(period=previous, as_of=moment)
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc
    return result.as_dict()


@shared_task(**OPTIONS, max_retries=MAX_RETRIES)
def flags_email_task(self: Task, flag_ids: list[int]) -> int:
    """One digest email to finance about newly raised flags."""
    try:
        return alerts.flags_email_send(flag_ids=flag_ids)
    except (OSError, OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc


@shared_task(**OPTIONS, max_retries=MAX_RETRIES)
def flag_webhook_task(self: Task, flag_id: int) -> bool:
    """The signed alert POST of one flag, retried with backoff until delivered."""
    try:
        return alerts.flag_webhook_deliver(flag_id=flag_id)
    except (alerts.WebhookError, OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc
