"""API-key authentication and scope permissions for the public API."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from django.db import connection
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from inferbill.db import first_query
from metering.models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView


@dataclass(frozen=True, slots=True)
class ApiPrincipal:
    """Who is calling: an API key of a source.

    `confirmed` is False for a principal recalled from this process's memory
    (`api_principal_recall`): the database has not yet said, in this request, that
    the key is still active. Whoever acts on one must have it confirmed in the same
    statement as the write (see metering.ingest `confirm_key_id`)."""

    key_id: int
    source_id: int
    scopes: frozenset[str]
    confirmed: bool = True

    is_authenticated: bool = True
    is_anonymous: bool = False


@dataclass(slots=True)
class _Known:
    principal: ApiPrincipal  # unconfirmed
    secret_hash: str
    last_used_at: datetime | None


# Keys this process has seen pass the database check, by prefix. A key's source,
# scopes and secret never change (the admin cannot edit them); whether it is still
# active can, so an entry only spares the ingest path its lookup query, never the
# check itself, which then rides in the write statement: a revocation still takes
# effect on the next request. Reads and writes of a dict are atomic under the GIL.
_known: dict[str, _Known] = {}
_KNOWN_LIMIT = 10_000


_KEY_SQL = (
    "SELECT id, source_id, secret_hash, scopes, revoked_at, last_used_at "
    "FROM metering_apikey WHERE prefix = %s"
)


def _key_row(prefix: str) -> tuple[Any, ...] | None:
    """The key's row: one indexed query, a prepared statement on PostgreSQL."""
    if connection.vendor != "postgresql":
        row = (
            ApiKey.objects.filter(prefix=prefix)
            .values_list("id", "source_id", "secret_hash", "scopes", "revoked_at", "last_used_at")
            .first()
        )
        return row

    def read() -> tuple[Any, ...] | None:
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(_KEY_SQL, (prefix,), prepare=True)
            row: tuple[Any, ...] | None = cursor.fetchone()
            return row

    return first_query(read)


def api_principal_resolve(raw_key: str) -> ApiPrincipal | None:
    """The caller behind a raw key string, or None for an unknown, wrong or revoked
    key. Read from the database on every call, so a revocation takes effect on the
    next request."""
    parts = ApiKey.split(raw_key)
    if parts is None:
        return None
    prefix, secret = parts
    row = _key_row(prefix)
    if row is None:
        _known.pop(prefix, None)
        return None
    key_id, source_id, secret_hash, scopes, revoked_at, last_used_at = row
    if revoked_at is not None or not hmac.compare_digest(secret_hash, ApiKey.hash_secret(secret)):
        _known.pop(prefix, None)
        return None
    last_used_at = _last_used_stamp(key_id, last_used_at)
    # jsonb arrives as text: Django's connection leaves JSON decoding to its fields.
    scopes = json.loads(scopes) if isinstance(scopes, str) else scopes
    principal = ApiPrincipal(key_id=key_id, source_id=source_id, scopes=frozenset(scopes))
    if len(_known) >= _KNOWN_LIMIT:
        _known.clear()
    _known[prefix] = _Known(replace(principal, confirmed=False), secret_hash, last_used_at)
    return principal


def api_principal_recall(raw_key: str, *, stamp: bool = True) -> ApiPrincipal | None:
    """The unconfirmed principal of a key this process has already checked against
    the database; None when the key is not known here or its secret does not match.
    See ApiPrincipal.confirmed. Without a query, except to refresh the key's
    last_used_at when that is due; with `stamp=False` never: a key whose stamp is
    due is then not recalled (None), and the caller takes the way that queries."""
    parts = ApiKey.split(raw_key)
    if parts is None:
        return None
    prefix, secret = parts
    known = _known.get(prefix)
    if known is None or not hmac.compare_digest(known.secret_hash, ApiKey.hash_secret(secret)):
        return None
    if not stamp:
        return None if _stamp_due(known.last_used_at, timezone.now()) else known.principal
    known.last_used_at = _last_used_stamp(known.principal.key_id, known.last_used_at)
    return known.principal


def api_principal_forget(key_id: int) -> None:
    """Drop a key from this process's memory (the database no longer confirms it)."""
    for prefix, known in list(_known.items()):
        if known.principal.key_id == key_id:
            _known.pop(prefix, None)


def _last_used_stamp(key_id: int, last_used_at: datetime | None) -> datetime | None:
    """Refresh the key's last_used_at when it is older than the resolution; returns
    the value it now has, as far as this call knows."""
    now = timezone.now()
    if _stamp_due(last_used_at, now):
        stale_before = _stale_before(now)
        # Conditional, so of many concurrent requests on a stale key only one writes.
        ApiKey.objects.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before), pk=key_id
        ).update(last_used_at=now)
        return now
    return last_used_at


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=ApiKey.LAST_USED_RESOLUTION_SECONDS)


def _stamp_due(last_used_at: datetime | None, now: datetime) -> bool:
    return last_used_at is None or last_used_at < _stale_before(now)


MALFORMED_AUTHORIZATION = "Authorization must be 'Bearer <api key>'."
UNKNOWN_KEY = "Unknown or revoked API key."
MISSING_AUTHORIZATION = "Authorization: Bearer <api key> is required."
WWW_AUTHENTICATE = 'Bearer realm="inferbill"'


def authenticate_header(header: str, *, recall: bool = False) -> ApiPrincipal | str:
    """The principal for an Authorization header, or why it is refused (a 401). With
    `recall`, a key this process already knows comes back unconfirmed, without a
    query (see ApiPrincipal.confirmed)."""
    scheme, _, raw_key = header.partition(" ")
    raw_key = raw_key.strip()
    if scheme.lower() != "bearer" or not raw_key:
        return MALFORMED_AUTHORIZATION
    if recall and (principal := api_principal_recall(raw_key)) is not None:
        return principal
    return api_principal_resolve(raw_key) or UNKNOWN_KEY


def scope_missing(scope: str) -> str:
    return f"This API key lacks the '{scope}' scope."


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiPrincipal, None] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        principal = authenticate_header(header)
        if isinstance(principal, str):
            raise exceptions.AuthenticationFailed(principal)
        return principal, None

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


def scope_required(scope: str) -> type[BasePermission]:
    """A permission class that admits keys carrying `scope`."""

    class HasScope(BasePermission):
        message = scope_missing(scope)

        def has_permission(self, request: Request, view: APIView) -> bool:
            principal = request.user
            if not isinstance(principal, ApiPrincipal):
                raise exceptions.NotAuthenticated(MISSING_AUTHORIZATION)
            return scope in principal.scopes

    HasScope.__name__ = f"Has{scope.title()}Scope"
    return HasScope


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes the bearer API key in the OpenAPI schema."""

    target_class = "metering.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `manage.py create_api_key`, as `Bearer ib_…`.",
        }
