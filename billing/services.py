"""Catalogue writes: customers, versioned plans with charges, subscriptions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, Q

from billing import rating
from billing.models import STANDARD_METRICS, Charge, Customer, Plan, Subscription

CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
FILTER_KEYS = {"model", "hardware", "provider", "properties"}


class ValidationError(Exception):
    """Bad input for a catalogue write; `errors` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _currency(value: str) -> str:
    currency = (value or "").upper()
    if not CURRENCY_RE.match(currency):
        raise ValidationError({"currency": "must be an ISO 4217 code such as USD"})
    return currency


def customer_create(
    *,
    external_id: str,
    name: str = "",
    email: str = "",
    currency: str = "USD",
    metadata: dict[str, Any] | None = None,
) -> Customer:
    if not external_id or len(external_id) > 128:
        raise ValidationError({"external_id": "must be 1 to 128 characters"})
    exists = ValidationError({"external_id": f"customer '{external_id}' already exists"})
    if Customer.objects.filter(external_id=external_id).exists():
        raise exists
    try:
        # A savepoint: a concurrent create of the same id loses cleanly on the unique index.
        with transaction.atomic():
            return Customer.objects.create(
                external_id=external_id,
                name=name,
                email=email,
                currency=_currency(currency),
                metadata=metadata or {},
            )
    except IntegrityError:
        raise exists from None


