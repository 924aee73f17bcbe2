"""API-key authentication and scope permissions for the public API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from metering.models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView


@dataclass(frozen=True, slots=True)
class ApiPrincipal:
    """Who is calling: an API key of a source."""

    key_id: int
    source_id: int
    scopes: frozenset[str]

    is_authenticated: bool = True
    is_anonymous: bool = False


def api_key_resolve(raw_key: str) -> ApiKey | None:
    """The active key for a raw key string, or None. Revocation is read from the
    database on every call, so it takes effect on the next request."""
    parts = ApiKey.split(raw_key)
    if parts is None:
        return None
    prefix, secret = parts
    key = (
        ApiKey.objects.filter(prefix=prefix)
        .only("id", "source_id", "secret_hash", "scopes", "revoked_at", "last_used_at")
        .first()
    )
    if key is None or not key.secret_matches(secret) or not key.is_active:
        return None
    now = timezone.now()
    stale_before = now - timedelta(seconds=ApiKey.LAST_USED_RESOLUTION_SECONDS)
    if key.last_used_at is None or key.last_used_at < stale_before:
        # Conditional, so of many concurrent requests on a stale key only one writes.
        ApiKey.objects.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before), pk=key.pk
        ).update(last_used_at=now)
    return key


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <api key>'.")
        key = api_key_resolve(raw_key.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        principal = ApiPrincipal(
            key_id=key.id, source_id=key.source_id, scopes=frozenset(key.scopes)
        )
        return principal, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="inferbill"'


def scope_required(scope: str) -> type[BasePermission]:
    """A permission class that admits keys carrying `scope`."""

    class HasScope(BasePermission):
        message = f"This API key lacks the '{scope}' scope."

        def has_permission(self, request: Request, view: APIView) -> bool:
            principal = request.user
            if not isinstance(principal, ApiPrincipal):
                raise exceptions.NotAuthenticated("Authorization: Bearer <api key> is required.")
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
