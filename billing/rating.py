"""Pure price arithmetic for usage rating.

Deliberately free of Django and database imports so it can be unit- and property-tested in
isolation and reused by invoicing, previews and reconciliation alike.

Money rules: amounts are ``Decimal`` (never float). Rating returns *exact, unrounded* amounts;
each invoice line is rounded half-up to the currency's minor unit exactly once via
``round_money`` / ``to_minor_units``, and an invoice total is the sum of its rounded lines.
"""

from __future__ import annotations

import calendar
import datetime
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Literal, get_args

PriceModel = Literal["per_unit", "graduated", "volume", "package"]

_PRICE_MODELS: frozenset[str] = frozenset(get_args(PriceModel))
_TIERED_MODELS: frozenset[str] = frozenset({"graduated", "volume"})
_ZERO = Decimal(0)

# 50 significant digits: enough that multiplying a 6-decimal quantity by a 12+-decimal unit price
# never rounds, so rating is exact whenever the division by unit_size terminates (powers of ten).
# Non-terminating divisions (e.g. proration by 31 days) keep 50 digits, far below a minor unit.
_EXACT = Context(prec=50)

# ISO 4217 minor-unit exceptions; every other currency uses 2 decimals.
_ZERO_DECIMAL_CURRENCIES: frozenset[str] = frozenset(
    {"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF"}
    | {"XPF", "PYG", "RWF", "KMF", "GNF", "VUV", "BIF", "DJF"}
)
_THREE_DECIMAL_CURRENCIES: frozenset[str] = frozenset(
    {"BHD", "JOD", "KWD", "OMR", "TND", "IQD", "LYD"}
)


class RatingError(ValueError):
    """Invalid price configuration or input; ``field`` lets callers attach it to a form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_decimal(field: str, value: object, *, allow_negative: bool = False) -> Decimal:
    # Floats would silently carry binary rounding error into money, so only Decimal is accepted.
    if not isinstance(value, Decimal) or not value.is_finite():
        raise RatingError(field, f"must be a finite Decimal, got {value!r}")
    if not allow_negative and value < 0:
        raise RatingError(field, "must not be negative")
    return value


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound in metric units; None = infinity (last tier)
    unit_price: Decimal  # price per PriceSpec.unit_size units
    flat_fee: Decimal = _ZERO


@dataclass(frozen=True)
class PriceSpec:
    price_model: PriceModel
    unit_size: Decimal = Decimal(1)
    unit_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None
    included_units: Decimal = _ZERO

    def validate(self) -> None:
        if self.price_model not in _PRICE_MODELS:
            raise RatingError("price_model", f"unknown price model {self.price_model!r}")
        if _check_decimal("unit_size", self.unit_size) == 0:
            raise RatingError("unit_size", "must be greater than zero")
        _check_decimal("included_units", self.included_units)
        if self.price_model in ("per_unit", "package"):
            if self.unit_price is None:
                raise RatingError("unit_price", f"is required for {self.price_model} pricing")
            _check_decimal("unit_price", self.unit_price)
        if self.price_model == "package":
            if self.package_size is None:
                raise RatingError("package_size", "is required for package pricing")
            if _check_decimal("package_size", self.package_size) == 0:
                raise RatingError("package_size", "must be greater than zero")
        if self.price_model in _TIERED_MODELS:
            self._validate_tiers()

    def _validate_tiers(self) -> None:
        if not self.tiers:
            raise RatingError("tiers", f"at least one tier is required for {self.price_model}")
        previous = _ZERO
        last = len(self.tiers) - 1
        for index, tier in enumerate(self.tiers):
            _check_decimal("tiers", tier.unit_price)
            _check_decimal("tiers", tier.flat_fee)
            if tier.up_to is None:
                if index != last:
                    raise RatingError("tiers", f"tier {index}: only the last tier may be unbounded")
                continue
            if index == last:
                raise RatingError("tiers", "the last tier must be unbounded (up_to=None)")
            if _check_decimal("tiers", tier.up_to) <= previous:
                raise RatingError("tiers", f"tier {index}: up_to must be strictly increasing")
            previous = tier.up_to


@dataclass(frozen=True)
class TierApplication:
    from_units: Decimal  # exclusive lower bound of the tier
    to_units: Decimal | None  # inclusive upper bound; None = unbounded
    units: Decimal  # billable units priced at this tier's rate
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal  # exact, unrounded, flat fee included


@dataclass(frozen=True)
class RatedCharge:
    quantity: Decimal
    included: Decimal
    billable: Decimal
    amount: Decimal  # exact, unrounded
    tiers_applied: tuple[TierApplication, ...]


def rate(*, spec: PriceSpec, quantity: Decimal) -> RatedCharge:
    """Price ``quantity`` units of a metric under ``spec``; the amount is exact and unrounded."""
    spec.validate()
    _check_decimal("quantity", quantity)
    with localcontext(_EXACT):
        included = min(quantity, spec.included_units)
        billable = quantity - included
        tiers_applied: tuple[TierApplication, ...] = ()
        if spec.price_model == "per_unit":
            assert spec.unit_price is not None  # guaranteed by validate()
            amount = _price(billable, spec.unit_price, spec.unit_size)
        elif spec.price_model == "package":
            assert spec.unit_price is not None and spec.package_size is not None
            # divmod is exact, unlike ceil() of a possibly rounded quotient.
            whole, remainder = divmod(billable, spec.package_size)
            amount = (whole + (1 if remainder else 0)) * spec.unit_price
        elif spec.price_model == "graduated":
            tiers_applied = _graduated(spec, billable)
            amount = sum((t.amount for t in tiers_applied), _ZERO)
        else:
            tiers_applied = _volume(spec, billable)
            amount = tiers_applied[0].amount if tiers_applied else _ZERO
    return RatedCharge(
        quantity=quantity,
        included=included,
        billable=billable,
        amount=amount,
        tiers_applied=tiers_applied,
    )


def _price(units: Decimal, unit_price: Decimal, unit_size: Decimal) -> Decimal:
    # Multiply before dividing so the only possible inexact step is the final division.
    return units * unit_price / unit_size


def _graduated(spec: PriceSpec, billable: Decimal) -> tuple[TierApplication, ...]:
    applied: list[TierApplication] = []
    lower = _ZERO
    for tier in spec.tiers:
        if billable <= lower:
            break  # this and later tiers are untouched, so their flat fees do not apply either
        upper = billable if tier.up_to is None else min(billable, tier.up_to)
        units = upper - lower
        amount = _price(units, tier.unit_price, spec.unit_size) + tier.flat_fee
        applied.append(
            TierApplication(lower, tier.up_to, units, tier.unit_price, tier.flat_fee, amount)
        )
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(applied)


def _volume(spec: PriceSpec, billable: Decimal) -> tuple[TierApplication, ...]:
    if billable == 0:
        return ()  # nothing used, so no tier (and no flat fee) is reached
    lower = _ZERO
    for tier in spec.tiers:
        if tier.up_to is None or billable <= tier.up_to:
            amount = _price(billable, tier.unit_price, spec.unit_size) + tier.flat_fee
            applied = TierApplication(
                lower, tier.up_to, billable, tier.unit_price, tier.flat_fee, amount
            )
            return (applied,)
        lower = tier.up_to
    raise AssertionError("validate() guarantees an unbounded last tier")


def currency_exponent(currency: str) -> int:
    """Number of minor-unit digits for an ISO 4217 code (2 unless listed as an exception)."""
    code = currency.upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise RatingError("currency", f"not an ISO 4217 code: {currency!r}")
    if code in _ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in _THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def round_money(*, amount: Decimal, currency: str) -> Decimal:
    """Round half-up (half away from zero, also for credits) to the currency's minor unit."""
    _check_decimal("amount", amount, allow_negative=True)
    quantum = Decimal(1).scaleb(-currency_exponent(currency))
    with localcontext(_EXACT):  # the default 28-digit context would reject large amounts
        return amount.quantize(quantum, rounding=ROUND_HALF_UP)


