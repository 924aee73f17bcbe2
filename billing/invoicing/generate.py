"""Generate (a draft, regenerated in place), finalize and void invoices; the one
recompute-and-write they and the chunk path share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from django.db import transaction
from django.utils import timezone

from billing.invoicing.adjustments import BILLED_STATUSES, _adjustment_lines, _History
from billing.invoicing.compute import _line_rows, invoice_compute
from billing.invoicing.periods import BillingPeriod, period_for
from billing.invoicing.store import _invoices_update, _lines_insert
from billing.metering_view import UsageRow
from billing.models import Customer, Invoice, InvoiceLine, InvoiceNumberSequence, Subscription


class InvoiceStateError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Open:
    """A locked open invoice to bring up to date, and what recomputing it takes."""

    invoice: Invoice
    subscription: Subscription
    period: BillingPeriod
    rows: list[UsageRow] | None  # its usage, read beforehand; None: read it here


def customers_lock(customer_ids: Iterable[int]) -> None:
    """Lock customer rows, in id order, first of all the locks invoicing takes.

    The adjustment lines of an invoice bill what the customer's earlier invoices have
    not billed yet; two invoices of one customer recomputed at once (two periods in
    two workers) would each see the other's adjustments as unbilled and bill them
    twice. Holding the customer serialises them: the second reads after the first
    commits. First, because subscribing (billing.services) locks the customer and then
    its subscriptions: the same order, so the two cannot deadlock."""
    list(
        Customer.objects.select_for_update()
        .filter(id__in=sorted(set(customer_ids)))
        .order_by("id")
        .values_list("id", flat=True)
    )


def _regenerate(items: Sequence[_Open], *, period_start: date, finalize: bool) -> None:
    """Recompute locked open invoices of one period and write them back, in a handful of
    statements whatever their number; with `finalize`, also number and freeze them.

    The caller holds the customer, subscription and invoice locks; the number sequence
    is locked last, so only for the final writes."""
    if not items:
        return
    history = _History.read(
        customer_ids=[i.invoice.customer_id for i in items if i.period.service_end == i.period.end],
        period_start=period_start,
    )
    now = timezone.now()
    lines: list[InvoiceLine] = []
    for item in items:
        invoice, period = item.invoice, item.period
        # A plan change recorded after the draft was made may have cut its service
        # period; the draft follows (adjustments ride on whether it covers the end).
        invoice.service_start, invoice.service_end = period.service_start, period.service_end
        drafts = invoice_compute(subscription=item.subscription, period=period, rows=item.rows)
        drafts += _adjustment_lines(invoice=invoice, history=history)
        rows, invoice.total = _line_rows(invoice, drafts)
        invoice.computed_at = now
        lines += rows
    invoices = [item.invoice for item in items]
    InvoiceLine.objects.filter(invoice__in=invoices).delete()
    _lines_insert(lines)
    if finalize:
        for invoice, number in zip(invoices, _next_numbers(len(invoices)), strict=True):
            invoice.number = number
            invoice.status = Invoice.Status.FINALIZED
            invoice.finalized_at = now
    _invoices_update(invoices)


def invoice_generate(
    *, subscription_id: int, period_start: date, rows: list[UsageRow] | None = None
) -> Invoice:
    """Create or refresh the draft invoice of one subscription and period.

    Idempotent; a finalized, paid or void invoice is returned unchanged."""
    with transaction.atomic():
        customers_lock(
            Subscription.objects.filter(pk=subscription_id).values_list("customer_id", flat=True)
        )
        # The subscription row lock serialises generators of the same subscription;
        # the unique constraint would catch a racer anyway, this just avoids the error.
        subscription = (
            Subscription.objects.select_for_update()
            .select_related("plan", "customer")
            .get(pk=subscription_id)
        )
        period = period_for(subscription, period_start)
        invoice, _ = Invoice.objects.get_or_create(
            subscription=subscription,
            period_start=period.start,
            defaults={
                "customer": subscription.customer,
                "period_end": period.end,
                "service_start": period.service_start,
                "service_end": period.service_end,
                "currency": subscription.plan.currency,
            },
        )
        if not invoice.is_open:
            return invoice
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if not invoice.is_open:
            return invoice
        _regenerate(
            [_Open(invoice, subscription, period, rows)], period_start=period.start, finalize=False
        )
    return invoice


def _next_numbers(count: int) -> list[str]:
    """`count` consecutive numbers. The sequence row stays locked until the caller's
    transaction ends, so a rollback gives them all back: no gaps."""
    sequence, _ = InvoiceNumberSequence.objects.select_for_update().get_or_create(name="invoice")
    first = sequence.last_value + 1
    sequence.last_value += count
    sequence.save(update_fields=["last_value"])
    return [f"INV-{value:06d}" for value in range(first, first + count)]


def invoice_finalize(*, invoice_id: int, rows: list[UsageRow] | None = None) -> Invoice:
    """Recompute a draft one last time, number it and freeze it. Idempotent on a
    finalized invoice; refuses a void one. `rows`: usage already read by the caller
    in this same cycle."""
    with transaction.atomic():
        # Lock in invoice_generate's order, customer, subscription, then invoice: another
        # order deadlocks against a generator of the same invoice.
        subscription_id, customer_id = Invoice.objects.values_list(
            "subscription_id", "customer_id"
        ).get(pk=invoice_id)
        customers_lock([customer_id])
        subscription = (
            Subscription.objects.select_for_update(of=("self",))
            .select_related("plan", "customer")
            .get(pk=subscription_id)
        )
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status in BILLED_STATUSES:
            return invoice
        if invoice.status != Invoice.Status.DRAFT:
            raise InvoiceStateError(f"invoice {invoice_id} is {invoice.status}; cannot finalize")
        period = period_for(subscription, invoice.period_start)
        _regenerate(
            [_Open(invoice, subscription, period, rows)], period_start=period.start, finalize=True
        )
    return invoice


def invoice_void(*, invoice_id: int) -> Invoice:
    """Void a draft or finalized invoice. Its number, if any, stays used (no gaps)."""
    with transaction.atomic():
        # What a void un-bills, the customer's next invoice bills again: not while one
        # of them is being recomputed (see customers_lock).
        customers_lock(Invoice.objects.filter(pk=invoice_id).values_list("customer_id", flat=True))
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status == Invoice.Status.VOID:
            return invoice
        if invoice.status == Invoice.Status.PAID:
            raise InvoiceStateError(f"invoice {invoice_id} is paid; refund it instead of voiding")
        invoice.status = Invoice.Status.VOID
        invoice.voided_at = timezone.now()
        invoice.save(update_fields=["status", "voided_at"])
    return invoice
