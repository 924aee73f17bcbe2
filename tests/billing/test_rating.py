"""Tests for billing.rating: hand-computed examples plus Hypothesis properties."""

from __future__ import annotations

import datetime
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.rating import (
    PriceModel,
    PriceSpec,
    RatingError,
    Tier,
    currency_exponent,
    minimum_true_up,
    period_containing,
    prorate,
    rate,
    round_money,
    to_minor_units,
)

D = Decimal
MILLION = D(1_000_000)


def amount(spec: PriceSpec, quantity: str | int) -> Decimal:
    return rate(spec=spec, quantity=D(quantity)).amount


# --- per_unit -----------------------------------------------------------------------------------


def test_per_unit_price_per_million_tokens() -> None:
    spec = PriceSpec(price_model="per_unit", unit_size=MILLION, unit_price=D("2.50"))
    # 1,234,567 * 2.50 / 1,000,000 = 3.0864175
    assert amount(spec, 1_234_567) == D("3.0864175")


def test_per_token_price_is_kept_exactly() -> None:
    spec = PriceSpec(price_model="per_unit", unit_price=D("0.0000001"))
    assert amount(spec, 1_234_567) == D("0.1234567")
    tiny = PriceSpec(price_model="per_unit", unit_price=D("0.000000000001"))
    assert amount(tiny, 3) == D("0.000000000003")


def test_fractional_gpu_seconds_priced_per_hour() -> None:
    spec = PriceSpec(price_model="per_unit", unit_size=D(3600), unit_price=D("2.88"))
    # 2.88 * 3600.123456 / 3600 = 2.88 + 2.88 * 0.123456 / 3600 = 2.88 + 0.0000987648
    assert amount(spec, "3600.123456") == D("2.8800987648")


def test_included_units_are_deducted_before_pricing() -> None:
    spec = PriceSpec(price_model="per_unit", unit_price=D("0.01"), included_units=D(1000))
    charge = rate(spec=spec, quantity=D(1500))
    assert (charge.included, charge.billable, charge.amount) == (D(1000), D(500), D(5))
    assert charge.tiers_applied == ()


def test_included_units_bigger_than_quantity_bill_nothing() -> None:
    spec = PriceSpec(price_model="per_unit", unit_price=D(1), included_units=D(5000))
    charge = rate(spec=spec, quantity=D(1200))
    assert (charge.included, charge.billable, charge.amount) == (D(1200), D(0), D(0))


# --- graduated ----------------------------------------------------------------------------------

GRADUATED = PriceSpec(
    price_model="graduated",
    tiers=(
        Tier(up_to=D(1000), unit_price=D("0.10"), flat_fee=D(5)),
        Tier(up_to=D(5000), unit_price=D("0.08"), flat_fee=D(2)),
        Tier(up_to=None, unit_price=D("0.05"), flat_fee=D(1)),
    ),
)


def test_graduated_three_tiers_with_flat_fees() -> None:
    # tier 1: 1000 * 0.10 + 5 = 105
    # tier 2: 4000 * 0.08 + 2 = 322
    # tier 3: 1500 * 0.05 + 1 =  76
    # total                    = 503
    charge = rate(spec=GRADUATED, quantity=D(6500))
    assert charge.amount == D(503)
    assert [t.amount for t in charge.tiers_applied] == [D(105), D(322), D(76)]
    assert [t.units for t in charge.tiers_applied] == [D(1000), D(4000), D(1500)]
    assert [(t.from_units, t.to_units) for t in charge.tiers_applied] == [
        (D(0), D(1000)),
        (D(1000), D(5000)),
        (D(5000), None),
    ]


def test_graduated_flat_fee_only_once_a_unit_enters_the_tier() -> None:
    # Exactly at the bound: only tier 1 (1000 * 0.10 + 5); one more unit adds 0.08 + 2.
    assert amount(GRADUATED, 1000) == D(105)
    assert amount(GRADUATED, 1001) == D("107.08")
    assert amount(GRADUATED, 0) == D(0)
    assert rate(spec=GRADUATED, quantity=D(0)).tiers_applied == ()


def test_graduated_applies_to_billable_quantity_after_included_units() -> None:
    spec = PriceSpec(price_model="graduated", tiers=GRADUATED.tiers, included_units=D(500))
    # billable 1500: 1000 * 0.10 + 5 + 500 * 0.08 + 2 = 147
    assert amount(spec, 2000) == D(147)


# --- volume -------------------------------------------------------------------------------------

VOLUME = PriceSpec(
    price_model="volume",
    unit_size=D(1),
    tiers=(
        Tier(up_to=D(1000), unit_price=D("0.10")),
        Tier(up_to=D(5000), unit_price=D("0.08"), flat_fee=D(10)),
        Tier(up_to=None, unit_price=D("0.05")),
    ),
)


