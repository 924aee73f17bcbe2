"""Small helpers shared by the metering API tests (plain functions, no fixtures)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx

TOTAL_KEYS = {
    "requests",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "gpu_seconds",
}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    """A valid native event; fields override the defaults."""
    return {
        "event_id": event_id,
        "customer": "acme",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 5,
        **fields,
    }


def post(client: httpx.Client, body: Any, content_type: str = "application/json") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/events", content=content, headers={"Content-Type": content_type})


def usage(client: httpx.Client, customer: str, **params: str) -> httpx.Response:
    return client.get(f"/v1/customers/{customer}/usage", params=params)


def totals(client: httpx.Client, customer: str, **params: str) -> dict[str, Any]:
    response = usage(client, customer, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["totals"]) == TOTAL_KEYS
    return body["totals"]
