"""Catalogue services: customers, plans with charges, plan versioning."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing.models import Charge, Customer, InvoiceLine, Plan
from billing.services import (
    ChargeInput,
    ValidationError,
    customer_create,
    customer_update,
    plan_create,
)
from tests.billing.helpers import (
    APRIL,
    MAY,
    MILLION,
    customer,
    ev,
    generate,
    per_unit,
    plan,
    store,
    subscribe,
    usage_amounts,
)

pytestmark = pytest.mark.django_db
D = Decimal


# --- customers -----------------------------------------------------------------------------


def test_customer_create_defaults_and_currency_upper_cased() -> None:
    c = customer_create(external_id="acme", name="Acme", email="a@example.com", currency="eur")
    assert (c.external_id, c.currency, c.metadata) == ("acme", "EUR", {})
    assert customer_create(external_id="beta").currency == "USD"


def test_customer_create_refuses_duplicates_and_bad_fields() -> None:
    customer_create(external_id="acme")
    with pytest.raises(ValidationError) as exc:
        customer_create(external_id="acme")
    assert set(exc.value.errors) == {"external_id"}
    with pytest.raises(ValidationError) as exc:
        customer_create(external_id="")
    assert set(exc.value.errors) == {"external_id"}
    with pytest.raises(ValidationError) as exc:
        customer_create(external_id="x" * 129)
    assert set(exc.value.errors) == {"external_id"}
    with pytest.raises(ValidationError) as exc:
        customer_create(external_id="zed", currency="dollars")
    assert set(exc.value.errors) == {"currency"}
    assert Customer.objects.count() == 1


def test_customer_update_changes_allowed_fields_only() -> None:
    c = customer_create(external_id="acme")
    customer_update(customer=c, name="Acme Inc", currency="gbp", metadata={"vat": "GB1"})
    c.refresh_from_db()
    assert (c.name, c.currency, c.metadata) == ("Acme Inc", "GBP", {"vat": "GB1"})
    with pytest.raises(ValidationError) as exc:
        customer_update(customer=c, external_id="other")
    assert set(exc.value.errors) == {"external_id"}
    with pytest.raises(ValidationError) as exc:
        customer_update(customer=c, currency="pounds")
    assert set(exc.value.errors) == {"currency"}
    c.refresh_from_db()
    assert (c.external_id, c.currency) == ("acme", "GBP")


# --- plans ---------------------------------------------------------------------------------


def test_plan_create_stores_charges_in_order_with_default_names() -> None:
    p = plan(
        "usage",
        flat_fee="10.00",
        minimum="25.00",
        charges=[
            per_unit("output_tokens", "10", filter={"model": "gpt-4o"}),
            per_unit("input_tokens", "2.5", display_name="Input (per 1M)"),
            ChargeInput(
                metric="gpu_seconds",
                price_model="graduated",
                unit_size=D(3600),
                tiers=[
                    {"up_to": 36000, "unit_price": "4.00"},
                    {"up_to": None, "unit_price": "3.00", "flat_fee": "1.00"},
                ],
                filter={"hardware": "h100"},
            ),
        ],
    )
    assert (p.code, p.version, p.is_latest, p.flat_fee, p.minimum) == (
        "usage",
        1,
        True,
        D(10),
        D(25),
    )
    charges = list(p.charges.order_by("position"))
    assert [c.display_name for c in charges] == [
        "output tokens, model gpt-4o",
        "Input (per 1M)",
        "gpu seconds, hardware h100",
    ]
    assert [c.position for c in charges] == [0, 1, 2]
    assert charges[0].unit_size == MILLION
    assert charges[2].price_spec().tiers[1].flat_fee == D(1)
    assert not p.is_flat
    assert plan("flat", flat_fee="20").is_flat


@pytest.mark.parametrize(
    ("charges", "field"),
    [
        (
            [ChargeInput(metric="tokens", price_model="per_unit", unit_price=D(1))],
            "charges[0].metric",
        ),
        (
            [
                per_unit("output_tokens", "1"),
                ChargeInput(metric="count", price_model="per_unit", unit_price=D(1)),
            ],
            "charges[1].filter",
        ),
        ([per_unit("output_tokens", "1", filter={"region": "eu"})], "charges[0].filter"),
        (
            [per_unit("output_tokens", "1", filter={"properties": ["a"]})],
            "charges[0].filter.properties",
        ),
        ([ChargeInput(metric="output_tokens", price_model="per_unit")], "charges[0].unit_price"),
        ([per_unit("output_tokens", "-1")], "charges[0].unit_price"),
        ([per_unit("output_tokens", "1", unit_size=D(0))], "charges[0].unit_size"),
        (
            [per_unit("output_tokens", "1", included_units=D(-5))],
            "charges[0].included_units",
        ),
        ([ChargeInput(metric="output_tokens", price_model="flat")], "charges[0].price_model"),
        (
            [ChargeInput(metric="requests", price_model="package", unit_price=D(1))],
            "charges[0].package_size",
        ),
        ([ChargeInput(metric="requests", price_model="graduated")], "charges[0].tiers"),
        (
            [
                ChargeInput(
                    metric="requests",
                    price_model="volume",
                    tiers=[{"up_to": 100, "unit_price": "1"}, {"up_to": 50, "unit_price": "1"}],
                )
            ],
            "charges[0].tiers",
        ),
        (
            [
                ChargeInput(
                    metric="requests",
                    price_model="graduated",
                    tiers=[{"up_to": 100, "unit_price": "1"}],
                )
            ],
            "charges[0].tiers",
        ),
        (
            [
                ChargeInput(
                    metric="requests",
                    price_model="graduated",
                    tiers=[{"up_to": None, "unit_price": "cheap"}],
                )
            ],
            "charges[0].tiers",
        ),
    ],
)
def test_plan_create_names_the_bad_charge_field(charges: list[ChargeInput], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        plan("bad", charges=charges)
    assert set(exc.value.errors) == {field}
    assert not Plan.objects.exists()
    assert not Charge.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"code": ""}, "code"),
        ({"code": "x" * 65}, "code"),
        ({"interval": "yearly"}, "interval"),
        ({"flat_fee": D("-1")}, "flat_fee"),
        ({"minimum": D("-1")}, "minimum"),
        ({"currency": "usd1"}, "currency"),
    ],
)
def test_plan_create_names_the_bad_plan_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        plan_create(**{"code": "p", "name": "P", **kwargs})
    assert set(exc.value.errors) == {field}
    assert not Plan.objects.exists()


def test_re_creating_a_code_makes_a_new_latest_version() -> None:
    v1 = plan("usage", flat_fee="10")
    v2 = plan("usage", flat_fee="12")
    v3 = plan("usage", flat_fee="15")
    assert [(p.version, p.is_latest) for p in Plan.objects.filter(code="usage")] == [
        (3, True),
        (2, False),
        (1, False),
    ]
    assert (v1.pk, v2.pk, v3.pk) == tuple(
        Plan.objects.filter(code="usage").order_by("version").values_list("pk", flat=True)
    )
    # Another code is versioned on its own.
    assert plan("other").version == 1


def test_existing_subscriptions_keep_their_version_prices() -> None:
    v1 = plan("usage", flat_fee="10", charges=[per_unit("output_tokens", "10")])
    old = subscribe(customer("old"), v1)
    v2 = plan("usage", flat_fee="12", charges=[per_unit("output_tokens", "8")])
    new = subscribe(customer("new"), v2)
    store(
        ev("old", "2026-04-10 12:00", output_tokens=1_000_000),
        ev("new", "2026-04-10 12:00", output_tokens=1_000_000),
    )
    old_invoice, new_invoice = generate(old), generate(new)
    # v1: 10 flat + 1M * $10/M; v2: 12 flat + 1M * $8/M.
    assert (old_invoice.total, new_invoice.total) == (D("20.00"), D("20.00"))
    assert usage_amounts(old_invoice) == {"output tokens": D("10.00")}
    assert usage_amounts(new_invoice) == {"output tokens": D("8.00")}
    flat = InvoiceLine.objects.get(invoice=old_invoice, kind=InvoiceLine.Kind.FLAT_FEE)
    assert flat.amount == D("10.00")
    # Moving the old customer to v2 from May bills May at v2 prices.
    moved = subscribe(old_invoice.customer, v2, start=MAY)
    store(ev("old", "2026-05-03 00:00", output_tokens=500_000))
    may = generate(moved, MAY)
    assert may.total == D("16.00")  # 12 + 0.5M * $8/M
    assert generate(old).total == D("20.00")  # April unchanged


def test_subscription_needs_matching_currency() -> None:
    eur_plan = plan("eur", currency="EUR", flat_fee="5")
    with pytest.raises(ValidationError) as exc:
        subscribe(customer("acme"), eur_plan, APRIL)
    assert set(exc.value.errors) == {"plan"}
    assert subscribe(customer("euro", currency="EUR"), eur_plan, APRIL).plan == eur_plan