def test_volume_exactly_at_boundary_and_one_above() -> None:
    assert amount(VOLUME, 1000) == D("100.00")  # 1000 * 0.10
    assert amount(VOLUME, 1001) == D("90.08")  # 1001 * 0.08 + 10
    assert amount(VOLUME, 5000) == D(410)  # 5000 * 0.08 + 10
    assert amount(VOLUME, 5001) == D("250.05")  # 5001 * 0.05
    (applied,) = rate(spec=VOLUME, quantity=D(1001)).tiers_applied
    assert (applied.from_units, applied.to_units, applied.units) == (D(1000), D(5000), D(1001))


def test_volume_zero_usage_reaches_no_tier() -> None:
    charge = rate(spec=VOLUME, quantity=D(0))
    assert (charge.amount, charge.tiers_applied) == (D(0), ())


def test_volume_discounts_can_lower_the_total_at_a_boundary() -> None:
    # Known property of volume pricing (the "cliff"), not a bug: 1000 units cost more than 1001.
    assert amount(VOLUME, 1000) > amount(VOLUME, 1001)


# --- package ------------------------------------------------------------------------------------

PACKAGE = PriceSpec(price_model="package", unit_size=MILLION, unit_price=D(2), package_size=D(1000))


def test_package_exact_multiple_and_one_over() -> None:
    assert amount(PACKAGE, 3000) == D(6)  # 3 packages; unit_size is ignored
    assert amount(PACKAGE, 3001) == D(8)  # 4th package started
    assert amount(PACKAGE, 1) == D(2)
    assert amount(PACKAGE, 0) == D(0)


def test_package_with_fractional_quantity() -> None:
    spec = PriceSpec(price_model="package", unit_price=D("0.50"), package_size=D("0.5"))
    assert amount(spec, "1.000001") == D("1.50")  # 3 started half-unit packages


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (PriceSpec(price_model="flat", unit_price=D(1)), "price_model"),  # type: ignore[arg-type]
        (PriceSpec(price_model="per_unit", unit_price=D(1), unit_size=D(0)), "unit_size"),
        (PriceSpec(price_model="per_unit", unit_price=D(1), unit_size=D(-1)), "unit_size"),
        (PriceSpec(price_model="per_unit"), "unit_price"),
        (PriceSpec(price_model="per_unit", unit_price=D("-0.01")), "unit_price"),
        (PriceSpec(price_model="per_unit", unit_price=0.1), "unit_price"),  # type: ignore[arg-type]
        (PriceSpec(price_model="package", package_size=D(10)), "unit_price"),
        (PriceSpec(price_model="package", unit_price=D(1)), "package_size"),
        (PriceSpec(price_model="package", unit_price=D(1), package_size=D(0)), "package_size"),
        (PriceSpec(price_model="graduated"), "tiers"),
        (PriceSpec(price_model="volume"), "tiers"),
        (
            PriceSpec(
                price_model="graduated",
                tiers=(Tier(up_to=D(10), unit_price=D(1)), Tier(up_to=D(10), unit_price=D(1))),
            ),
            "tiers",
        ),
        (
            PriceSpec(
                price_model="volume",
                tiers=(Tier(up_to=D(10), unit_price=D(1)), Tier(up_to=D(5), unit_price=D(1))),
            ),
            "tiers",
        ),
        (PriceSpec(price_model="volume", tiers=(Tier(up_to=D(10), unit_price=D(1)),)), "tiers"),
        (
            PriceSpec(
                price_model="graduated",
                tiers=(Tier(up_to=None, unit_price=D(1)), Tier(up_to=None, unit_price=D(1))),
            ),
            "tiers",
        ),
        (PriceSpec(price_model="graduated", tiers=(Tier(up_to=D(0), unit_price=D(1)),)), "tiers"),
        (PriceSpec(price_model="graduated", tiers=(Tier(up_to=None, unit_price=D(-1)),)), "tiers"),
        (
            PriceSpec(
                price_model="graduated",
                tiers=(Tier(up_to=None, unit_price=D(1), flat_fee=D(-1)),),
            ),
            "tiers",
        ),
        (
            PriceSpec(price_model="per_unit", unit_price=D(1), included_units=D(-1)),
            "included_units",
        ),
    ],
)
def test_validation_errors_name_the_field(spec: PriceSpec, field: str) -> None:
    with pytest.raises(RatingError) as excinfo:
        spec.validate()
    assert excinfo.value.field == field
    assert excinfo.value.message
    assert isinstance(excinfo.value, ValueError)


