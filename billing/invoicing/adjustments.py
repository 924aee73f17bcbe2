"""Adjustment lines: late usage of a customer's earlier billed invoices, billed on the
invoice that covers the end of its period as rate(quantity now) − rate(quantity billed
so far), and the change it makes to a minimum true-up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Q, QuerySet

from billing import rating
from billing.invoicing.compute import LineDraft, _charge_usage, _scaled_spec
from billing.invoicing.periods import BillingPeriod, day_start
from billing.metering_view import UsageRow, usage_by_customer
from billing.models import Invoice, InvoiceLine

# Earlier invoices checked for late usage. The ingest lateness window (35 days by
# default) means only the last period or two can still change; three is a margin.
ADJUSTMENT_LOOKBACK_PERIODS = 3


BILLED_STATUSES = (Invoice.Status.FINALIZED, Invoice.Status.PAID)


@dataclass
class _BilledLine:
    invoice_id: int
    adjusts_invoice_id: int | None
    kind: str
    charge_id: int | None
    quantity: Decimal
    amount: Decimal


@dataclass
class _History:
    """What the adjustment lines of many open invoices of one period need, read in a few
    statements instead of several per invoice: each customer's earlier billed invoices,
    their usage now, and the billed lines that billed them."""

    earlier: dict[int, list[Invoice]]  # by customer id, oldest first
    usage: dict[tuple[date, date], dict[str, list[UsageRow]]]  # by service range, customer
    lines: dict[int, list[_BilledLine]]  # by the earlier invoice they are on or adjust

    @classmethod
    def read(cls, *, customer_ids: Sequence[int], period_start: date) -> _History:
        earlier: dict[int, list[Invoice]] = {}
        for old in _earlier_invoices(
            customer_ids=customer_ids, before=period_start
        ).prefetch_related("subscription__plan__charges"):
            earlier.setdefault(old.customer_id, []).append(old)
        olds = [old for invoices in earlier.values() for old in invoices]
        ranges: dict[tuple[date, date], list[str]] = {}
        for old in olds:
            ranges.setdefault((old.service_start, old.service_end), []).append(
                old.customer.external_id
            )
        usage = {
            (start, end): usage_by_customer(
                customers=sorted(set(customers)), start=day_start(start), end=day_start(end)
            )
            for (start, end), customers in ranges.items()
        }
        # Lines of the earlier invoices, and lines of billed invoices that adjust them (an
        # open invoice's own lines are never among them).
        lines: dict[int, list[_BilledLine]] = {}
        rows = InvoiceLine.objects.filter(
            Q(invoice__in=olds) | Q(adjusts_invoice__in=olds, invoice__status__in=BILLED_STATUSES)
        ).values_list("invoice_id", "adjusts_invoice_id", "kind", "charge_id", "quantity", "amount")
        for row in rows:
            line = _BilledLine(*row)
            for old_id in {line.invoice_id, line.adjusts_invoice_id} - {None}:
                lines.setdefault(old_id, []).append(line)
        return cls(earlier=earlier, usage=usage, lines=lines)

    def billing(self, old: Invoice) -> list[_BilledLine]:
        return self.lines.get(old.id, [])


def _earlier_invoices(*, customer_ids: Sequence[int], before: date) -> QuerySet[Invoice]:
    """Billed invoices of these customers in the adjustment look-back before `before`."""
    earliest = before - timedelta(days=31 * ADJUSTMENT_LOOKBACK_PERIODS)
    return (
        Invoice.objects.filter(
            customer_id__in=customer_ids,
            status__in=BILLED_STATUSES,
            period_start__lt=before,
            period_start__gte=earliest,
        )
        .select_related("subscription__plan", "customer")
        .order_by("period_start", "id")
    )


def _adjustment_lines(*, invoice: Invoice, history: _History) -> list[LineDraft]:
    """Late usage of the customer's earlier finalized invoices, not yet billed, from
    `history` (read beforehand for this invoice's customer, or for many at once)."""
    if invoice.service_end != invoice.period_end:
        return []  # adjustments ride on the invoice that covers the end of the period
    lines: list[LineDraft] = []
    for old in history.earlier.get(invoice.customer_id, []):
        charges = list(old.subscription.plan.charges.all())
        if not charges:
            continue
        period = BillingPeriod(old.period_start, old.period_end, old.service_start, old.service_end)
        customer = old.customer.external_id
        now_quantities = _charge_usage(
            customer=customer,
            charges=charges,
            start=day_start(old.service_start),
            end=day_start(old.service_end),
            rows=history.usage[(old.service_start, old.service_end)].get(customer, []),
        )
        billed: dict[int, Decimal] = {c.id: Decimal(0) for c in charges}
        for line in history.billing(old):
            if (
                (line.invoice_id == old.id and line.kind == InvoiceLine.Kind.USAGE)
                or line.adjusts_invoice_id == old.id
            ) and line.charge_id in billed:
                billed[line.charge_id] += line.quantity
        for charge in charges:
            delta = now_quantities[charge.id] - billed[charge.id]
            if delta == 0:
                continue
            spec = _scaled_spec(charge, period)
            before = rating.rate(spec=spec, quantity=billed[charge.id])
            after = rating.rate(spec=spec, quantity=now_quantities[charge.id])
            lines.append(
                LineDraft(
                    kind=InvoiceLine.Kind.ADJUSTMENT,
                    description=(
                        f"{charge.display_name}: late usage for "
                        f"{old.period_start:%Y-%m-%d}–{old.period_end:%Y-%m-%d} ({old.number})"
                    ),
                    amount_exact=after.amount - before.amount,
                    charge=charge,
                    metric=charge.metric,
                    filter=charge.filter or {},
                    quantity=delta,
                    billable_quantity=after.billable - before.billable,
                    unit_price=spec.unit_price,
                    unit_size=spec.unit_size,
                    adjusts_invoice=old,
                )
            )
        lines += _minimum_adjustment(old=old, period=period, new=lines, history=history)
    return lines


def _minimum_adjustment(
    *, old: Invoice, period: BillingPeriod, new: list[LineDraft], history: _History
) -> list[LineDraft]:
    """Late usage of a period with a minimum commitment first shrinks its true-up: the
    period is billed max(usage, minimum) in all, never usage on top of the true-up."""
    plan = old.subscription.plan
    if not plan.minimum:
        return []
    currency = old.currency
    minimum = rating.round_money(
        amount=rating.prorate(
            amount=Decimal(plan.minimum),
            days_active=period.service_days,
            days_in_period=period.days,
        ),
        currency=currency,
    )
    usage = Decimal(0)
    true_up = Decimal(0)
    for line in history.billing(old):
        own = (
            line.invoice_id == old.id
            and line.adjusts_invoice_id is None
            and line.kind in (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.MINIMUM)
        )
        if not own and line.adjusts_invoice_id != old.id:
            continue
        # Usage lines and charge adjustments are usage; the rest is true-up.
        if line.kind == InvoiceLine.Kind.USAGE or line.charge_id is not None:
            usage += line.amount
        else:
            true_up += line.amount
    for line in new:
        if line.adjusts_invoice == old:
            usage += rating.round_money(amount=line.amount_exact, currency=currency)
    change = rating.minimum_true_up(usage_amount=usage, minimum=minimum) - true_up
    if not change:
        return []
    return [
        LineDraft(
            kind=InvoiceLine.Kind.MINIMUM,
            description=(
                f"Minimum commitment true-up, change for late usage of "
                f"{old.period_start:%Y-%m-%d}–{old.period_end:%Y-%m-%d} ({old.number})"
            ),
            amount_exact=change,
            adjusts_invoice=old,
        )
    ]
