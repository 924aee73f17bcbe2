"""billing.assign: which charge bills which usage row. Pure, no database."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.assign import ChargeRule, charge_quantities
from billing.metering_view import UsageRow

D = Decimal


def row(
    model: str = "gpt-4o",
    hardware: str = "h100",
    provider: str = "openai",
    properties: dict[str, Any] | None = None,
    **metrics: int | str,
) -> UsageRow:
    values = {
        "requests": D(1),
        "input_tokens": D(0),
        "cache_read_input_tokens": D(0),
        "cache_write_input_tokens": D(0),
        "output_tokens": D(0),
        "reasoning_output_tokens": D(0),
        "gpu_seconds": D(0),
    }
    values.update({k: D(str(v)) for k, v in metrics.items()})
    return UsageRow(model, hardware, provider, values, properties or {})


def rule(charge_id: int, metric: str = "output_tokens", position: int | None = None, **flt: Any):
    return ChargeRule(
        charge_id=charge_id,
        metric=metric,
        position=charge_id if position is None else position,
        filter=flt,
    )


def test_an_unfiltered_charge_bills_every_row() -> None:
    rows = [row(output_tokens=100), row(model="llama", output_tokens=50)]
    assert charge_quantities(rules=[rule(1)], rows=rows) == {1: D(150)}


def test_model_specific_charge_wins_over_generic_whatever_the_order() -> None:
    rows = [
        row(model="gpt-4o", output_tokens=1_000),
        row(model="llama", output_tokens=300),
        row(model="gpt-4o", hardware="a100", output_tokens=20),
    ]
    # The generic charge is listed first, yet gpt-4o's tokens go to the specific one.
    rules = [rule(1, position=0), rule(2, position=1, model="gpt-4o")]
    assert charge_quantities(rules=rules, rows=rows) == {1: D(300), 2: D(1_020)}
    assert charge_quantities(rules=list(reversed(rules)), rows=rows) == {1: D(300), 2: D(1_020)}


def test_more_dimensions_win_model_and_hardware_over_model_over_nothing() -> None:
    rows = [
        row(model="gpt-4o", hardware="h100", output_tokens=7),
        row(model="gpt-4o", hardware="a100", output_tokens=11),
        row(model="llama", hardware="h100", output_tokens=13),
    ]
    rules = [
        rule(1),
        rule(2, model="gpt-4o"),
        rule(3, model="gpt-4o", hardware="h100"),
        rule(4, hardware="h100"),
    ]
    # gpt-4o/h100 -> 3 (2 dims); gpt-4o/a100 -> 2 (model); llama/h100 -> 4 (hardware);
    # nothing left for the generic charge, and no row is counted twice.
    assert charge_quantities(rules=rules, rows=rows) == {1: D(0), 2: D(11), 3: D(7), 4: D(13)}


def test_tie_goes_to_the_first_listed_charge() -> None:
    rows = [row(model="gpt-4o", hardware="h100", output_tokens=5)]
    # Both constrain one dimension; the one at position 0 wins even with the higher id.
    rules = [rule(9, position=0, hardware="h100"), rule(2, position=1, model="gpt-4o")]
    assert charge_quantities(rules=rules, rows=rows) == {9: D(5), 2: D(0)}
    swapped = [rule(9, position=1, hardware="h100"), rule(2, position=0, model="gpt-4o")]
    assert charge_quantities(rules=swapped, rows=rows) == {9: D(0), 2: D(5)}


def test_provider_and_property_filters() -> None:
    rows = [
        row(provider="azure", output_tokens=10, properties={"tier": "batch"}),
        row(provider="azure", output_tokens=20, properties={"tier": "online"}),
        row(provider="openai", output_tokens=40, properties={"tier": "batch"}),
    ]
    rules = [
        rule(1, provider="azure"),
        rule(2, properties={"tier": "batch"}),
        rule(3, provider="azure", properties={"tier": "batch"}),
    ]
    assert charge_quantities(rules=rules, rows=rows) == {1: D(20), 2: D(40), 3: D(10)}


def test_each_property_counts_as_one_dimension() -> None:
    rows = [row(model="gpt-4o", output_tokens=3, properties={"a": "1", "b": "2"})]
    rules = [rule(1, model="gpt-4o"), rule(2, properties={"a": "1", "b": "2"})]
    assert charge_quantities(rules=rules, rows=rows) == {1: D(0), 2: D(3)}


def test_rows_no_charge_matches_are_not_billed() -> None:
    rows = [row(model="llama", output_tokens=100)]
    assert charge_quantities(rules=[rule(1, model="gpt-4o")], rows=rows) == {1: D(0)}


def test_charges_on_different_metrics_each_bill_the_row() -> None:
    rows = [row(input_tokens=1_000, output_tokens=200, gpu_seconds="1.5")]
    rules = [rule(1, "input_tokens"), rule(2, "output_tokens"), rule(3, "gpu_seconds")]
    assert charge_quantities(rules=rules, rows=rows) == {1: D(1_000), 2: D(200), 3: D("1.5")}


def test_uncached_input_is_input_minus_cache_read_and_write() -> None:
    rows = [row(input_tokens=1_000, cache_read_input_tokens=600, cache_write_input_tokens=150)]
    rules = [rule(1, "uncached_input_tokens"), rule(2, "cache_read_input_tokens")]
    assert charge_quantities(rules=rules, rows=rows) == {1: D(250), 2: D(600)}


def test_count_with_a_property_filter_competes_with_requests() -> None:
    rows = [
        row(properties={"kind": "image"}),
        row(properties={"kind": "image"}),
        row(properties={"kind": "text"}),
    ]
    rules = [rule(1, "requests"), rule(2, "count", properties={"kind": "image"})]
    # Image requests are billed by the count charge only, the text one by requests.
    assert charge_quantities(rules=rules, rows=rows) == {1: D(1), 2: D(2)}


def test_sum_of_a_property() -> None:
    rows = [
        row(properties={"images": 3}),
        row(properties={"images": "4.5"}),
        row(properties={"images": True}),  # a boolean is not a number
        row(properties={"images": "many"}),  # nor is text
        row(properties={}),
    ]
    assert charge_quantities(rules=[rule(1, "sum:images")], rows=rows) == {1: D("7.5")}


def test_sum_of_a_property_ignores_non_finite_values() -> None:
    # "NaN" and "Infinity" parse as Decimals; rating would refuse them and fail the
    # whole invoice, so they count as no number, like text.
    rows = [
        row(properties={"images": 2}),
        row(properties={"images": "NaN"}),
        row(properties={"images": "Infinity"}),
        row(properties={"images": "-inf"}),
    ]
    assert charge_quantities(rules=[rule(1, "sum:images")], rows=rows) == {1: D(2)}


def test_needs_events_for_property_charges_only() -> None:
    assert not rule(1, model="gpt-4o").needs_events
    assert rule(1, properties={"a": "b"}).needs_events
    assert rule(1, "sum:images").needs_events
    assert rule(1, "count", properties={"a": "b"}).needs_events


models = st.sampled_from(["gpt-4o", "llama", "claude"])
hardware = st.sampled_from(["h100", "a100", ""])
rows_strategy = st.lists(
    st.builds(
        lambda m, h, n: row(model=m, hardware=h, output_tokens=n),
        models,
        hardware,
        st.integers(min_value=0, max_value=10**9),
    ),
    max_size=20,
)
filters = st.fixed_dictionaries(
    {},
    optional={"model": models, "hardware": hardware.filter(bool)},
)


@settings(deadline=None)  # pure and fast, but a loaded CI machine must not make it flaky
@given(rows=rows_strategy, flts=st.lists(filters, max_size=6))
def test_no_row_is_billed_twice_and_a_generic_charge_catches_the_rest(
    rows: list[UsageRow], flts: list[dict[str, str]]
) -> None:
    rules = [rule(i + 1, **f) for i, f in enumerate(flts)]
    rules.append(rule(len(rules) + 1))  # a catch-all, listed last
    quantities = charge_quantities(rules=rules, rows=rows)
    assert sum(quantities.values()) == sum(r.metrics["output_tokens"] for r in rows)


def test_negative_values_count_but_a_charge_never_goes_below_zero() -> None:
    # Rating refuses a negative quantity, which would fail the customer's whole invoice.
    credits = [row(properties={"chars": 10}), row(properties={"chars": "-3"})]
    assert charge_quantities(rules=[rule(1, "sum:chars")], rows=credits) == {1: D(7)}
    refund = [row(properties={"chars": -5})]
    assert charge_quantities(rules=[rule(1, "sum:chars")], rows=refund) == {1: D(0)}