def test_negative_quantity_is_rejected() -> None:
    spec = PriceSpec(price_model="per_unit", unit_price=D(1))
    with pytest.raises(RatingError) as excinfo:
        rate(spec=spec, quantity=D("-0.000001"))
    assert excinfo.value.field == "quantity"


def test_rate_validates_the_spec() -> None:
    with pytest.raises(RatingError) as excinfo:
        rate(spec=PriceSpec(price_model="per_unit"), quantity=D(1))
    assert excinfo.value.field == "unit_price"


# --- rounding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("0.005", "USD", "0.01"),
        ("0.0049", "USD", "0.00"),
        ("-0.005", "USD", "-0.01"),  # half away from zero for credits
        ("3.0864175", "usd", "3.09"),
        ("123.5", "JPY", "124"),
        ("123.49", "JPY", "123"),
        ("1.2345", "KWD", "1.235"),
        ("1.23449", "KWD", "1.234"),
    ],
)
def test_round_money_half_up(value: str, currency: str, expected: str) -> None:
    result = round_money(amount=D(value), currency=currency)
    assert result == D(expected)
    assert str(result) == expected  # exactly the minor-unit decimals, e.g. "0.00" not "0"


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("12.345", "USD", 1235),
        ("12.3449", "USD", 1234),
        ("0", "EUR", 0),
        ("1234.5", "JPY", 1235),
        ("1.2345", "KWD", 1235),
        ("-0.005", "USD", -1),
    ],
)
def test_to_minor_units(value: str, currency: str, expected: int) -> None:
    result = to_minor_units(amount=D(value), currency=currency)
    assert result == expected
    assert type(result) is int


def test_currency_exponent() -> None:
    assert [currency_exponent(c) for c in ("USD", "EUR", "JPY", "KRW", "KWD", "BHD")] == [
        2,
        2,
        0,
        0,
        3,
        3,
    ]
    with pytest.raises(RatingError) as excinfo:
        currency_exponent("US")
    assert excinfo.value.field == "currency"


def test_invoice_total_is_sum_of_rounded_lines() -> None:
    lines = [D("0.005"), D("0.005")]
    rounded_total = sum(round_money(amount=line, currency="USD") for line in lines)
    assert rounded_total == D("0.02")  # not round(0.01) of the unrounded sum


# --- proration & minimums -----------------------------------------------------------------------


def test_prorate_ten_days_of_a_31_day_month() -> None:
    assert prorate(amount=D(31), days_active=10, days_in_period=31) == D(10)
    partial = prorate(amount=D(100), days_active=10, days_in_period=31)  # 32.2580645161...
    assert partial.as_tuple().exponent < -20  # left unrounded
    assert round_money(amount=partial, currency="USD") == D("32.26")
    assert prorate(amount=D(100), days_active=0, days_in_period=31) == D(0)
    assert prorate(amount=D(100), days_active=31, days_in_period=31) == D(100)


@pytest.mark.parametrize(
    ("days_active", "days_in_period", "field"),
    [(11, 10, "days_active"), (-1, 10, "days_active"), (0, 0, "days_in_period")],
)
def test_prorate_rejects_bad_days(days_active: int, days_in_period: int, field: str) -> None:
    with pytest.raises(RatingError) as excinfo:
        prorate(amount=D(1), days_active=days_active, days_in_period=days_in_period)
    assert excinfo.value.field == field


def test_minimum_true_up() -> None:
    assert minimum_true_up(usage_amount=D("30.5"), minimum=D(100)) == D("69.5")
    assert minimum_true_up(usage_amount=D(150), minimum=D(100)) == D(0)
    assert minimum_true_up(usage_amount=D(100), minimum=D(100)) == D(0)
    assert minimum_true_up(usage_amount=D(5), minimum=None) == D(0)


# --- periods ------------------------------------------------------------------------------------


def test_calendar_month_period() -> None:
    # The default anchor, the 1st; February of a leap year.
    assert period_containing(day=datetime.date(2024, 2, 10)) == (
        datetime.date(2024, 2, 1),
        datetime.date(2024, 3, 1),
    )


@pytest.mark.parametrize(
    ("day", "anchor", "start", "end"),
    [
        ("2024-03-20", 1, "2024-03-01", "2024-04-01"),
        ("2024-03-20", 15, "2024-03-15", "2024-04-15"),
        ("2024-03-15", 15, "2024-03-15", "2024-04-15"),  # anchor day opens a period
        ("2024-03-14", 15, "2024-02-15", "2024-03-15"),
        ("2023-12-31", 15, "2023-12-15", "2024-01-15"),  # December -> January
        ("2024-01-10", 15, "2023-12-15", "2024-01-15"),  # January back into December
        ("2023-12-31", 1, "2023-12-01", "2024-01-01"),
    ],
)
def test_period_containing(day: str, anchor: int, start: str, end: str) -> None:
    iso = datetime.date.fromisoformat
    assert period_containing(day=iso(day), anchor_day=anchor) == (iso(start), iso(end))


