"""Computing an invoice's lines for one period: flat fee, usage charges, minimum true-up;
and the stored rows of computed lines."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from billing import rating
from billing.assign import ChargeRule, charge_quantities
from billing.invoicing.periods import BillingPeriod, day_start
from billing.metering_view import UsageRow, usage_by_customer, usage_events
from billing.models import QUANTITY, Charge, Invoice, InvoiceLine, Subscription

_QUANTUM = Decimal(1).scaleb(-QUANTITY["decimal_places"])


@dataclass
class LineDraft:
    kind: str
    description: str
    amount_exact: Decimal
    charge: Charge | None = None
    metric: str = ""
    filter: dict[str, Any] = field(default_factory=dict)
    quantity: Decimal = Decimal(0)
    included_units: Decimal = Decimal(0)
    billable_quantity: Decimal = Decimal(0)
    unit_price: Decimal | None = None
    unit_size: Decimal = Decimal(1)
    tiers_applied: list[dict[str, Any]] = field(default_factory=list)
    adjusts_invoice: Invoice | None = None


def _rules(charges: Sequence[Charge]) -> list[ChargeRule]:
    return [
        ChargeRule(charge_id=c.id, metric=c.metric, position=c.position, filter=c.filter or {})
        for c in charges
    ]


def _charge_usage(
    *,
    customer: str,
    charges: Sequence[Charge],
    start: datetime,
    end: datetime,
    rows: list[UsageRow] | None,
) -> dict[int, Decimal]:
    """Quantity per charge for [start, end). `rows` are the pre-read aggregated rows when
    the caller batched the read; plans with property charges read raw events."""
    rules = _rules(charges)
    if any(rule.needs_events for rule in rules):
        rows = usage_events(customer=customer, start=start, end=end)
    elif rows is None:
        rows = usage_by_customer(customers=[customer], start=start, end=end)[customer]
    quantities = charge_quantities(rules=rules, rows=rows)
    # Lines store quantities to 6 places: rate exactly what is stored, so that the same
    # usage recomputed later (adjustments) compares equal to what was billed.
    return {k: v.quantize(_QUANTUM, rounding=ROUND_HALF_UP) for k, v in quantities.items()}


def _tiers_json(rated: rating.RatedCharge) -> list[dict[str, Any]]:
    return [
        {
            "from": str(t.from_units),
            "to": None if t.to_units is None else str(t.to_units),
            "units": str(t.units),
            "unit_price": str(t.unit_price),
            "flat_fee": str(t.flat_fee),
            "amount": str(t.amount),
        }
        for t in rated.tiers_applied
    ]


def _scaled_spec(charge: Charge, period: BillingPeriod) -> rating.PriceSpec:
    """Included units are per period: a partial period gets its prorated share."""
    spec = charge.price_spec()
    if period.service_days == period.days or not spec.included_units:
        return spec
    included = spec.included_units * period.service_days / period.days
    return dataclasses.replace(spec, included_units=included)


def _usage_line(charge: Charge, spec: rating.PriceSpec, quantity: Decimal) -> LineDraft:
    rated = rating.rate(spec=spec, quantity=quantity)
    return LineDraft(
        kind=InvoiceLine.Kind.USAGE,
        description=charge.display_name,
        amount_exact=rated.amount,
        charge=charge,
        metric=charge.metric,
        filter=charge.filter or {},
        quantity=quantity,
        included_units=rated.included,
        billable_quantity=rated.billable,
        unit_price=spec.unit_price,
        unit_size=spec.unit_size,
        tiers_applied=_tiers_json(rated),
    )


def invoice_compute(
    *, subscription: Subscription, period: BillingPeriod, rows: list[UsageRow] | None = None
) -> list[LineDraft]:
    """The lines of a subscription's invoice for one period (no adjustments)."""
    plan = subscription.plan
    currency = plan.currency
    charges = list(plan.charges.all())
    lines: list[LineDraft] = []
    if plan.flat_fee:
        fee = rating.prorate(
            amount=Decimal(plan.flat_fee),
            days_active=period.service_days,
            days_in_period=period.days,
        )
        label = plan.name
        if period.service_days != period.days:
            label += f" ({period.service_days} of {period.days} days)"
        lines.append(
            LineDraft(
                kind=InvoiceLine.Kind.FLAT_FEE,
                description=label,
                amount_exact=fee,
                quantity=Decimal(period.service_days),
                unit_price=Decimal(plan.flat_fee),
                # The fee is per period: quantity (days) * unit_price / unit_size = amount.
                unit_size=Decimal(period.days),
            )
        )
    quantities = _charge_usage(
        customer=subscription.customer.external_id,
        charges=charges,
        start=day_start(period.service_start),
        end=day_start(period.service_end),
        rows=rows,
    )
    usage_total = Decimal(0)
    for charge in charges:
        line = _usage_line(charge, _scaled_spec(charge, period), quantities[charge.id])
        usage_total += rating.round_money(amount=line.amount_exact, currency=currency)
        lines.append(line)
    if plan.minimum:
        minimum = rating.prorate(
            amount=Decimal(plan.minimum),
            days_active=period.service_days,
            days_in_period=period.days,
        )
        true_up = rating.minimum_true_up(
            usage_amount=usage_total,
            minimum=rating.round_money(amount=minimum, currency=currency),
        )
        if true_up:
            lines.append(
                LineDraft(
                    kind=InvoiceLine.Kind.MINIMUM,
                    description=f"Minimum commitment true-up (minimum {minimum:.2f})",
                    amount_exact=true_up,
                )
            )
    return lines


def _line_rows(invoice: Invoice, drafts: list[LineDraft]) -> tuple[list[InvoiceLine], Decimal]:
    """The rows of an invoice's lines, each rounded once, and their total."""
    rows = []
    total = Decimal(0)
    for position, d in enumerate(drafts):
        amount = rating.round_money(amount=d.amount_exact, currency=invoice.currency)
        total += amount
        rows.append(
            InvoiceLine(
                invoice=invoice,
                position=position,
                kind=d.kind,
                charge=d.charge,
                description=d.description[:512],
                metric=d.metric,
                filter=d.filter,
                quantity=d.quantity,
                included_units=d.included_units,
                billable_quantity=d.billable_quantity,
                unit_price=d.unit_price,
                unit_size=d.unit_size,
                tiers_applied=d.tiers_applied,
                amount_exact=d.amount_exact,
                amount=amount,
                adjusts_invoice=d.adjusts_invoice,
            )
        )
    return rows, total