def customer_update(*, customer: Customer, **changes: Any) -> Customer:
    allowed = {"name", "email", "currency", "metadata"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError({k: "cannot be changed" for k in sorted(unknown)})
    if "currency" in changes:
        changes["currency"] = _currency(changes["currency"])
    for key, value in changes.items():
        setattr(customer, key, value)
    customer.save(update_fields=list(changes) or None)
    return customer


@dataclass
class ChargeInput:
    metric: str
    price_model: str
    display_name: str = ""
    filter: dict[str, Any] = field(default_factory=dict)
    unit_size: Decimal = Decimal(1)
    unit_price: Decimal | None = None
    tiers: list[dict[str, Any]] = field(default_factory=list)
    package_size: Decimal | None = None
    included_units: Decimal = Decimal(0)


def _check_charge(index: int, charge: ChargeInput) -> None:
    prefix = f"charges[{index}]"
    metric = charge.metric
    if not (
        metric in STANDARD_METRICS
        or metric == "count"
        or (metric.startswith("sum:") and len(metric) > 4)
    ):
        raise ValidationError(
            {
                f"{prefix}.metric": f"must be one of {', '.join(STANDARD_METRICS)}, "
                "sum:<property> or count"
            }
        )
    if metric == "count" and not (charge.filter or {}).get("properties"):
        raise ValidationError({f"{prefix}.filter": "a count metric needs a property filter"})
    unknown = set(charge.filter or {}) - FILTER_KEYS
    if unknown:
        raise ValidationError({f"{prefix}.filter": f"unknown keys {sorted(unknown)}"})
    props = (charge.filter or {}).get("properties")
    if props is not None and not isinstance(props, dict):
        raise ValidationError({f"{prefix}.filter.properties": "must be an object"})
    spec = Charge(
        metric=metric,
        price_model=charge.price_model,
        unit_size=charge.unit_size,
        unit_price=charge.unit_price,
        tiers=charge.tiers,
        package_size=charge.package_size,
        included_units=charge.included_units,
    )
    try:
        spec.price_spec().validate()
    except rating.RatingError as exc:
        raise ValidationError({f"{prefix}.{exc.field}": exc.message}) from exc
    except (ArithmeticError, TypeError, KeyError, ValueError) as exc:
        raise ValidationError({f"{prefix}.tiers": f"invalid tier: {exc}"}) from exc


def plan_create(
    *,
    code: str,
    name: str,
    currency: str = "USD",
    interval: str = "monthly",
    flat_fee: Decimal = Decimal(0),
    minimum: Decimal | None = None,
    charges: Sequence[ChargeInput] = (),
) -> Plan:
    """Create a plan, or a new version of the plan with this code. Subscriptions on
    earlier versions keep their prices until moved with `subscription_create`."""
    if not code or len(code) > 64:
        raise ValidationError({"code": "must be 1 to 64 characters"})
    if interval != Plan.Interval.MONTHLY:
        raise ValidationError({"interval": "only 'monthly' is supported"})
    if flat_fee < 0:
        raise ValidationError({"flat_fee": "must not be negative"})
    if minimum is not None and minimum < 0:
        raise ValidationError({"minimum": "must not be negative"})
    for index, charge in enumerate(charges):
        _check_charge(index, charge)
    with transaction.atomic():
        # Lock the current versions so two concurrent edits make versions n+1 and n+2.
        latest = list(Plan.objects.select_for_update().filter(code=code, is_latest=True))
        version = (Plan.objects.filter(code=code).aggregate(v=Max("version"))["v"] or 0) + 1
        Plan.objects.filter(pk__in=[p.pk for p in latest]).update(is_latest=False)
        plan = Plan.objects.create(
            code=code,
            version=version,
            name=name or code,
            currency=_currency(currency),
            interval=interval,
            flat_fee=flat_fee,
            minimum=minimum,
        )
        Charge.objects.bulk_create(
            Charge(
                plan=plan,
                position=index,
                display_name=c.display_name or _default_name(c),
                metric=c.metric,
                filter=c.filter or {},
                price_model=c.price_model,
                unit_size=c.unit_size,
                unit_price=c.unit_price,
                tiers=[_tier_json(t) for t in c.tiers],
                package_size=c.package_size,
                included_units=c.included_units,
            )
            for index, c in enumerate(charges)
        )
    return plan


def _plain(value: Any) -> str:
    # normalize() alone would turn 10000000.000000 into "1E+7".
    return format(Decimal(str(value)).normalize(), "f")


def _tier_json(tier: dict[str, Any]) -> dict[str, Any]:
    """A tier as stored in JSON: decimal strings, never floats."""
    up_to = tier.get("up_to")
    return {
        "up_to": None if up_to is None else _plain(up_to),
        "unit_price": _plain(tier["unit_price"]),
        "flat_fee": _plain(tier.get("flat_fee") or 0),
    }


def _default_name(charge: ChargeInput) -> str:
    parts = [charge.metric.replace("_", " ")]
    for key in ("model", "hardware", "provider"):
        if (charge.filter or {}).get(key):
            parts.append(f"{key} {charge.filter[key]}")
    return ", ".join(parts)


def subscription_create(
    *,
    customer: Customer,
    plan: Plan,
    start_date: date,
    end_date: date | None = None,
    anchor_day: int = 1,
) -> Subscription:
    """Put a customer on a plan version from `start_date`.

    One subscription is active per customer at a time: a subscription running on
    `start_date` is ended that day (a mid-period plan change; both are prorated by
    day and usage is billed to the plan in force when it happened). One that starts
    later than `start_date` is refused."""
    if end_date is not None and end_date <= start_date:
        raise ValidationError({"end_date": "must be after start_date"})
    if not 1 <= anchor_day <= 28:
        raise ValidationError({"anchor_day": "must be between 1 and 28"})
    if plan.currency != customer.currency:
        raise ValidationError(
            {"plan": f"plan currency {plan.currency} differs from customer's {customer.currency}"}
        )
    with transaction.atomic():
        # Lock the customer row: two concurrent subscribes cannot both see "no overlap".
        Customer.objects.select_for_update().get(pk=customer.pk)
        overlapping = Subscription.objects.filter(customer=customer).filter(
            Q(end_date__isnull=True) | Q(end_date__gt=start_date)
        )
        if end_date is not None:  # one that starts after this one ends is no overlap
            overlapping = overlapping.filter(start_date__lt=end_date)
        for existing in overlapping:
            if existing.start_date >= start_date:
                raise ValidationError(
                    {
                        "start_date": f"overlaps subscription {existing.pk} starting "
                        f"{existing.start_date}"
                    }
                )
            existing.end_date = start_date
            existing.save(update_fields=["end_date"])
        return Subscription.objects.create(
            customer=customer,
            plan=plan,
            start_date=start_date,
            end_date=end_date,
            anchor_day=anchor_day,
        )
