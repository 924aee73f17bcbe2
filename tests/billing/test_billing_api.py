"""The billing REST API over real HTTP (live server, httpx), scope `billing`."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from billing.models import Invoice, Plan, Subscription
from tests.billing.helpers import APRIL, customer, ev, generate, per_unit, plan, store, subscribe

Api = Callable[..., httpx.Client]
D = Decimal


@pytest.fixture
def billing(api: Api, make_key: Callable[..., str]) -> httpx.Client:
    return api(key=make_key(scopes=("billing",)))


def errors(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["errors"]


# --- authentication and scope ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/customers"),
        ("POST", "/v1/customers"),
        ("GET", "/v1/customers/acme"),
        ("GET", "/v1/plans"),
        ("POST", "/v1/plans"),
        ("GET", "/v1/subscriptions"),
        ("GET", "/v1/invoices"),
        ("GET", "/v1/invoices/1"),
        ("POST", "/v1/invoices/1/finalize"),
        ("POST", "/v1/invoices/1/void"),
    ],
)
def test_billing_needs_a_key_with_the_billing_scope(api: Api, method: str, path: str) -> None:
    response = api().request(method, path, json={})  # an ingest + read key
    assert response.status_code == 403, response.text
    assert "billing" in response.json()["detail"]
    assert api(key=None).request(method, path, json={}).status_code == 401


def test_a_billing_key_cannot_ingest(billing: httpx.Client) -> None:
    response = billing.post("/v1/events", json=[{"event_id": "e", "customer": "a", "model": "m"}])
    assert response.status_code == 403


# --- customers --------------------------------------------------------------------------------


def test_customers_create_list_get_update(billing: httpx.Client) -> None:
    response = billing.post(
        "/v1/customers",
        json={"external_id": "acme", "name": "Acme", "email": "ap@acme.test", "currency": "eur"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert {k: body[k] for k in ("external_id", "name", "currency", "metadata")} == {
        "external_id": "acme",
        "name": "Acme",
        "currency": "EUR",
        "metadata": {},
    }
    assert billing.post("/v1/customers", json={"external_id": "beta"}).json()["currency"] == "USD"
    assert [c["external_id"] for c in billing.get("/v1/customers").json()] == ["acme", "beta"]
    assert billing.get("/v1/customers/acme").json()["email"] == "ap@acme.test"
    assert billing.get("/v1/customers/nobody").status_code == 404
    response = billing.patch(
        "/v1/customers/acme", json={"name": "Acme Inc", "metadata": {"vat": "DE1"}}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["metadata"]) == ("Acme Inc", {"vat": "DE1"})
    assert billing.get("/v1/customers/acme").json()["name"] == "Acme Inc"


def test_customer_errors_name_the_field(billing: httpx.Client) -> None:
    assert billing.post("/v1/customers", json={"external_id": "acme"}).status_code == 201
    assert "external_id" in errors(billing.post("/v1/customers", json={"external_id": "acme"}))
    response = billing.post("/v1/customers", json={"name": "no id"})
    assert response.status_code == 400
    assert "external_id" in response.json()
    response = billing.post("/v1/customers", json={"external_id": "x", "email": "not-an-email"})
    assert response.status_code == 400
    assert "email" in response.json()
    assert "currency" in errors(
        billing.post("/v1/customers", json={"external_id": "y", "currency": "1$"})
    )
    assert "currency" in errors(billing.patch("/v1/customers/acme", json={"currency": "$$$"}))
    assert billing.get("/v1/customers/acme").json()["currency"] == "USD"


# --- plans ----------------------------------------------------------------------------------

HYBRID = {
    "code": "hybrid",
    "name": "Team",
    "flat_fee": "49.00",
    "minimum": "60.00",
    "charges": [
        {
            "metric": "input_tokens",
            "price_model": "graduated",
            "unit_size": 1000000,
            "included_units": 2000000,
            "tiers": [
                {"up_to": 10000000, "unit_price": "3.00"},
                {"up_to": None, "unit_price": "2.00", "flat_fee": "1.50"},
            ],
            "display_name": "Input",
        },
        {
            "metric": "gpu_seconds",
            "price_model": "per_unit",
            "unit_size": "3600",
            "unit_price": "4.00",
            "filter": {"hardware": "h100"},
        },
    ],
}


def test_plans_create_render_and_version(billing: httpx.Client) -> None:
    response = billing.post("/v1/plans", json=HYBRID)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["code"], body["version"], body["is_latest"], body["interval"]) == (
        "hybrid",
        1,
        True,
        "monthly",
    )
    assert (D(body["flat_fee"]), D(body["minimum"])) == (D(49), D(60))
    tiered, gpu = body["charges"]
    assert [(t["up_to"], D(t["unit_price"]), D(t["flat_fee"])) for t in tiered["tiers"]] == [
        ("10000000", D(3), D(0)),
        (None, D(2), D("1.5")),
    ]
    assert (D(tiered["included_units"]), D(tiered["unit_size"])) == (D(2_000_000), D(1_000_000))
    assert (gpu["display_name"], gpu["filter"]) == (
        "gpu seconds, hardware h100",
        {"hardware": "h100"},
    )
    assert (D(gpu["unit_price"]), D(gpu["unit_size"])) == (D(4), D(3600))
    # The stored tiers price as posted: 13M billable -> 10M * 3 + 3M * 2 + 1.50.
    charge = Plan.objects.get(code="hybrid").charges.get(metric="input_tokens")
    assert [t.up_to for t in charge.price_spec().tiers] == [D(10_000_000), None]

    response = billing.post("/v1/plans", json={**HYBRID, "flat_fee": "59.00"})
    assert (response.status_code, response.json()["version"]) == (201, 2)
    latest = billing.get("/v1/plans").json()
    assert [(p["code"], p["version"], D(p["flat_fee"])) for p in latest] == [("hybrid", 2, D(59))]
    every = billing.get("/v1/plans", params={"all_versions": "1"}).json()
    assert [(p["version"], p["is_latest"]) for p in every] == [(2, True), (1, False)]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"charges": [{"metric": "tokens", "price_model": "per_unit", "unit_price": "1"}]},
            "charges[0].metric",
        ),
        ({"charges": [{"metric": "requests", "price_model": "per_unit"}]}, "charges[0].unit_price"),
        (
            {
                "charges": [
                    {
                        "metric": "requests",
                        "price_model": "graduated",
                        "tiers": [{"up_to": 5, "unit_price": "1"}],
                    }
                ]
            },
            "charges[0].tiers",
        ),
        (
            {"charges": [{"metric": "count", "price_model": "per_unit", "unit_price": "1"}]},
            "charges[0].filter",
        ),
        ({"currency": "US$"}, "currency"),
        ({"flat_fee": "-1"}, "flat_fee"),
    ],
)
def test_plan_service_errors_name_the_field(
    billing: httpx.Client, change: dict, field: str
) -> None:
    assert field in errors(billing.post("/v1/plans", json={"code": "bad", **change}))
    assert not Plan.objects.exists()


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"charges": [{"metric": "requests", "unit_price": "1"}]}, ("charges", 0, "price_model")),
        (
            {"charges": [{"metric": "requests", "price_model": "per_unit", "unit_price": "cheap"}]},
            ("charges", 0, "unit_price"),
        ),
        ({"interval": "yearly"}, ("interval",)),
        ({"code": ""}, ("code",)),
    ],
)
def test_plan_parse_errors_name_the_field(billing: httpx.Client, change: dict, path: tuple) -> None:
    response = billing.post("/v1/plans", json={"code": "bad", **change})
    assert response.status_code == 400, response.text
    node: Any = response.json()
    for step in path:
        node = node[step]
    assert node  # a message at that field
    assert not Plan.objects.exists()


# --- subscriptions ---------------------------------------------------------------------------


def test_subscriptions_create_list_and_errors(billing: httpx.Client) -> None:
    billing.post("/v1/customers", json={"external_id": "acme"})
    billing.post("/v1/plans", json={"code": "flat", "flat_fee": "20"})
    billing.post("/v1/plans", json={"code": "flat", "flat_fee": "25"})
    response = billing.post(
        "/v1/subscriptions", json={"customer": "acme", "plan": "flat", "start_date": "2026-03-01"}
    )
    assert response.status_code == 201, response.text
    first = response.json()
    assert (first["plan"], first["plan_version"], first["end_date"], first["anchor_day"]) == (
        "flat",
        2,
        None,
        1,
    )
    response = billing.post(
        "/v1/subscriptions",
        json={"customer": "acme", "plan": "flat", "plan_version": 1, "start_date": "2026-04-11"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["plan_version"] == 1
    listed = billing.get("/v1/subscriptions", params={"customer": "acme"}).json()
    assert [(s["start_date"], s["end_date"]) for s in listed] == [
        ("2026-03-01", "2026-04-11"),
        ("2026-04-11", None),
    ]
    assert billing.get("/v1/subscriptions", params={"customer": "other"}).json() == []

    def post(**body: Any) -> httpx.Response:
        return billing.post(
            "/v1/subscriptions",
            json={"customer": "acme", "plan": "flat", "start_date": "2026-05-01", **body},
        )

    assert "customer" in errors(post(customer="nobody"))
    assert "plan" in errors(post(plan="nothing"))
    assert "plan" in errors(post(plan_version=7))
    assert "start_date" in errors(post(start_date="2026-04-11"))
    assert "end_date" in errors(post(end_date="2026-04-01"))
    assert "start_date" in post(start_date="April").json()
    assert "anchor_day" in post(anchor_day=31).json()
    assert Subscription.objects.count() == 2


# --- invoices --------------------------------------------------------------------------------


@pytest.fixture
def april_invoice(db: None) -> Invoice:
    p = plan(flat_fee="10.00", charges=[per_unit("output_tokens", "2.50")])
    sub = subscribe(customer(), p)
    subscribe(customer("other"), p)
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_234_567))
    return generate(sub, APRIL)


def test_invoices_list_detail_finalize_void(billing: httpx.Client, april_invoice: Invoice) -> None:
    generate(Subscription.objects.get(customer__external_id="other"), APRIL)
    listed = billing.get("/v1/invoices", params={"customer": "acme"}).json()
    assert [(i["id"], i["status"], D(i["total"])) for i in listed] == [
        (april_invoice.id, "draft", D("13.09"))
    ]
    assert "lines" not in listed[0]
    assert len(billing.get("/v1/invoices").json()) == 2
    assert billing.get("/v1/invoices", params={"status": "finalized"}).json() == []

    detail = billing.get(f"/v1/invoices/{april_invoice.id}").json()
    assert (detail["customer"], detail["currency"], detail["total_minor_units"]) == (
        "acme",
        "USD",
        1309,
    )
    assert (detail["period_start"], detail["period_end"]) == ("2026-04-01", "2026-05-01")
    assert [(line["kind"], D(line["amount"])) for line in detail["lines"]] == [
        ("flat_fee", D("10.00")),
        ("usage", D("3.09")),
    ]
    usage = detail["lines"][1]
    assert (D(usage["quantity"]), usage["metric"], D(usage["unit_price"])) == (
        D(1_234_567),
        "output_tokens",
        D("2.5"),
    )
    assert billing.get("/v1/invoices/999999").status_code == 404

    response = billing.post(f"/v1/invoices/{april_invoice.id}/finalize")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["number"]) == ("finalized", "INV-000001")
    again = billing.post(f"/v1/invoices/{april_invoice.id}/finalize").json()
    assert again["number"] == "INV-000001"

    response = billing.post(f"/v1/invoices/{april_invoice.id}/void")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["number"]) == ("void", "INV-000001")
    response = billing.post(f"/v1/invoices/{april_invoice.id}/finalize")
    assert "status" in errors(response, 409)
    assert Invoice.objects.get(pk=april_invoice.pk).status == "void"
    assert billing.post("/v1/invoices/999999/finalize").status_code == 404
    assert billing.post("/v1/invoices/999999/void").status_code == 404


def test_voiding_a_paid_invoice_is_a_conflict(
    billing: httpx.Client, april_invoice: Invoice
) -> None:
    Invoice.objects.filter(pk=april_invoice.pk).update(status=Invoice.Status.PAID)
    assert "status" in errors(billing.post(f"/v1/invoices/{april_invoice.id}/void"), 409)
    assert Invoice.objects.get(pk=april_invoice.pk).status == "paid"


def test_openapi_schema_documents_billing(api: Api) -> None:
    schema = api(key=None).get("/v1/schema", params={"format": "json"}).json()
    for path in (
        "/v1/customers",
        "/v1/customers/{external_id}",
        "/v1/plans",
        "/v1/subscriptions",
        "/v1/invoices",
        "/v1/invoices/{invoice_id}",
        "/v1/invoices/{invoice_id}/finalize",
        "/v1/invoices/{invoice_id}/void",
    ):
        assert path in schema["paths"], path


def test_invoice_list_reads_a_fixed_number_of_queries(
    client: Any, make_key: Callable[..., str], django_assert_max_num_queries: Any
) -> None:
    p = plan(flat_fee="10.00", charges=[per_unit("output_tokens", "1")])
    for i in range(12):
        generate(subscribe(customer(f"c{i}"), p), APRIL)
    headers = {"Authorization": f"Bearer {make_key(scopes=('billing',))}"}
    with django_assert_max_num_queries(6):  # key, invoices: not one query per invoice
        response = client.get("/v1/invoices", headers=headers)
    assert response.status_code == 200
    assert len(response.json()) == 12
    assert all("lines" not in item for item in response.json())