def test_period_helpers_reject_bad_input() -> None:
    with pytest.raises(RatingError) as excinfo:
        period_containing(day=datetime.date(2024, 1, 1), anchor_day=29)
    assert excinfo.value.field == "anchor_day"


# --- properties ---------------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=10**9, places=6)
prices = st.decimals(min_value=0, max_value=1000, places=12)
# Powers of ten keep the division exact, so equalities below can be exact.
exact_unit_sizes = st.sampled_from([D(1), D(1000), MILLION])


@st.composite
def tier_lists(draw: st.DrawFn, *, flat_fees: bool = True) -> tuple[Tier, ...]:
    bounds = sorted(
        draw(st.lists(st.decimals(min_value=1, max_value=10**7, places=3), max_size=4, unique=True))
    )
    ups: list[Decimal | None] = [*bounds, None]
    fees = st.decimals(min_value=0, max_value=100, places=2) if flat_fees else st.just(D(0))
    return tuple(Tier(up_to=up, unit_price=draw(prices), flat_fee=draw(fees)) for up in ups)


@given(tiers=tier_lists(flat_fees=False), unit_size=exact_unit_sizes, quantity=quantities)
def test_graduated_between_cheapest_and_dearest_rate(
    tiers: tuple[Tier, ...], unit_size: Decimal, quantity: Decimal
) -> None:
    spec = PriceSpec(price_model="graduated", unit_size=unit_size, tiers=tiers)
    rates = [t.unit_price for t in tiers]
    with localcontext(prec=50):
        low = quantity * min(rates) / unit_size
        high = quantity * max(rates) / unit_size
    assert low <= rate(spec=spec, quantity=quantity).amount <= high


@st.composite
def price_specs(draw: st.DrawFn) -> PriceSpec:
    model: PriceModel = draw(st.sampled_from(["per_unit", "graduated", "volume", "package"]))
    unit_size = draw(st.sampled_from([D(1), D(3600), MILLION]))
    included = draw(st.decimals(min_value=0, max_value=10**6, places=2))
    if model == "per_unit":
        return PriceSpec(model, unit_size, draw(prices), included_units=included)
    if model == "package":
        package_size = draw(st.decimals(min_value="0.001", max_value=10**6, places=3))
        return PriceSpec(
            model, unit_size, draw(prices), package_size=package_size, included_units=included
        )
    tiers = draw(tier_lists())
    if model == "volume":
        # Volume discounts are legitimately non-monotonic (see the cliff test above); the
        # property only holds when rates and flat fees never drop from one tier to the next.
        unit_prices = sorted(t.unit_price for t in tiers)
        fees = sorted(t.flat_fee for t in tiers)
        tiers = tuple(Tier(t.up_to, p, f) for t, p, f in zip(tiers, unit_prices, fees, strict=True))
    return PriceSpec(model, unit_size, tiers=tiers, included_units=included)


@given(spec=price_specs(), q1=quantities, q2=quantities)
def test_amount_is_monotonic_in_quantity(spec: PriceSpec, q1: Decimal, q2: Decimal) -> None:
    low, high = sorted([q1, q2])
    assert rate(spec=spec, quantity=low).amount <= rate(spec=spec, quantity=high).amount


@given(unit_price=prices, unit_size=exact_unit_sizes, q1=quantities, q2=quantities)
def test_splitting_a_period_never_changes_per_unit_total(
    unit_price: Decimal, unit_size: Decimal, q1: Decimal, q2: Decimal
) -> None:
    spec = PriceSpec(price_model="per_unit", unit_size=unit_size, unit_price=unit_price)
    with localcontext(prec=50):  # the default 28-digit context would round the sum itself
        split = rate(spec=spec, quantity=q1).amount + rate(spec=spec, quantity=q2).amount
        whole = rate(spec=spec, quantity=q1 + q2).amount
    assert split == whole


@given(
    value=st.decimals(min_value=-(10**12), max_value=10**12, places=15),
    currency=st.sampled_from(["USD", "EUR", "JPY", "KRW", "KWD", "BHD"]),
)
def test_round_money_is_within_half_a_minor_unit(value: Decimal, currency: str) -> None:
    exponent = currency_exponent(currency)
    result = round_money(amount=value, currency=currency)
    places = result.as_tuple().exponent
    assert isinstance(places, int) and -places <= exponent
    with localcontext(prec=50):
        assert abs(result - value) <= D(5).scaleb(-exponent - 1)
