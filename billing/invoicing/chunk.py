"""The invoicing cycle: which periods are due, and one period's invoices for a set of
subscriptions at once (their usage read together), falling back to one at a time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction

from billing.invoicing.generate import (
    _Open,
    _regenerate,
    customers_lock,
    invoice_finalize,
    invoice_generate,
)
from billing.invoicing.periods import BillingPeriod, day_start, period_for, subscription_periods
from billing.metering_view import UsageRow, usage_by_customer
from billing.models import Invoice, Subscription

logger = logging.getLogger(__name__)


def due_periods(*, as_of: datetime) -> list[tuple[int, date]]:
    """(subscription id, period start) of every period that ended on or before `as_of`
    and is not finalized yet, oldest first."""
    as_of_day = as_of.astimezone(UTC).date()
    settled = set(
        Invoice.objects.exclude(status=Invoice.Status.DRAFT).values_list(
            "subscription_id", "period_start"
        )
    )
    due: list[tuple[int, date]] = []
    for subscription in Subscription.objects.filter(start_date__lt=as_of_day).order_by("id"):
        for period in subscription_periods(subscription, ended_before=as_of_day):
            if (subscription.id, period.start) not in settled:
                due.append((subscription.id, period.start))
    due.sort(key=lambda pair: (pair[1], pair[0]))
    return due


def grace_period() -> timedelta:
    return timedelta(hours=settings.INFERBILL_INVOICE_GRACE_HOURS)


def invoices_generate_chunk(
    *, subscription_ids: Sequence[int], period_start: date, as_of: datetime
) -> int:
    """Generate (and, past the grace period, finalize) one period's invoices for a set
    of subscriptions, reading their usage in one query. Returns invoices touched."""
    subscriptions = list(
        Subscription.objects.filter(id__in=subscription_ids).select_related("customer", "plan")
    )
    groups: dict[tuple[date, date], list[Subscription]] = {}
    for subscription in subscriptions:
        try:
            period = period_for(subscription, period_start)
        except ValueError:
            continue
        groups.setdefault((period.service_start, period.service_end), []).append(subscription)
    touched = 0
    for (service_start, service_end), members in groups.items():
        usage = usage_by_customer(
            customers=[s.customer.external_id for s in members],
            start=day_start(service_start),
            end=day_start(service_end),
        )
        past_grace = day_start(period_start) < as_of and (
            day_start(service_end) + grace_period() <= as_of
        )
        try:
            done, stragglers = _generate_together(
                subscription_ids=[s.id for s in members],
                period_start=period_start,
                service=(service_start, service_end),
                usage=usage,
                finalize=past_grace,
            )
        except Exception:
            # One bad subscription must not hold back the others: one at a time, so every
            # other invoice is made, and the error is raised for the task to retry.
            logger.exception("invoices of %d subscriptions together failed", len(members))
            done, stragglers = 0, members
            usage = {}
        touched += done
        touched += _generate_one_by_one(
            subscriptions=stragglers, period_start=period_start, usage=usage, finalize=past_grace
        )
    return touched


def _generate_one_by_one(
    *,
    subscriptions: Sequence[Subscription],
    period_start: date,
    usage: dict[str, list[UsageRow]],
    finalize: bool,
) -> int:
    """Each invoice in its own transaction; raises the first error after trying all."""
    touched = 0
    error: Exception | None = None
    for subscription in subscriptions:
        rows = usage.get(subscription.customer.external_id)
        try:
            invoice = invoice_generate(
                subscription_id=subscription.id, period_start=period_start, rows=rows
            )
            if invoice.is_open and finalize:
                invoice_finalize(invoice_id=invoice.id, rows=rows)
        except IntegrityError:
            # A concurrent generator created it between our read and write; it did
            # the work, and the next cycle refreshes it if still a draft.
            continue
        except Exception as exc:
            error = error or exc
            continue
        touched += 1
    if error is not None:
        raise error
    return touched


def _generate_together(
    *,
    subscription_ids: Sequence[int],
    period_start: date,
    service: tuple[date, date],
    usage: dict[str, list[UsageRow]],
    finalize: bool,
) -> tuple[int, list[Subscription]]:
    """Create or refresh (and with `finalize`, number and freeze) the invoices of one
    period for subscriptions whose usage was read together, in one transaction and a
    handful of statements: what invoice_generate and invoice_finalize do one by one.

    Locks are taken in their order (customers, subscriptions, invoices, then the number
    sequence, last and briefly), so it serialises with them and with other chunks
    without deadlocks. A kill rolls the whole group back; a re-run redoes it.

    Returns how many it handled, and the subscriptions it left to the one-by-one path
    (those whose service period changed since their usage was read)."""
    stragglers: list[Subscription] = []
    with transaction.atomic():
        customers_lock(
            Subscription.objects.filter(id__in=subscription_ids).values_list(
                "customer_id", flat=True
            )
        )
        subscriptions = list(
            Subscription.objects.select_for_update(of=("self",))
            .filter(id__in=subscription_ids)
            .select_related("plan", "customer")
            .prefetch_related("plan__charges")
            .order_by("id")
        )
        periods: dict[int, BillingPeriod] = {}
        for subscription in subscriptions:
            try:
                period = period_for(subscription, period_start)
            except ValueError:
                continue
            if (period.service_start, period.service_end) != service:
                stragglers.append(subscription)
                continue
            periods[subscription.id] = period
        by_id = {s.id: s for s in subscriptions if s.id in periods}
        Invoice.objects.bulk_create(
            [
                Invoice(
                    subscription=s,
                    customer=s.customer,
                    period_start=periods[s.id].start,
                    period_end=periods[s.id].end,
                    service_start=periods[s.id].service_start,
                    service_end=periods[s.id].service_end,
                    currency=s.plan.currency,
                )
                for s in by_id.values()
            ],
            ignore_conflicts=True,
        )
        invoices = Invoice.objects.select_for_update().filter(
            subscription_id__in=list(by_id), period_start=period_start
        )
        opens: list[_Open] = []
        for invoice in invoices.order_by("subscription_id"):
            if invoice.is_open:
                s = by_id[invoice.subscription_id]
                opens.append(_Open(invoice, s, periods[s.id], usage[s.customer.external_id]))
        _regenerate(opens, period_start=period_start, finalize=finalize)
    return len(by_id), stragglers
