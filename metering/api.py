"""HTTP endpoints of the metering app: thin views over services and selectors."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inferbill.api import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS
from metering import schema
from metering.auth import (
    MISSING_AUTHORIZATION,
    WWW_AUTHENTICATE,
    ApiPrincipal,
    api_principal_forget,
    authenticate_header,
    scope_missing,
    scope_required,
)
from metering.ingest import KeyInactive
from metering.models import SCOPE_INGEST, SCOPE_READ
from metering.selectors import current_month, customer_usage
from metering.services import IngestError, events_ingest

_encoder = msgspec.json.Encoder()

CONTENT_TYPES = {
    "application/json": None,
    "application/cloudevents+json": "single",
    "application/cloudevents-batch+json": "batch",
}


def _json(body: dict[str, Any], status: int) -> HttpResponse:
    return HttpResponse(_encoder.encode(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> HttpResponse:
    return _json({"detail": message}, status)


_ERRORS = {
    400: OpenApiResponse(
        schema.IngestResponseSerializer,
        description="Nothing accepted and something rejected (same body as 202), or a body "
        "that is not JSON, not an object or array, or an empty array ({detail}).",
    ),
    401: OpenApiResponse(schema.ErrorSerializer, description="Missing, unknown or revoked key."),
    403: OpenApiResponse(schema.ErrorSerializer, description="Key without the ingest scope."),
    413: OpenApiResponse(
        schema.ErrorSerializer, description="More than 5,000 events or 5 MiB in one request."
    ),
    415: OpenApiResponse(schema.ErrorSerializer, description="Unsupported Content-Type."),
    503: OpenApiResponse(
        schema.ErrorSerializer,
        description="Database unavailable; nothing stored. See Retry-After.",
    ),
}


def events_post(request: HttpRequest) -> HttpResponse:
    """POST /v1/events, outside DRF: the ingest hot path.

    DRF's request wrapping, content negotiation and authentication/permission classes
    cost more per request than storing a single event does, so the served POST comes
    straight here (from inferbill.wsgi, or from EventsView.dispatch). It answers what
    a DRF view would: 401 with WWW-Authenticate, 403, 415, 413, 400, 202 and 503.

    The key: one this process has already checked is recalled without a query and
    confirmed by the statement that stores the events (one round trip per request);
    if that statement finds it revoked, the request is answered again with the key
    read from the database. A revocation takes effect on the next request either way."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    try:
        try:
            return _events_post(request, header, recall=True)
        except KeyInactive:
            return _events_post(request, header, recall=False)
    except (OperationalError, InterfaceError):
        response = _json(DATABASE_UNAVAILABLE, 503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


def _events_post(request: HttpRequest, header: str, *, recall: bool) -> HttpResponse:
    principal = authenticate_header(header, recall=recall) if header else MISSING_AUTHORIZATION
    if isinstance(principal, str):
        response = _error(401, principal)
        response["WWW-Authenticate"] = WWW_AUTHENTICATE
        return response
    if SCOPE_INGEST not in principal.scopes:
        return _refuse(principal, 403, scope_missing(SCOPE_INGEST))
    return _events_ingest(request, principal=principal)


def _refuse(principal: ApiPrincipal, status: int, message: str) -> HttpResponse:
    if not principal.confirmed:
        # A recalled key is confirmed before any refusal: a revoked key gets its 401.
        raise KeyInactive
    return _error(status, message)


def _events_ingest(request: HttpRequest, *, principal: ApiPrincipal) -> HttpResponse:
    media_type = (request.content_type or "").split(";")[0].strip().lower()
    if media_type not in CONTENT_TYPES:
        return _refuse(
            principal,
            415,
            f"Content-Type must be one of {', '.join(CONTENT_TYPES)}; got "
            f"'{media_type or 'none'}'.",
        )
    max_bytes: int = settings.INFERBILL_MAX_BODY_BYTES
    too_large = f"Body too large: the limit is {max_bytes} bytes (5 MiB)."
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > max_bytes:
        return _refuse(principal, 413, too_large)
    body = request.body
    if len(body) > max_bytes:
        return _refuse(principal, 413, too_large)
    try:
        outcome = events_ingest(
            source_id=principal.source_id,
            body=body,
            cloudevents=CONTENT_TYPES[media_type],
            confirm_key_id=None if principal.confirmed else principal.key_id,
        )
    except IngestError as exc:
        return _refuse(principal, exc.status, exc.message)
    except KeyInactive:
        api_principal_forget(principal.key_id)
        raise
    if not principal.confirmed and not (outcome.accepted or outcome.duplicates):
        raise KeyInactive  # no valid event, so no write confirmed the key: ask the database
    return _json(outcome.body(), outcome.status)


class EventsView(APIView):
    """POST /v1/events. The DRF class carries the OpenAPI description (drf-spectacular
    reads `post` below); serving a POST skips DRF for `events_post`."""

    permission_classes: ClassVar = [scope_required(SCOPE_INGEST)]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            return events_post(request)
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(
        operation_id="events_ingest",
        summary="Report inference usage events",
        description=(
            "One native event or an array of up to 5,000 (application/json), one CloudEvent "
            "(application/cloudevents+json) or a CloudEvents batch "
            "(application/cloudevents-batch+json). Valid events are stored even when others "
            "in the same request are rejected; the answer comes only after they are durably "
            "stored. Re-sending an event is safe: it counts as a duplicate."
        ),
        request={
            "application/json": schema.NativeEventSerializer(many=True),
            "application/cloudevents+json": schema.CloudEventSerializer,
            "application/cloudevents-batch+json": schema.CloudEventSerializer(many=True),
        },
        responses={202: schema.IngestResponseSerializer, **_ERRORS},
        examples=[
            OpenApiExample(
                "OpenAI chat usage",
                request_only=True,
                value=[
                    {
                        "event_id": "req_123",
                        "customer": "acme",
                        "model": "gpt-4o",
                        "usage": {
                            "prompt_tokens": 1200,
                            "completion_tokens": 300,
                            "prompt_tokens_details": {"cached_tokens": 1000},
                        },
                    }
                ],
            )
        ],
    )
    def post(self, request: Request) -> HttpResponse:
        # Served by events_post through dispatch; here for the schema.
        return events_post(request._request)


def parse_instant(value: str | None, *, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        # A "+" in a query string arrives as a space; only the offset can hold one here.
        value = value[:11] + value[11:].replace(" ", "+")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: must be an RFC 3339 date-time with offset") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name}: must include a UTC offset (Z or ±hh:mm)")
    return parsed


class CustomerUsageView(APIView):
    permission_classes: ClassVar = [scope_required(SCOPE_READ)]

    @extend_schema(
        operation_id="customer_usage",
        summary="A customer's usage in a time range",
        parameters=[
            OpenApiParameter("start", str, description="RFC 3339; default: start of this month"),
            OpenApiParameter("end", str, description="RFC 3339, exclusive; default: next month"),
            OpenApiParameter("group_by", str, enum=["model", "hardware", "day"]),
        ],
        responses={
            200: schema.UsageResponseSerializer,
            400: OpenApiResponse(schema.ErrorSerializer, description="Bad query parameter."),
            401: OpenApiResponse(schema.ErrorSerializer),
            403: OpenApiResponse(schema.ErrorSerializer, description="Key without read scope."),
            503: OpenApiResponse(schema.ErrorSerializer),
        },
    )
    def get(self, request: Request, customer: str) -> Response:
        default_start, default_end = current_month(timezone.now())
        try:
            start = parse_instant(request.query_params.get("start"), name="start") or default_start
            end = parse_instant(request.query_params.get("end"), name="end") or default_end
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=400)
        if end <= start:
            return Response({"detail": "end: must be after start"}, status=400)
        group_by = request.query_params.get("group_by") or None
        if group_by not in (None, "model", "hardware", "day"):
            return Response({"detail": "group_by: must be model, hardware or day"}, status=400)
        report = customer_usage(customer=customer, start=start, end=end, group_by=group_by)
        return Response(
            {
                "customer": report.customer,
                "start": report.start.isoformat(),
                "end": report.end.isoformat(),
                "totals": report.totals,
                "groups": report.groups,
            }
        )
