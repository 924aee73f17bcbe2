"""Invoice generation: price models on real stored usage, filters, rounding, drafts
regenerated in place, the cycle (due periods, grace, the generate_invoices command)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing import invoicing
from billing.models import Invoice, InvoiceLine
from billing.services import ChargeInput
from billing.tasks import invoices_cycle_task, invoices_dispatch
from metering.models import Source
from metering.rollup import usage_rollup_fold
from metering.services import events_ingest
from tests.billing.helpers import (
    APRIL,
    MILLION,
    amounts,
    at,
    customer,
    ev,
    fresh,
    generate,
    lines,
    per_unit,
    plan,
    quantities,
    store,
    subscribe,
    usage_amounts,
)

pytestmark = pytest.mark.django_db
D = Decimal


def one_usage_line(invoice: Invoice) -> InvoiceLine:
    (line,) = [line for line in lines(invoice) if line.kind == InvoiceLine.Kind.USAGE]
    return line


# --- price models --------------------------------------------------------------------------


def test_per_unit_price_per_million_tokens() -> None:
    sub = subscribe(customer(), plan(charges=[per_unit("output_tokens", "2.50")]))
    store(
        ev("acme", "2026-04-02 10:15", output_tokens=1_000_000),
        ev("acme", "2026-04-29 23:59:59", model="llama", output_tokens=234_567),
        ev("other", "2026-04-10 10:00", output_tokens=5_000_000),  # another customer
        ev("acme", "2026-03-31 23:59:59", output_tokens=9_000_000),  # another period
    )
    invoice = generate(sub)
    line = one_usage_line(invoice)
    # 1,234,567 * 2.50 / 1,000,000 = 3.0864175 -> 3.09
    assert (line.quantity, line.unit_price, line.unit_size) == (D(1_234_567), D("2.5"), MILLION)
    assert line.amount_exact == D("3.0864175")
    assert line.amount == D("3.09")
    assert (invoice.total, invoice.currency, invoice.status) == (D("3.09"), "USD", "draft")
    assert invoice.total_minor_units == 309


def test_graduated_tiers_with_flat_fees() -> None:
    charge = ChargeInput(
        metric="input_tokens",
        price_model="graduated",
        unit_size=MILLION,
        tiers=[
            {"up_to": 1_000_000, "unit_price": "3.00", "flat_fee": "1.00"},
            {"up_to": 5_000_000, "unit_price": "2.00", "flat_fee": "0.50"},
            {"up_to": None, "unit_price": "1.00"},
        ],
    )
    sub = subscribe(customer(), plan(charges=[charge]))
    store(ev("acme", "2026-04-03 00:00", input_tokens=6_500_000))
    line = one_usage_line(generate(sub))
    # 1M * $3/M + $1 = 4.00; 4M * $2/M + $0.50 = 8.50; 1.5M * $1/M = 1.50 -> 14.00
    assert line.amount == D("14.00")
    assert [(D(t["units"]), D(t["amount"])) for t in line.tiers_applied] == [
        (D(1_000_000), D("4.00")),
        (D(4_000_000), D("8.50")),
        (D(1_500_000), D("1.50")),
    ]


def test_volume_tiers_price_everything_at_the_tier_reached_plus_its_flat_fee() -> None:
    charge = ChargeInput(
        metric="input_tokens",
        price_model="volume",
        unit_size=MILLION,
        tiers=[
            {"up_to": 1_000_000, "unit_price": "4.00", "flat_fee": "2.00"},
            {"up_to": None, "unit_price": "3.00", "flat_fee": "5.00"},
        ],
    )
    p = plan(charges=[charge])
    big, small = subscribe(customer("big"), p), subscribe(customer("small"), p)
    store(
        ev("big", "2026-04-03 00:00", input_tokens=2_500_000),
        ev("small", "2026-04-03 00:00", input_tokens=1_000_000),
    )
    # 2.5M * $3/M + $5 = 12.50; exactly 1M stays in tier 1: 1M * $4/M + $2 = 6.00
    assert one_usage_line(generate(big)).amount == D("12.50")
    assert one_usage_line(generate(small)).amount == D("6.00")


def test_package_price_per_started_block() -> None:
    charge = ChargeInput(
        metric="input_tokens",
        price_model="package",
        package_size=MILLION,
        unit_price=D("1.20"),
    )
    p = plan(charges=[charge])
    over, exact = subscribe(customer("over"), p), subscribe(customer("exact"), p)
    store(
        ev("over", "2026-04-03 00:00", input_tokens=2_500_001),
        ev("exact", "2026-04-03 00:00", input_tokens=2_000_000),
    )
    assert one_usage_line(generate(over)).amount == D("3.60")  # 3 packages
    assert one_usage_line(generate(exact)).amount == D("2.40")  # 2 packages


def test_included_units_per_period() -> None:
    p = plan(charges=[per_unit("output_tokens", "10", included_units=D(1_000_000))])
    over, under = subscribe(customer("over"), p), subscribe(customer("under"), p)
    store(
        ev("over", "2026-04-03 00:00", output_tokens=1_500_000),
        ev("under", "2026-04-03 00:00", output_tokens=800_000),
    )
    line = one_usage_line(generate(over))
    assert (line.included_units, line.billable_quantity, line.amount) == (
        D(1_000_000),
        D(500_000),
        D("5.00"),
    )
    line = one_usage_line(generate(under))
    assert (line.included_units, line.billable_quantity, line.amount) == (
        D(800_000),
        D(0),
        D("0.00"),
    )


def test_minimum_commitment_true_up() -> None:
    p = plan(flat_fee="5.00", minimum="25.00", charges=[per_unit("output_tokens", "2.50")])
    low, high = subscribe(customer("low"), p), subscribe(customer("high"), p)
    store(
        ev("low", "2026-04-03 00:00", output_tokens=1_234_567),
        ev("high", "2026-04-03 00:00", output_tokens=12_000_000),
    )
    low_invoice = generate(low)
    # usage 3.0864175 -> 3.09; the true-up lifts the rounded usage to 25.00
    assert amounts(low_invoice) == [
        ("flat_fee", "P", D("5.00")),
        ("usage", "output tokens", D("3.09")),
        ("minimum", "Minimum commitment true-up (minimum 25.00)", D("21.91")),
    ]
    assert low_invoice.total == D("30.00")
    high_invoice = generate(high)
    assert [kind for kind, _, _ in amounts(high_invoice)] == ["flat_fee", "usage"]
    assert high_invoice.total == D("35.00")  # 5 + 12M * $2.50/M


def test_minimum_is_prorated_for_a_partial_period() -> None:
    p = plan(minimum="30.00", charges=[per_unit("output_tokens", "1")])
    sub = subscribe(customer(), p, start=date(2026, 4, 21))  # 10 of April's 30 days
    store(ev("acme", "2026-04-25 00:00", output_tokens=1_000_000))
    invoice = generate(sub)
    # minimum 30 * 10/30 = 10.00; usage 1.00; true-up 9.00
    assert amounts(invoice)[-1][0::2] == ("minimum", D("9.00"))
    assert invoice.total == D("10.00")


def test_flat_unlimited_plan_ignores_usage() -> None:
    sub = subscribe(customer(), plan("unlimited", flat_fee="20.00"))
    store(ev("acme", "2026-04-03 00:00", input_tokens=9_000_000, output_tokens=9_000_000))
    invoice = generate(sub)
    (line,) = lines(invoice)
    assert (line.kind, line.description, line.amount) == ("flat_fee", "Unlimited", D("20.00"))
    assert invoice.total == D("20.00")
    # The line is self-consistent: quantity (days) * unit price / unit size = amount.
    assert line.quantity * line.unit_price / line.unit_size == line.amount_exact


def test_prorated_flat_fee_line_is_self_consistent() -> None:
    sub = subscribe(customer(), plan("unlimited", flat_fee="20.00"), start=date(2026, 4, 11))
    (line,) = lines(generate(sub))
    assert (line.quantity, line.amount) == (D(20), D("13.33"))  # 20 * 20/30
    assert (line.quantity * line.unit_price / line.unit_size).quantize(D("0.01")) == line.amount


def test_hybrid_plan_with_included_tokens_and_gpu_second_overage() -> None:
    p = plan(
        "hybrid",
        flat_fee="49.00",
        charges=[
            ChargeInput(
                metric="input_tokens",
                price_model="graduated",
                unit_size=MILLION,
                included_units=D(2_000_000),
                tiers=[
                    {"up_to": 10_000_000, "unit_price": "3.00"},
                    {"up_to": None, "unit_price": "2.00"},
                ],
                display_name="Input",
            ),
            per_unit("output_tokens", "10", included_units=D(500_000), display_name="Output"),
            per_unit(
                "gpu_seconds",
                "4.00",
                unit_size=D(3600),
                included_units=D(3600),
                filter={"hardware": "h100"},
                display_name="H100 hours",
            ),
        ],
    )
    sub = subscribe(customer(), p)
    store(
        ev("acme", "2026-04-03 00:00", input_tokens=10_000_000, hardware="h100", gpu_seconds=5000),
        ev("acme", "2026-04-13 07:30", input_tokens=5_000_000, output_tokens=700_000),
        ev("acme", "2026-04-23 12:00", hardware="h100", gpu_seconds="4000.000000"),
        ev("acme", "2026-04-24 12:00", hardware="a100", gpu_seconds=1000),  # not billed
    )
    invoice = generate(sub)
    # input: 15M - 2M included = 13M: 10M * $3/M + 3M * $2/M = 36.00
    # output: 700k - 500k included = 200k * $10/M = 2.00
    # H100: 9000 s - 3600 s included = 5400 s * $4 / 3600 s = 6.00
    assert amounts(invoice) == [
        ("flat_fee", "Hybrid", D("49.00")),
        ("usage", "Input", D("36.00")),
        ("usage", "Output", D("2.00")),
        ("usage", "H100 hours", D("6.00")),
    ]
    assert invoice.total == D("93.00")


# --- filters: most specific wins, nothing billed twice ---------------------------------------

FILTERED = [
    per_unit("output_tokens", "2", display_name="generic"),
    per_unit("output_tokens", "10", filter={"model": "gpt-4o"}, display_name="gpt-4o"),
    per_unit(
        "output_tokens",
        "12",
        filter={"model": "gpt-4o", "hardware": "h100"},
        display_name="gpt-4o on h100",
    ),
    per_unit("output_tokens", "3", filter={"provider": "azure"}, display_name="azure"),
]


def filtered_events() -> list[Any]:
    return [
        ev("acme", "2026-04-02 01:00", hardware="h100", provider="openai", output_tokens=MILLION),
        ev("acme", "2026-04-02 01:10", hardware="a100", provider="openai", output_tokens=MILLION),
        ev(
            "acme",
            "2026-04-02 01:20",
            "llama",
            hardware="a100",
            provider="azure",
            output_tokens=MILLION,
        ),
        ev(
            "acme",
            "2026-04-02 02:00",
            "llama",
            hardware="a100",
            provider="openai",
            output_tokens=MILLION,
        ),
        # gpt-4o (position 1) ties with azure (position 3): the first listed wins.
        ev("acme", "2026-04-02 03:00", hardware="a100", provider="azure", output_tokens=MILLION),
    ]


def test_filters_most_specific_wins_from_rollups_and_tail_alike() -> None:
    sub = subscribe(customer(), plan(charges=FILTERED))
    events = filtered_events()
    store(*events[:3])
    usage_rollup_fold()  # the first batch folded, the second still in the tail
    store(*events[3:])
    expected_quantities = {
        "generic": D(1_000_000),
        "gpt-4o": D(2_000_000),
        "gpt-4o on h100": D(1_000_000),
        "azure": D(1_000_000),
    }
    expected_amounts = {
        "generic": D("2.00"),
        "gpt-4o": D("20.00"),
        "gpt-4o on h100": D("12.00"),
        "azure": D("3.00"),
    }
    invoice = generate(sub)
    assert quantities(invoice) == expected_quantities
    assert usage_amounts(invoice) == expected_amounts
    # Every event billed exactly once: the quantities add up to the events' tokens.
    assert sum(expected_quantities.values()) == 5 * MILLION
    usage_rollup_fold()
    invoice = generate(sub)
    assert quantities(invoice) == expected_quantities
    assert invoice.total == D("37.00")


def test_property_filter_reads_raw_events() -> None:
    batch = per_unit(
        "output_tokens", "1", filter={"properties": {"mode": "batch"}}, display_name="batch"
    )
    sub = subscribe(customer(), plan(charges=[*FILTERED, batch]))
    events = filtered_events()
    events.append(
        ev(
            "acme",
            "2026-04-02 04:00",
            "llama",
            hardware="a100",
            provider="openai",
            output_tokens=MILLION,
            properties={"mode": "batch"},
        )
    )
    store(*events[:4])
    usage_rollup_fold()
    store(*events[4:])
    invoice = generate(sub)
    assert quantities(invoice) == {
        "generic": D(1_000_000),
        "gpt-4o": D(2_000_000),
        "gpt-4o on h100": D(1_000_000),
        "azure": D(1_000_000),
        "batch": D(1_000_000),
    }
    assert invoice.total == D("38.00")


def test_sum_and_count_of_properties() -> None:
    p = plan(
        charges=[
            per_unit("sum:images", "0.04", unit_size=D(1), display_name="images"),
            ChargeInput(
                metric="count",
                price_model="per_unit",
                unit_price=D("0.01"),
                filter={"properties": {"kind": "image"}},
                display_name="image requests",
            ),
            per_unit("requests", "0.0025", unit_size=D(1), display_name="other requests"),
        ]
    )
    sub = subscribe(customer(), p)
    store(
        ev("acme", "2026-04-05 00:00", properties={"kind": "image", "images": 3}),
        ev("acme", "2026-04-05 00:01", properties={"kind": "image", "images": 4}),
        ev("acme", "2026-04-05 00:02", properties={"kind": "text", "images": "NaN"}),
        ev("acme", "2026-04-05 00:03"),
    )
    invoice = generate(sub)
    assert quantities(invoice) == {
        "images": D(7),
        "image requests": D(2),
        "other requests": D(2),
    }
    # 7 * 0.04 = 0.28; 2 * 0.01 = 0.02; 2 * 0.0025 = 0.005 -> 0.01 (half-up)
    assert usage_amounts(invoice) == {
        "images": D("0.28"),
        "image requests": D("0.02"),
        "other requests": D("0.01"),
    }
    assert invoice.total == D("0.31")


# --- rounding ------------------------------------------------------------------------------


def test_each_line_rounded_half_up_once_and_total_is_their_sum() -> None:
    charges = [
        per_unit("output_tokens", "2.50", filter={"model": m}, display_name=m)
        for m in ("a", "b", "c")
    ]
    sub = subscribe(customer(), plan(charges=charges))
    store(*(ev("acme", "2026-04-05 00:00", m, output_tokens=2_000) for m in ("a", "b", "c")))
    invoice = generate(sub)
    # Each line: 2,000 * 2.50 / 1M = 0.005 exactly -> 0.01 (half-up, not half-even's 0.00).
    assert [line.amount_exact for line in lines(invoice)] == [D("0.005")] * 3
    assert [line.amount for line in lines(invoice)] == [D("0.01")] * 3
    # The total is the sum of rounded lines (0.03), not the rounded exact sum (0.02).
    assert invoice.total == D("0.03")
    assert invoice.total_minor_units == 3


def test_zero_decimal_currency_rounds_to_whole_units() -> None:
    yen = plan("yen", currency="JPY", flat_fee="1000", charges=[per_unit("output_tokens", "150")])
    sub = subscribe(customer("tokyo", currency="JPY"), yen)
    store(ev("tokyo", "2026-04-05 00:00", output_tokens=10_000))  # 1.5 yen -> 2
    invoice = generate(sub)
    assert [line.amount for line in lines(invoice)] == [D(1000), D(2)]
    assert (invoice.currency, invoice.total, invoice.total_minor_units) == ("JPY", D(1002), 1002)


# --- drafts ----------------------------------------------------------------------------------


def test_draft_is_regenerated_in_place_when_late_events_arrive() -> None:
    sub = subscribe(customer(), plan(flat_fee="1.00", charges=[per_unit("output_tokens", "10")]))
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_000_000))
    first = generate(sub)
    first_line_ids = [line.pk for line in lines(first)]
    assert (first.status, first.total) == ("draft", D("11.00"))
    store(ev("acme", "2026-04-30 23:00", output_tokens=500_000))  # late, during grace
    second = generate(sub)
    assert second.pk == first.pk
    assert (second.status, second.total) == ("draft", D("16.00"))
    assert quantities(second) == {"output tokens": D(1_500_000)}
    assert InvoiceLine.objects.filter(invoice=second).count() == 2
    assert not InvoiceLine.objects.filter(pk__in=first_line_ids).exists()
    assert Invoice.objects.count() == 1
    # Nothing new: regenerating changes nothing.
    assert generate(sub).total == D("16.00")
    assert InvoiceLine.objects.count() == 2


# --- the cycle -------------------------------------------------------------------------------


def test_due_periods_lists_unsettled_ended_periods_oldest_first() -> None:
    p = plan(flat_fee="1")
    a = subscribe(customer("a"), p, start=date(2026, 3, 5))
    b = subscribe(customer("b"), p, start=date(2026, 4, 20))
    subscribe(customer("c"), p, start=date(2026, 5, 1))  # nothing ended yet
    as_of = at("2026-05-01 10:00")
    assert invoicing.due_periods(as_of=as_of) == [
        (a.id, date(2026, 3, 1)),
        (a.id, APRIL),
        (b.id, APRIL),
    ]
    march = generate(a, date(2026, 3, 1))
    generate(b)  # a draft is still due: it is refreshed each cycle
    assert invoicing.due_periods(as_of=as_of)[0] == (a.id, date(2026, 3, 1))
    invoicing.invoice_finalize(invoice_id=march.id)
    invoicing.invoice_void(invoice_id=generate(a).id)
    assert invoicing.due_periods(as_of=as_of) == [(b.id, APRIL)]


def test_grace_period_then_automatic_finalization(
    settings: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    settings.INFERBILL_INVOICE_GRACE_HOURS = 6
    p = plan(flat_fee="10.00", charges=[per_unit("output_tokens", "10")])
    subs = [subscribe(customer(f"c{i}"), p) for i in range(3)]
    store(*(ev(f"c{i}", "2026-04-15 00:00", output_tokens=(i + 1) * 100_000) for i in range(3)))

    def cycle(moment: str) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            invoices_dispatch(as_of=at(moment))

    cycle("2026-05-01 05:59")
    invoices = Invoice.objects.order_by("subscription_id")
    assert [(i.status, i.number, i.total) for i in invoices] == [
        ("draft", None, D("11.00")),
        ("draft", None, D("12.00")),
        ("draft", None, D("13.00")),
    ]
    # A late event within the grace period lands on the draft.
    store(ev("c0", "2026-04-30 22:00", output_tokens=1_000_000))
    cycle("2026-05-01 06:00")
    invoices = Invoice.objects.order_by("subscription_id")
    assert [(i.subscription_id, i.status, i.total) for i in invoices] == [
        (subs[0].id, "finalized", D("21.00")),
        (subs[1].id, "finalized", D("12.00")),
        (subs[2].id, "finalized", D("13.00")),
    ]
    assert sorted(i.number for i in invoices) == ["INV-000001", "INV-000002", "INV-000003"]
    assert Invoice.objects.count() == 3
    cycle("2026-05-01 07:00")  # nothing left to do
    assert invoicing.due_periods(as_of=at("2026-05-01 07:00")) == []
    assert [i.total for i in Invoice.objects.order_by("subscription_id")] == [
        D("21.00"),
        D("12.00"),
        D("13.00"),
    ]


def test_cycle_task_and_chunks(
    settings: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    settings.INFERBILL_INVOICE_GRACE_HOURS = 24
    p = plan(flat_fee="3.00")
    for i in range(5):
        subscribe(customer(f"c{i}"), p, start=date(2026, 3, 1))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert invoices_cycle_task("2026-05-01T12:00:00+00:00") == 2  # March, April
    assert len(callbacks) == 2
    assert Invoice.objects.filter(period_start=date(2026, 3, 1), status="finalized").count() == 5
    assert Invoice.objects.filter(period_start=APRIL, status="draft").count() == 5
    assert (
        invoicing.invoices_generate_chunk(
            subscription_ids=list(Invoice.objects.values_list("subscription_id", flat=True)),
            period_start=APRIL,
            as_of=at("2026-05-02 00:00"),
        )
        == 5
    )
    assert Invoice.objects.filter(status="finalized").count() == 10
    assert Invoice.objects.filter(total=D("3.00")).count() == 10


def _this_month_start() -> datetime:
    now = timezone.now()
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def test_generate_invoices_command_as_of(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    """Through the real ingest path, for last month (inside the lateness window)."""
    this_month = _this_month_start()
    last_month = (this_month - timedelta(days=1)).replace(day=1).date()
    acme = customer()
    sub = subscribe(
        acme, plan(flat_fee="10.00", charges=[per_unit("output_tokens", "10")]), start=last_month
    )
    source = Source.objects.create(name="product")
    body = [
        {
            "event_id": "e1",
            "customer": "acme",
            "model": "gpt-4o",
            "output_tokens": 1_000_000,
            "timestamp": (this_month - timedelta(days=3)).isoformat(),
        },
        {
            "event_id": "e2",
            "customer": "acme",
            "model": "gpt-4o",
            "output_tokens": 500_000,
            "timestamp": (this_month - timedelta(seconds=1)).isoformat(),
        },
        {  # this month: not on last month's invoice
            "event_id": "e3",
            "customer": "acme",
            "model": "gpt-4o",
            "output_tokens": 7_000_000,
            "timestamp": this_month.isoformat(),
        },
    ]
    outcome = events_ingest(source_id=source.id, body=json.dumps(body).encode(), cloudevents=None)
    assert outcome.accepted == 3, outcome.body()

    def run(*args: str) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            call_command("generate_invoices", *args, stdout=open("/dev/null", "w"))  # noqa: SIM115

    run("--as-of", this_month.date().isoformat())
    invoice = Invoice.objects.get(subscription=sub)
    assert (invoice.period_start, invoice.status) == (last_month, "draft")
    assert invoice.total == D("25.00")  # 10 + 1.5M * $10/M
    run("--as-of", (this_month + timedelta(hours=23, minutes=59)).isoformat())
    assert fresh(invoice).status == "draft"  # still in the 24 h grace period
    run("--as-of", (this_month + timedelta(days=1)).date().isoformat())
    invoice = fresh(invoice)
    assert (invoice.status, invoice.number, invoice.total) == (
        "finalized",
        "INV-000001",
        D("25.00"),
    )
    run("--as-of", (this_month + timedelta(days=2)).date().isoformat())
    assert Invoice.objects.count() == 1  # this month has not ended


def test_generate_invoices_command_rejects_a_bad_date() -> None:
    with pytest.raises(CommandError, match="--as-of"):
        call_command("generate_invoices", "--as-of", "yesterday")


def test_a_negative_property_sum_bills_nothing_instead_of_failing() -> None:
    p = plan(flat_fee="1.00", charges=[per_unit("sum:chars", "1", unit_size=D(1))])
    sub = subscribe(customer(), p)
    store(ev("acme", "2026-04-05 00:00", properties={"chars": -5}))
    invoice = generate(sub)
    assert (one_usage_line(invoice).quantity, invoice.total) == (D(0), D("1.00"))
