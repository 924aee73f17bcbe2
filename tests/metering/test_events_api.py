"""POST /v1/events over real HTTP (pytest-django's live server, httpx)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from metering.models import ApiKey, Event, EventKey, IngestBatch
from metering.services import api_key_revoke
from tests.metering.helpers import event, iso, post, totals
from tests.servers import free_port, gunicorn_serving

ROOT = Path(__file__).resolve().parents[2]
Api = Callable[..., httpx.Client]


def stored(customer: str = "acme") -> dict[str, Event]:
    return {e.event_id: e for e in Event.objects.filter(customer=customer)}


# --- authentication and scopes -------------------------------------------------------


def test_missing_key_401(api: Api) -> None:
    response = post(api(key=None), [event("a")])
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert "detail" in response.json()
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer ib_000000000000_notakey",
        "Bearer nonsense",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "ib_000000000000_notakey",
    ],
)
def test_unknown_or_malformed_key_401(api: Api, header: str) -> None:
    client = api(key=None)
    response = client.post(
        "/v1/events",
        content=json.dumps([event("a")]),
        headers={"Authorization": header, "Content-Type": "application/json"},
    )
    assert response.status_code == 401
    assert not Event.objects.exists()


def test_right_prefix_wrong_secret_401(api: Api, make_key: Callable[..., str]) -> None:
    raw = make_key()
    prefix = ApiKey.split(raw)[0]
    response = post(api(key=f"ib_{prefix}_{'A' * 43}"), [event("a")])
    assert response.status_code == 401
    assert not Event.objects.exists()


def test_revoked_key_401_on_next_request(api: Api, make_key: Callable[..., str]) -> None:
    raw = make_key()
    client = api(key=raw)
    assert post(client, [event("a")]).status_code == 202
    api_key_revoke(prefix=ApiKey.split(raw)[0])
    # Same client, same connection: revocation holds from the very next request.
    response = post(client, [event("b")])
    assert response.status_code == 401
    assert response.json()["detail"] == "Unknown or revoked API key."
    assert client.get("/v1/customers/acme/usage").status_code == 401
    assert set(stored()) == {"a"}


def test_read_only_key_cannot_post_403(api: Api, make_key: Callable[..., str]) -> None:
    client = api(key=make_key(scopes=("read",)))
    response = post(client, [event("a")])
    assert response.status_code == 403
    assert "ingest" in response.json()["detail"]
    assert not Event.objects.exists()
    # …but it may read.
    assert client.get("/v1/customers/acme/usage").status_code == 200


def test_ingest_only_key_cannot_read_403(api: Api, make_key: Callable[..., str]) -> None:
    client = api(key=make_key(scopes=("ingest",)))
    assert post(client, [event("a")]).status_code == 202
    response = client.get("/v1/customers/acme/usage")
    assert response.status_code == 403
    assert "read" in response.json()["detail"]


def test_billing_only_key_may_neither_post_nor_read(api: Api, make_key: Callable[..., str]) -> None:
    client = api(key=make_key(scopes=("billing",)))
    assert post(client, [event("a")]).status_code == 403
    assert client.get("/v1/customers/acme/usage").status_code == 403


# --- a key the server already knows -------------------------------------------------------
# After a key's first request the server recalls it without a query and has the statement
# that stores the events confirm it (metering.auth, metering.ingest). Whatever the request,
# a key revoked since then gets its 401, and nothing of it is written.


@pytest.fixture
def known_key(api: Api, make_key: Callable[..., str]) -> tuple[str, httpx.Client]:
    raw = make_key()
    client = api(key=raw)
    assert post(client, [event("first")]).status_code == 202
    return raw, client


REFUSED_REQUESTS = {
    "one event": ([event("x")], "application/json"),
    "a COPY-sized batch": ([event(f"x{i}") for i in range(40)], "application/json"),
    "only invalid events": ([event("x", input_tokens=-1)], "application/json"),
    "an unsupported content type": ([event("x")], "text/plain"),
    "not JSON": (b"{nope", "application/json"),
}


@pytest.mark.parametrize("request_kind", sorted(REFUSED_REQUESTS))
def test_a_known_key_revoked_gets_401_whatever_it_sends(
    known_key: tuple[str, httpx.Client], request_kind: str
) -> None:
    raw, client = known_key
    api_key_revoke(prefix=ApiKey.split(raw)[0])
    batches_before = IngestBatch.objects.count()
    body, content_type = REFUSED_REQUESTS[request_kind]
    response = post(client, body, content_type=content_type)
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "Unknown or revoked API key."
    assert set(stored()) == {"first"}
    assert IngestBatch.objects.count() == batches_before


def test_a_known_read_only_key_revoked_gets_401_not_403(
    api: Api, make_key: Callable[..., str]
) -> None:
    raw = make_key(scopes=("read",))
    client = api(key=raw)
    assert post(client, [event("x")]).status_code == 403  # now known to the server
    api_key_revoke(prefix=ApiKey.split(raw)[0])
    assert post(client, [event("x")]).status_code == 401


def test_a_known_key_deleted_gets_401(known_key: tuple[str, httpx.Client]) -> None:
    raw, client = known_key
    ApiKey.objects.filter(prefix=ApiKey.split(raw)[0]).delete()
    assert post(client, [event("x")]).status_code == 401
    assert set(stored()) == {"first"}


def test_a_key_revoked_then_restored_works_again(known_key: tuple[str, httpx.Client]) -> None:
    raw, client = known_key
    prefix = ApiKey.split(raw)[0]
    api_key_revoke(prefix=prefix)
    assert post(client, [event("x")]).status_code == 401
    ApiKey.objects.filter(prefix=prefix).update(revoked_at=None)  # what the admin can do
    assert post(client, [event("y")]).status_code == 202
    assert set(stored()) == {"first", "y"}


def test_a_known_key_with_a_wrong_secret_is_still_401(
    known_key: tuple[str, httpx.Client], api: Api
) -> None:
    raw, _ = known_key
    response = post(api(key=f"ib_{ApiKey.split(raw)[0]}_{'B' * 43}"), [event("x")])
    assert response.status_code == 401
    assert set(stored()) == {"first"}


def test_a_host_not_allowed_gets_django_400(api: Api) -> None:
    """POST /v1/events skips the middleware, not the ALLOWED_HOSTS check."""
    client = api()
    response = client.post(
        "/v1/events",
        content=json.dumps([event("x")]),
        headers={"Content-Type": "application/json", "Host": "evil.example"},
    )
    assert response.status_code == 400
    assert not Event.objects.exists()


# --- content type, size and shape of the body -------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "application/jsonx"],
)
def test_unsupported_content_type_415(api: Api, content_type: str) -> None:
    response = post(api(), [event("a")], content_type=content_type)
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "application/json" in detail
    assert "application/cloudevents+json" in detail
    assert not Event.objects.exists()


def test_missing_content_type_415(api: Api) -> None:
    response = api().post("/v1/events", content=json.dumps(event("a")).encode())
    assert response.status_code == 415
    assert not Event.objects.exists()


def test_content_type_parameters_accepted(api: Api) -> None:
    response = post(api(), [event("a")], content_type="Application/JSON; charset=utf-8")
    assert response.status_code == 202
    assert response.json()["accepted"] == 1


def test_too_many_events_413(api: Api) -> None:
    response = post(api(), [event(f"e{i}") for i in range(5001)])
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "5000" in detail
    assert "5001" in detail
    assert not Event.objects.exists()


def test_exactly_5000_events_accepted(api: Api) -> None:
    response = post(api(), [event(f"e{i}") for i in range(5000)])
    assert response.status_code == 202
    assert response.json() == {"accepted": 5000, "duplicates": 0, "rejected": []}
    assert Event.objects.count() == 5000


def test_body_over_5_mib_413(api: Api) -> None:
    # One small, valid event padded with JSON whitespace past 5 MiB: only the size is wrong.
    limit = 5 * 1024 * 1024
    body = b"[" + b" " * limit + json.dumps(event("a")).encode() + b"]"
    response = post(api(), body)
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"]
    assert not Event.objects.exists()


def test_body_just_under_5_mib_accepted(api: Api) -> None:
    limit = 5 * 1024 * 1024
    payload = json.dumps(event("a")).encode()
    body = b"[" + b" " * (limit - len(payload) - 2) + payload + b"]"
    assert len(body) == limit
    response = post(api(), body)
    assert response.status_code == 202
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'[{"event_id": "a"}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"42", "object"),
        (b'"event"', "object"),
        (b"null", "object"),
        (b"true", "object"),
        (b"[]", "empty array"),
    ],
)
def test_unreadable_body_400(api: Api, body: bytes, words: str) -> None:
    response = post(api(), body)
    assert response.status_code == 400
    assert words in response.json()["detail"]
    assert not Event.objects.exists()


# --- the 202 answer and partial acceptance ---------------------------------------------


def test_single_object_202_shape_and_durable(api: Api) -> None:
    response = post(api(), event("a", hardware="h100", gpu_seconds="0.5"))
    assert response.status_code == 202
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    # Stored and committed before the answer: this test's own connection sees it.
    row = Event.objects.get(event_id="a")
    assert (row.customer, row.model, row.hardware) == ("acme", "gpt-4o", "h100")
    assert (row.input_tokens, row.output_tokens) == (10, 5)
    assert row.gpu_seconds == Decimal("0.5")


def test_all_fields_stored_as_normalised(api: Api) -> None:
    body = [
        event(
            "full",
            customer="never-seen-before",
            timestamp="2026-01-01T00:00:00Z",
            provider="openai",
            hardware="h100",
            usage={
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1000},
                "completion_tokens_details": {"reasoning_tokens": 120},
            },
            gpu_seconds="1234.000001",
            latency_ms=850,
            properties={"team": "search", "beta": True, "n": 3},
        )
    ]
    del body[0]["input_tokens"], body[0]["output_tokens"]
    moment = datetime.now(UTC) - timedelta(hours=1, minutes=1)
    body[0]["timestamp"] = moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    response = post(api(), body)
    assert response.status_code == 202, response.text
    row = Event.objects.get(event_id="full")
    # Customers the system does not know yet are stored, not rejected.
    assert row.customer == "never-seen-before"
    assert row.timestamp == moment
    assert (row.provider, row.hardware, row.latency_ms) == ("openai", "h100", 850)
    assert (
        row.input_tokens,
        row.cache_read_input_tokens,
        row.cache_write_input_tokens,
        row.output_tokens,
        row.reasoning_output_tokens,
    ) == (1200, 1000, 0, 300, 120)
    assert row.gpu_seconds == Decimal("1234.000001")
    assert row.properties == {"team": "search", "beta": True, "n": 3}
    assert row.ce_source == ""


@pytest.mark.xfail(
    connection.vendor == "sqlite",
    strict=True,
    reason="known gap of the SQLite demo path: a DECIMAL column has NUMERIC affinity there, "
    "so values beyond 15 significant digits are stored as a binary REAL",
)
def test_gpu_seconds_beyond_15_digits_stored_exactly(api: Api) -> None:
    client = api()
    values = ["123456789012.123456", "0.000001", "99999999999.999999"]
    body = [event(f"g{i}", gpu_seconds=v) for i, v in enumerate(values)]
    assert post(client, body).json()["accepted"] == 3
    assert {e.event_id: e.gpu_seconds for e in Event.objects.all()} == {
        f"g{i}": Decimal(v) for i, v in enumerate(values)
    }
    assert totals(client, "acme")["gpu_seconds"] == "223456789012.123456"


def test_mixed_batch_keeps_the_valid_events(api: Api) -> None:
    body = [
        event("ok-1"),
        event("bad-model", model=None),
        event("ok-2", output_tokens=7),
        event("bad-tokens", output_tokens=-3, gpu_seconds="0.0000001"),
        "not an object",
        event("bad-time", timestamp=iso(datetime.now(UTC) + timedelta(hours=1))),
    ]
    response = post(api(), body)
    assert response.status_code == 202
    result = response.json()
    assert result["accepted"] == 2
    assert result["duplicates"] == 0
    assert "conflicts" not in result
    rejected = {r["index"]: r for r in result["rejected"]}
    assert set(rejected) == {1, 3, 4, 5}
    assert rejected[1]["event_id"] == "bad-model"
    assert set(rejected[1]["errors"]) == {"model"}
    assert rejected[3]["event_id"] == "bad-tokens"
    assert set(rejected[3]["errors"]) == {"output_tokens", "gpu_seconds"}
    assert rejected[4] == {
        "index": 4,
        "event_id": None,
        "errors": {"event": "must be a JSON object"},
    }
    assert rejected[5]["errors"] == {"timestamp": "is more than 5 minutes in the future"}
    assert set(stored()) == {"ok-1", "ok-2"}


def test_all_invalid_400_with_same_body(api: Api) -> None:
    body = [event("x", input_tokens=-1), event("y", customer="")]
    response = post(api(), body)
    assert response.status_code == 400
    assert response.json() == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": [
            {
                "index": 0,
                "event_id": "x",
                "errors": {"input_tokens": "must be a non-negative integer"},
            },
            {"index": 1, "event_id": "y", "errors": {"customer": "must not be empty"}},
        ],
    }
    assert not Event.objects.exists()
    assert not EventKey.objects.exists()


def test_lateness_and_future_limits_over_http(api: Api) -> None:
    now = datetime.now(UTC)
    body = [
        event("late", timestamp=iso(now - timedelta(days=35, minutes=1))),
        event("future", timestamp=iso(now + timedelta(minutes=6))),
        event("almost-late", timestamp=iso(now - timedelta(days=34, hours=23))),
        event("almost-future", timestamp=iso(now + timedelta(minutes=4))),
    ]
    response = post(api(), body)
    assert response.status_code == 202
    result = response.json()
    assert result["accepted"] == 2
    errors = {r["event_id"]: r["errors"] for r in result["rejected"]}
    assert errors == {
        "late": {"timestamp": "is older than the lateness window of 35 days"},
        "future": {"timestamp": "is more than 5 minutes in the future"},
    }
    assert set(stored()) == {"almost-late", "almost-future"}


def test_lateness_window_from_setting(api: Api, settings: Any) -> None:
    settings.INFERBILL_MAX_EVENT_AGE_DAYS = 2
    old = iso(datetime.now(UTC) - timedelta(days=3))
    response = post(api(), [event("a", timestamp=old)])
    assert response.status_code == 400
    assert response.json()["rejected"][0]["errors"] == {
        "timestamp": "is older than the lateness window of 2 days"
    }


# --- duplicates, retries and conflicts ----------------------------------------------------


def test_duplicates_within_a_batch(api: Api) -> None:
    response = post(api(), [event("a"), event("b"), event("a"), event("a")])
    assert response.status_code == 202
    assert response.json() == {"accepted": 2, "duplicates": 2, "rejected": []}
    assert Event.objects.count() == 2


def test_duplicates_across_requests(api: Api) -> None:
    client = api()
    assert post(client, [event("a"), event("b")]).json()["accepted"] == 2
    response = post(client, [event("b"), event("c")])
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert sorted(stored()) == ["a", "b", "c"]


@pytest.mark.parametrize("with_timestamps", [True, False])
def test_retry_of_a_succeeded_request_is_all_duplicates(api: Api, with_timestamps: bool) -> None:
    client = api()
    now = datetime.now(UTC) - timedelta(seconds=1)
    extra = {"timestamp": iso(now)} if with_timestamps else {}
    # 20 events: the COPY path; 3: the VALUES path.
    for size in (20, 3):
        body = [event(f"r{size}-{i}", **extra) for i in range(size)]
        first = post(client, body)
        assert first.status_code == 202
        assert first.json() == {"accepted": size, "duplicates": 0, "rejected": []}
        if not with_timestamps:
            time.sleep(0.01)  # a defaulted timestamp differs on the retry; still no conflict
        retry = post(client, body)
        assert retry.status_code == 202
        assert retry.json() == {"accepted": 0, "duplicates": size, "rejected": []}
    assert Event.objects.count() == 23


def test_retry_of_a_partly_rejected_request(api: Api) -> None:
    client = api()
    body = [event("a"), event("bad", model="")]
    first = post(client, body)
    assert first.status_code == 202
    retry = post(client, body)
    # The retry of a request that succeeded answers 202, every valid event a duplicate.
    assert retry.status_code == 202
    assert retry.json()["accepted"] == 0
    assert retry.json()["duplicates"] == 1
    assert retry.json()["rejected"] == first.json()["rejected"]


@pytest.mark.parametrize("size", [1, 20])
def test_conflicting_duplicate_across_requests(api: Api, size: int) -> None:
    client = api()
    body = [event(f"c{i}", output_tokens=10) for i in range(size)]
    assert post(client, body).json()["accepted"] == size
    changed = [event(f"c{i}", output_tokens=10) for i in range(size)]
    changed[0]["output_tokens"] = 99
    response = post(client, changed)
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 0,
        "duplicates": size,
        "rejected": [],
        "conflicts": ["c0"],
    }
    # The first version stands.
    assert stored()["c0"].output_tokens == 10
    assert totals(client, "acme")["output_tokens"] == 10 * size


def test_conflicting_duplicate_within_a_batch(api: Api) -> None:
    client = api()
    response = post(client, [event("a", hardware="h100"), event("a", hardware="a100")])
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 1, "rejected": [], "conflicts": ["a"]}
    assert stored()["a"].hardware == "h100"


def test_offset_change_is_not_a_conflict(api: Api) -> None:
    client = api()
    moment = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    assert post(client, [event("a", timestamp=iso(moment))]).json()["accepted"] == 1
    shifted = moment.astimezone(timezone(timedelta(hours=-7))).isoformat()
    response = post(client, [event("a", timestamp=shifted)])
    assert response.json() == {"accepted": 0, "duplicates": 1, "rejected": []}


def test_same_event_id_from_two_sources_both_stored(api: Api, make_key: Callable[..., str]) -> None:
    first = api(key=make_key(source="product-a"))
    second = api(key=make_key(source="product-b"))
    assert post(first, [event("shared")]).json()["accepted"] == 1
    assert post(second, [event("shared")]).json()["accepted"] == 1
    assert Event.objects.filter(event_id="shared").count() == 2
    # Two keys of one source share its idempotency keys.
    third = api(key=make_key(source="product-a"))
    assert post(third, [event("shared")]).json() == {"accepted": 0, "duplicates": 1, "rejected": []}


# --- CloudEvents --------------------------------------------------------------------------


def cloud(id_: str, source: str = "//gateway/eu", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_,
        "source": source,
        "type": "com.example.inference.completed",
        "subject": "acme",
        "time": iso(datetime.now(UTC) - timedelta(minutes=1)),
        "datacontenttype": "application/json",
        "data": {
            "model": "gpt-4o",
            "hardware": "h100",
            "input_tokens": 10,
            "output_tokens": 2,
            **data,
        },
    }


def test_single_cloud_event(api: Api) -> None:
    response = post(api(), cloud("ce-1"), content_type="application/cloudevents+json")
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    row = Event.objects.get(event_id="ce-1")
    assert (row.customer, row.ce_source, row.ce_type) == (
        "acme",
        "//gateway/eu",
        "com.example.inference.completed",
    )
    assert (row.input_tokens, row.output_tokens, row.hardware) == (10, 2, "h100")


def test_cloud_events_batch_two_sources_same_id(api: Api) -> None:
    client = api()
    first = cloud("same")
    body = [first, cloud("same", source="//gateway/us"), first]
    response = post(client, body, content_type="application/cloudevents-batch+json")
    assert response.status_code == 202
    assert response.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert sorted(Event.objects.values_list("ce_source", flat=True)) == [
        "//gateway/eu",
        "//gateway/us",
    ]
    # A native event with the same id is a different event.
    assert post(client, [event("same")]).json()["accepted"] == 1


def test_cloud_event_keyed_by_its_own_source_across_our_sources(
    api: Api, make_key: Callable[..., str]
) -> None:
    body = cloud("ce-x")
    first = post(api(key=make_key(source="a")), body, content_type="application/cloudevents+json")
    assert first.json()["accepted"] == 1
    # (source, id) is globally unique by the CloudEvents spec, whoever relays it.
    second = post(api(key=make_key(source="b")), body, content_type="application/cloudevents+json")
    assert second.json() == {"accepted": 0, "duplicates": 1, "rejected": []}


def test_cloud_events_batch_mixed_and_usage_data(api: Api) -> None:
    body = [
        cloud("ok", usage=None),
        cloud("bad-spec") | {"specversion": "0.3"},
        cloud("anthropic", input_tokens=None, output_tokens=None)
        | {
            "data": {
                "model": "claude",
                "usage": {"input_tokens": 5, "cache_read_input_tokens": 95, "output_tokens": 7},
            }
        },
    ]
    del body[0]["data"]["usage"]
    response = post(api(), body, content_type="application/cloudevents-batch+json")
    assert response.status_code == 202
    result = response.json()
    assert result["accepted"] == 2
    assert result["rejected"] == [
        {"index": 1, "event_id": "bad-spec", "errors": {"specversion": 'must be "1.0"'}}
    ]
    row = Event.objects.get(event_id="anthropic")
    assert (row.input_tokens, row.cache_read_input_tokens, row.output_tokens) == (100, 95, 7)


def test_cloud_event_content_types_take_their_shape(api: Api) -> None:
    client = api()
    single_as_array = post(client, [cloud("a")], content_type="application/cloudevents+json")
    assert single_as_array.status_code == 400
    assert "one CloudEvent" in single_as_array.json()["detail"]
    batch_as_object = post(client, cloud("a"), content_type="application/cloudevents-batch+json")
    assert batch_as_object.status_code == 400
    assert "array" in batch_as_object.json()["detail"]
    # A native event sent as a CloudEvent is rejected field by field, not stored.
    native = post(client, event("n"), content_type="application/cloudevents+json")
    assert native.status_code == 400
    assert {"specversion", "id", "source", "type", "subject", "data"} <= set(
        native.json()["rejected"][0]["errors"]
    )
    assert not Event.objects.exists()


# --- the database unreachable -------------------------------------------------------------


@pytest.fixture(params=["wsgi", "production"])
def server_without_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A second, real server process (gunicorn) whose DATABASE_URL names a closed port:
    the WSGI application, or what production runs (deploy/gunicorn.conf.py: the ASGI
    application under uvicorn's worker, which answers a known key's small writes on
    its event loop)."""
    port, dead_db_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{dead_db_port}/inferbill",
        "DATABASE_CONNECT_TIMEOUT": "2",
        "CELERY_BROKER_URL": "",
    }
    if request.param == "wsgi":
        arguments = ["inferbill.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    else:
        arguments = ["-c", "deploy/gunicorn.conf.py"]
        env |= {"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1"}
    with gunicorn_serving(arguments, port=port, env=env) as (url, ready, _):
        # Each variant is served by the worker it names.
        expected = "uvicorn" if request.param == "production" else "gunicorn"
        assert ready.headers.get("server") == expected
        yield url


def test_database_unreachable_503_with_retry_after(server_without_database: str) -> None:
    headers = {
        "Authorization": "Bearer ib_0123456789ab_somesecretthatcannotbechecked",
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=server_without_database, headers=headers, timeout=30) as client:
        response = client.post("/v1/events", content=json.dumps([event("a")]))
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "nothing was stored" in response.json()["detail"]
        # A key of the shape the server issues, and one event as an object: the
        # request the ASGI path answers itself once it knows the key. Unknown here (no
        # database to know it from), it is looked up first, and that fails the same way.
        issued_shape, _, _ = ApiKey.generate()
        one = client.post(
            "/v1/events",
            content=json.dumps(event("b")),
            headers={"Authorization": f"Bearer {issued_shape}"},
        )
        assert one.status_code == 503
        assert int(one.headers["Retry-After"]) > 0
        assert "nothing was stored" in one.json()["detail"]
        read = client.get("/v1/customers/acme/usage")
        assert read.status_code == 503
        assert int(read.headers["Retry-After"]) > 0
        # Without a key nothing touches the database: still a plain 401.
        anonymous = httpx.post(
            f"{server_without_database}/v1/events",
            content=json.dumps([event("a")]),
            headers={"Content-Type": "application/json"},
        )
        assert anonymous.status_code == 401


# --- input the database cannot hold is rejected by field, never a 500 ----------------------


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"event_id": "a\u0000b"}, "event_id"),
        ({"customer": "acme\u0000"}, "customer"),
        ({"model": "\u0000"}, "model"),
        ({"provider": "open\u0000ai"}, "provider"),
        ({"hardware": "h100\u0000"}, "hardware"),
        ({"properties": {"team": "a\u0000"}}, "properties.team"),
        ({"properties": {"te\u0000am": "a"}}, "properties"),
        ({"properties": {"big": Decimal("1e200000")}}, "properties.big"),
        ({"properties": {"tiny": Decimal("1e-20000")}}, "properties.tiny"),
        ({"properties": {"wide": Decimal("1e131000")}}, "properties.wide"),
        ({"properties": {"long": 10**60}}, "properties.long"),
    ],
)
def test_unstorable_values_rejected_by_field(api: Api, fields: dict[str, Any], name: str) -> None:
    client = api()
    raw = event("x", **fields) if "event_id" not in fields else {**event("x"), **fields}
    body = [raw, event("fine")]
    content = json.dumps(body, default=lambda d: float("nan")).encode()
    if any(isinstance(v, Decimal) for v in fields.get("properties", {}).values()):
        # json cannot write these numbers; splice them in as JSON number literals.
        literal = str(next(iter(fields["properties"].values())))
        content = content.replace(b"NaN", literal.encode())
    response = post(client, content)
    assert response.status_code == 202, response.text
    result = response.json()
    assert result["accepted"] == 1
    assert [r["index"] for r in result["rejected"]] == [0]
    assert name in result["rejected"][0]["errors"]
    assert list(Event.objects.values_list("event_id", flat=True)) == ["fine"]


def test_nul_in_cloud_event_envelope_rejected(api: Api) -> None:
    body = [cloud("a\u0000"), cloud("b", source="//gw\u0000"), cloud("c") | {"type": "t\u0000"}]
    response = post(api(), body, content_type="application/cloudevents-batch+json")
    assert response.status_code == 400
    errors = [r["errors"] for r in response.json()["rejected"]]
    assert ["id" in errors[0], "source" in errors[1], "type" in errors[2]] == [True] * 3


def test_nul_in_otel_model_rejected(api: Api) -> None:
    raw = {
        "event_id": "otel",
        "customer": "acme",
        "attributes": {"gen_ai.request.model": "gpt\u0000", "gen_ai.usage.input_tokens": 1},
    }
    response = post(api(), [raw])
    assert response.status_code == 400
    assert "model" in response.json()["rejected"][0]["errors"]


@pytest.mark.parametrize(
    "body",
    [b'[{"event_id": "\xed\xa0\x80"}]', b'{"customer": "caf\xe9"}', b'["\xc3\x28"]'],
)
def test_invalid_utf8_body_400(api: Api, body: bytes) -> None:
    response = post(api(), body)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
