"""The OpenAPI schema at /v1/schema describes both metering endpoints, their fields and
their errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from metering.fields import USAGE_METRICS
from metering.normalize import CE_FIELDS, NATIVE_FIELDS


@pytest.fixture
def schema(api: Callable[..., httpx.Client]) -> dict[str, Any]:
    response = api(key=None).get("/v1/schema", params={"format": "json"})
    assert response.status_code == 200, response.text
    return response.json()


def component(schema: dict[str, Any], ref_holder: dict[str, Any]) -> dict[str, Any]:
    ref = ref_holder.get("$ref") or ref_holder["items"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_events_endpoint(schema: dict[str, Any]) -> None:
    post = schema["paths"]["/v1/events"]["post"]
    assert {"202", "400", "401", "403", "413", "415", "503"} <= set(post["responses"])
    assert post["security"] == [{"ApiKey": []}]
    content = post["requestBody"]["content"]
    assert set(content) == {
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
    }
    native = component(schema, content["application/json"]["schema"])
    assert set(native["properties"]) == set(NATIVE_FIELDS)
    assert {"event_id", "customer", "model"} <= set(native["required"])
    cloud = component(schema, content["application/cloudevents+json"]["schema"])
    assert set(cloud["properties"]) >= set(CE_FIELDS) - {"dataschema"}
    answer = component(schema, post["responses"]["202"]["content"]["application/json"]["schema"])
    assert set(answer["properties"]) == {"accepted", "duplicates", "rejected", "conflicts"}
    rejected = component(schema, answer["properties"]["rejected"])
    assert set(rejected["properties"]) == {"index", "event_id", "errors"}


def test_usage_endpoint(schema: dict[str, Any]) -> None:
    get = schema["paths"]["/v1/customers/{customer}/usage"]["get"]
    assert {"200", "400", "401", "403", "503"} <= set(get["responses"])
    parameters = {p["name"]: p for p in get["parameters"]}
    assert {"customer", "start", "end", "group_by"} <= set(parameters)
    assert set(parameters["group_by"]["schema"]["enum"]) == {"model", "hardware", "day"}
    body = component(schema, get["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == {"customer", "start", "end", "totals", "groups"}
    totals = component(schema, body["properties"]["totals"])
    assert set(totals["properties"]) == set(USAGE_METRICS)
    assert totals["properties"]["gpu_seconds"]["type"] == "string"
