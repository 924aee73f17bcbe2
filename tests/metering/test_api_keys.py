"""API keys: the create/revoke commands, hashing, scopes and last_used_at."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metering.auth import api_principal_resolve
from metering.models import ApiKey, Source
from metering.services import api_key_create, api_key_revoke
from tests.metering.helpers import event, post

pytestmark = pytest.mark.django_db

KEY_PATTERN = re.compile(r"ib_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def create(*args: str) -> tuple[str, list[str]]:
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out)
    lines = out.getvalue().rstrip("\n").split("\n")
    return lines[-1], lines


def test_create_prints_the_raw_key_alone_on_the_last_line() -> None:
    raw, lines = create("--source", "chat-product")
    assert KEY_PATTERN.fullmatch(raw), raw
    # Only the last line holds the key; the lines before never repeat it.
    assert len(lines) >= 2
    assert all(raw not in line for line in lines[:-1])
    key = ApiKey.objects.get()
    assert key.source.name == "chat-product"
    assert key.prefix == KEY_PATTERN.fullmatch(raw).group(1)
    assert key.scopes == ["ingest", "read"]


def test_only_the_hash_is_stored() -> None:
    raw, _ = create("--source", "chat-product", "--name", "prod")
    prefix, secret = KEY_PATTERN.fullmatch(raw).groups()
    key = ApiKey.objects.get()
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert key.name == "prod"
    # The secret appears in no column of the row, nor anywhere in the table's dump.
    values = ApiKey.objects.values()[0]
    dump = json.dumps(values, default=str)
    assert secret not in dump
    assert raw not in dump
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM metering_apikey")
        assert all(secret not in str(v) for row in cursor.fetchall() for v in row)
    # And the key resolves by its prefix and the hash of its secret.
    resolved = api_principal_resolve(raw)
    assert resolved is not None
    assert resolved.key_id == key.pk
    assert api_principal_resolve(f"ib_{prefix}_{secret[:-1]}x") is None


def test_keys_are_unique() -> None:
    raws = {create("--source", "p")[0] for _ in range(5)}
    assert len(raws) == 5
    assert Source.objects.count() == 1
    assert ApiKey.objects.values("prefix").distinct().count() == 5


@pytest.mark.parametrize(
    ("args", "scopes"),
    [
        ((), ["ingest", "read"]),
        (("--scope", "ingest"), ["ingest"]),
        (("--scope", "read"), ["read"]),
        (("--scope", "read", "--scope", "ingest"), ["ingest", "read"]),
        (("--scope", "billing"), ["billing"]),
    ],
)
def test_scopes(args: tuple[str, ...], scopes: list[str]) -> None:
    create("--source", "p", *args)
    assert ApiKey.objects.get().scopes == scopes


def test_unknown_scope_refused() -> None:
    with pytest.raises(CommandError):
        create("--source", "p", "--scope", "admin")
    with pytest.raises(ValueError, match="scopes"):
        api_key_create(source_name="p", scopes=["ingest", "everything"])
    with pytest.raises(ValueError, match="scopes"):
        api_key_create(source_name="p", scopes=[])
    assert not ApiKey.objects.exists()


def test_source_is_required() -> None:
    with pytest.raises(CommandError):
        create("--scope", "read")


def test_source_created_once_and_reused() -> None:
    create("--source", "a")
    create("--source", "a")
    create("--source", "b")
    assert sorted(Source.objects.values_list("name", flat=True)) == ["a", "b"]
    assert ApiKey.objects.filter(source__name="a").count() == 2


@pytest.mark.parametrize("by", ["raw", "prefix"])
def test_revoke_command(by: str) -> None:
    raw, _ = create("--source", "p")
    prefix = KEY_PATTERN.fullmatch(raw).group(1)
    other, _ = create("--source", "p")
    out = io.StringIO()
    call_command("revoke_api_key", raw if by == "raw" else prefix, stdout=out)
    assert prefix in out.getvalue()
    key = ApiKey.objects.get(prefix=prefix)
    assert key.revoked_at is not None
    assert api_principal_resolve(raw) is None
    # Other keys of the same source keep working.
    assert api_principal_resolve(other) is not None


def test_revoke_is_idempotent() -> None:
    raw, _ = create("--source", "p")
    prefix = KEY_PATTERN.fullmatch(raw).group(1)
    first = api_key_revoke(prefix=prefix).revoked_at
    call_command("revoke_api_key", prefix, stdout=io.StringIO())
    assert ApiKey.objects.get(prefix=prefix).revoked_at == first


def test_revoke_unknown_key() -> None:
    with pytest.raises(CommandError, match="No API key"):
        call_command("revoke_api_key", "ffffffffffff", stdout=io.StringIO())


def test_created_key_works_over_http_until_revoked(
    api: Callable[..., httpx.Client],
) -> None:
    raw, _ = create("--source", "cli", "--scope", "ingest")
    client = api(key=raw)
    assert post(client, [event("a")]).status_code == 202
    assert client.get("/v1/customers/acme/usage").status_code == 403
    call_command("revoke_api_key", raw, stdout=io.StringIO())
    assert post(client, [event("b")]).status_code == 401


# --- last_used_at: kept, without a write per request ------------------------------------


def _apikey_writes(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if "metering_apikey" in q["sql"] and q["sql"].lstrip().upper().startswith("UPDATE")
    ]


def test_last_used_at_written_once_then_not_per_request() -> None:
    key, raw = api_key_create(source_name="p")
    assert key.last_used_at is None
    client = Client(headers={"Authorization": f"Bearer {raw}"})

    with CaptureQueriesContext(connection) as first:
        assert client.get("/v1/customers/acme/usage").status_code == 200
    assert len(_apikey_writes(first)) == 1
    key.refresh_from_db()
    stamped = key.last_used_at
    assert stamped is not None
    assert timezone.now() - stamped < timedelta(seconds=30)

    with CaptureQueriesContext(connection) as later:
        for _ in range(5):
            assert client.get("/v1/customers/acme/usage").status_code == 200
            response = client.post(
                "/v1/events", data=json.dumps([event("a")]), content_type="application/json"
            )
            assert response.status_code == 202
    assert _apikey_writes(later) == []
    key.refresh_from_db()
    assert key.last_used_at == stamped


def test_stale_last_used_at_refreshed() -> None:
    key, raw = api_key_create(source_name="p")
    old = timezone.now() - timedelta(seconds=ApiKey.LAST_USED_RESOLUTION_SECONDS + 60)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=old)
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/v1/customers/acme/usage").status_code == 200
    assert len(_apikey_writes(queries)) == 1
    key.refresh_from_db()
    assert key.last_used_at > old + timedelta(seconds=60)


def test_failed_authentication_does_not_stamp() -> None:
    key, raw = api_key_create(source_name="p")
    prefix = ApiKey.split(raw)[0]
    client = Client(headers={"Authorization": f"Bearer ib_{prefix}_wrongsecret"})
    assert client.get("/v1/customers/acme/usage").status_code == 401
    key.refresh_from_db()
    assert key.last_used_at is None
