"""The pricing API over real HTTP (a live server): cost rates, margins, simulations, scopes
and the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from pricing.models import CostRate
from tests.pricing.helpers import (
    refresh,
    token_rates,
)

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal
Api = Callable[..., httpx.Client]


@pytest.fixture
def reader(api: Api, make_key: Callable[..., str]) -> httpx.Client:
    return api(key=make_key(source="finance", scopes=("read",)))


@pytest.fixture
def biller(api: Api, make_key: Callable[..., str]) -> httpx.Client:
    return api(key=make_key(source="finance-admin", scopes=("billing",)))


def test_cost_rates_need_read_to_list_and_billing_to_create(
    api: Api, make_key: Callable[..., str], reader: httpx.Client, biller: httpx.Client
) -> None:
    assert api(key=None).get("/v1/cost-rates").status_code == 401
    ingest_only = api(key=make_key(source="product", scopes=("ingest",)))
    assert ingest_only.get("/v1/cost-rates").status_code == 403
    body = {
        "kind": "token",
        "model": "gpt-4o",
        "token_class": "output",
        "usd_per_million_tokens": "10.00",
        "effective_from": "2026-01-01",
    }
    assert reader.post("/v1/cost-rates", json=body).status_code == 403
    created = biller.post("/v1/cost-rates", json=body)
    assert created.status_code == 201, created.text
    assert created.json() | {"id": 0} == {
        "id": 0,
        "kind": "token",
        "model": "gpt-4o",
        "provider": "",
        "token_class": "output",
        "usd_per_token": "0.00001",
        "usd_per_million_tokens": "10",
        "hardware": "",
        "gpu_hour_rate": None,
        "utilization": None,
        "usd_per_gpu_second": None,
        "effective_from": "2026-01-01T00:00:00+00:00",
        "source": "api",
        "note": "",
    }
    again = biller.post("/v1/cost-rates", json=body)
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]


def test_a_gpu_rate_and_listing_in_force(biller: httpx.Client, reader: httpx.Client) -> None:
    for hourly, start in (("2.99", "2026-01-01T00:00:00Z"), ("2.49", "2099-01-01T00:00:00Z")):
        response = biller.post(
            "/v1/cost-rates",
            json={
                "kind": "gpu",
                "hardware": "h100",
                "gpu_hour_rate": hourly,
                "utilization": "0.6",
                "effective_from": start,
            },
        )
        assert response.status_code == 201, response.text
    assert response.json()["usd_per_gpu_second"] == "0.001152777777778"  # 2.49 / 3600 / 0.6
    listed = reader.get("/v1/cost-rates", params={"kind": "gpu"}).json()
    assert listed["count"] == 2 and listed["next_offset"] is None
    now = reader.get("/v1/cost-rates", params={"at": "2026-06-01T00:00:00Z"}).json()
    assert [r["gpu_hour_rate"] for r in now["results"]] == ["2.990000"]
    page = reader.get("/v1/cost-rates", params={"limit": 1}).json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next_offset"] == 1


TOKEN = {"kind": "token", "model": "m", "token_class": "input", "effective_from": "2026-01-01"}
GPU = {"kind": "gpu", "hardware": "h100", "gpu_hour_rate": "1", "effective_from": "2026-01-01"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (TOKEN | {"usd_per_token": 0.1}, "usd_per_token"),  # a float: money is a string
        (TOKEN | {"usd_per_token": "1", "effective_from": None}, "effective_from"),
        (GPU | {"effective_from": "soon"}, "effective_from"),
        (GPU | {"utilization": "2"}, "utilization"),
        (GPU | {"price": "1"}, "price"),
        (TOKEN | {"usd_per_token": "1", "usd_per_million_tokens": "1"}, "usd_per_token"),
    ],
)
def test_invalid_rates_get_400_naming_the_field(
    biller: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = biller.post("/v1/cost-rates", json=body)
    assert response.status_code == 400
    assert field in response.json()["errors"], response.json()
    assert not CostRate.objects.exists()


def test_rewriting_past_cost_is_refused(biller: httpx.Client) -> None:
    token_rates("gpt-4o", output="10")
    response = biller.post(
        "/v1/cost-rates",
        json={
            "kind": "token",
            "model": "gpt-4o",
            "token_class": "output",
            "usd_per_token": "0.00002",
            "effective_from": "2026-01-01",
        },
    )
    assert response.status_code == 400
    assert "rewrite the cost of past usage" in response.json()["errors"]["effective_from"]


@pytest.fixture
def april_margins(april_usage: None) -> None:
    refresh("2026-05-01 00:00")


def test_margins_worst_first_with_totals(reader: httpx.Client, april_margins: None) -> None:
    response = reader.get("/v1/margins", params={"period": "2026-04"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert [(c["customer"], c["margin"]) for c in report["customers"]] == [
        ("heavy", "-20.000000"),
        ("metered", "10.000000"),
        ("light", "29.000000"),
    ]
    heavy = report["customers"][0]
    assert heavy["flat_subscription"] is True and heavy["flag"]["kind"] == "negative_margin"
    assert heavy["revenue_basis"] == "estimate" and heavy["plans"] == ["unlimited"]
    assert heavy["breakdown"]["models"][0]["model"] == "gpt-4o"
    assert heavy["insights"]["break_even"]["tokens"] == 3_000_000
    totals = report["totals"]
    assert (totals["revenue"], totals["cost"], totals["margin"]) == (
        "80.000000",
        "61.000000",
        "19.000000",
    )
    assert (totals["customers"], totals["flagged"], totals["flat_flagged"]) == (3, 1, 1)
    flagged = reader.get("/v1/margins", params={"period": "2026-04", "flagged": "true"}).json()
    assert [c["customer"] for c in flagged["customers"]] == ["heavy"]
    page = reader.get("/v1/margins", params={"period": "2026-04", "limit": 1, "offset": 1})
    assert [c["customer"] for c in page.json()["customers"]] == ["metered"]
    assert page.json()["totals"]["customers"] == 3


def test_margins_bad_query(reader: httpx.Client) -> None:
    assert reader.get("/v1/margins").status_code == 400
    response = reader.get("/v1/margins", params={"period": "April"})
    assert response.status_code == 400 and response.json()["detail"].startswith("period:")
    bad_flag = reader.get("/v1/margins", params={"period": "2026-04", "flagged": "maybe"})
    assert bad_flag.status_code == 400


def test_simulations(reader: httpx.Client, april_margins: None) -> None:
    response = reader.post("/v1/simulations", json={"plan": "payg", "period": "2026-04"})
    assert response.status_code == 200, response.text
    result = response.json()
    # On payg ($20 per million output tokens): heavy 100.00, light 2.00, metered 20.00.
    by_customer = {
        c["customer"]: (c["revenue_now"], c["margin_now"], c["moved"]) for c in result["customers"]
    }
    assert by_customer == {
        "heavy": ("100.000000", "50.000000", "out_of_negative"),
        "light": ("2.000000", "1.000000", None),
        "metered": ("20.000000", "10.000000", None),
    }
    assert result["out_of_negative"] == ["heavy"] and result["into_negative"] == []
    assert result["totals"]["revenue_now"] == "122.000000"
    assert reader.post("/v1/simulations", json={"plan": "nope", "period": "2026-04"}).json()[
        "errors"
    ] == {"plan": "no plan 'nope'"}
    assert reader.post("/v1/simulations", json={"plan": "payg"}).status_code == 400


def test_the_schema_documents_the_pricing_endpoints() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path, methods in {
        "/v1/cost-rates": {"get", "post"},
        "/v1/margins": {"get"},
        "/v1/simulations": {"post"},
    }.items():
        assert methods <= set(schema["paths"][path]), path
    assert schema["paths"]["/v1/margins"]["get"]["operationId"] == "margins_list"