def to_minor_units(*, amount: Decimal, currency: str) -> int:
    """Integer amount in minor units, as Stripe expects (USD 12.345 -> 1235)."""
    rounded = round_money(amount=amount, currency=currency)
    with localcontext(_EXACT):
        return int(rounded.scaleb(currency_exponent(currency)))


def prorate(*, amount: Decimal, days_active: int, days_in_period: int) -> Decimal:
    """Unrounded share of ``amount`` for ``days_active`` out of ``days_in_period`` days."""
    _check_decimal("amount", amount, allow_negative=True)
    if days_in_period <= 0:
        raise RatingError("days_in_period", "must be greater than zero")
    if not 0 <= days_active <= days_in_period:
        raise RatingError("days_active", f"must be between 0 and {days_in_period}")
    with localcontext(_EXACT):
        return amount * days_active / days_in_period


def minimum_true_up(*, usage_amount: Decimal, minimum: Decimal | None) -> Decimal:
    """Extra charge needed to lift usage up to a committed minimum (never negative)."""
    _check_decimal("usage_amount", usage_amount, allow_negative=True)
    if minimum is None:
        return _ZERO
    _check_decimal("minimum", minimum)
    with localcontext(_EXACT):
        return max(_ZERO, minimum - usage_amount)


def period_containing(
    *, day: datetime.date, anchor_day: int = 1
) -> tuple[datetime.date, datetime.date]:
    """Half-open monthly billing period starting on ``anchor_day`` that contains ``day``."""
    # Anchors stop at 28 so every month has the anchor day and periods never drift.
    if not 1 <= anchor_day <= 28:
        raise RatingError("anchor_day", "must be between 1 and 28")
    start = day.replace(day=anchor_day)
    if day.day < anchor_day:
        start = _add_month(start, months=-1)
    return start, _add_month(start)


def _add_month(day: datetime.date, *, months: int = 1) -> datetime.date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    # Clamp for safety; callers only pass days <= 28, which exist in every month.
    last = calendar.monthrange(year, month + 1)[1]
    return datetime.date(year, month + 1, min(day.day, last))
