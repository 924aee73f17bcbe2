"""HTTP endpoints of the pricing app: cost rates, margins, simulations. Thin views over
pricing.services, pricing.selectors and pricing.simulate.

Reads need a key with the `read` scope; creating cost rates needs `billing`."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, ClassVar

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metering.api import parse_instant
from metering.auth import scope_required
from metering.models import SCOPE_BILLING, SCOPE_READ
from pricing import reports, selectors, services
from pricing.models import GPU_HOUR_RATE, PER_MILLION_TOKENS, PER_TOKEN, UTILIZATION, CostRate
from pricing.simulate import SimulationError, plan_simulate

MAX_LIMIT = 1000


class PricingErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.CharField(), required=False)


class CostRateSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    kind = serializers.ChoiceField(choices=CostRate.Kind.choices)
    model = serializers.CharField(required=False, help_text="Token rates: the model name.")
    provider = serializers.CharField(
        required=False, help_text="Token rates: empty matches any provider."
    )
    token_class = serializers.ChoiceField(
        choices=CostRate.TokenClass.choices, required=False, help_text="Token rates."
    )
    usd_per_token = serializers.DecimalField(**PER_TOKEN, required=False, coerce_to_string=True)
    usd_per_million_tokens = serializers.DecimalField(
        **PER_MILLION_TOKENS,
        required=False,
        coerce_to_string=True,
        help_text="Alternative to usd_per_token when creating.",
    )
    hardware = serializers.CharField(required=False, help_text="GPU rates: the hardware type.")
    gpu_hour_rate = serializers.DecimalField(
        **GPU_HOUR_RATE, required=False, help_text="GPU rates: USD per GPU-hour."
    )
    utilization = serializers.DecimalField(
        **UTILIZATION,
        required=False,
        help_text="GPU rates: 0 < u ≤ 1 (default 1). A GPU-second costs rate / 3600 / u.",
    )
    usd_per_gpu_second = serializers.CharField(read_only=True)
    effective_from = serializers.CharField(
        help_text="Date (midnight UTC) or RFC 3339 date-time from which the rate holds. "
        "Once a rate of the key is in force, no earlier than the current hour."
    )
    source = serializers.CharField(read_only=True)
    note = serializers.CharField(required=False)


class CostRateListSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    results = CostRateSerializer(many=True)
    next_offset = serializers.IntegerField(allow_null=True)


class MarginReportSerializer(serializers.Serializer):
    period = serializers.CharField()
    customers = serializers.ListField(child=serializers.DictField())
    totals = serializers.DictField()


class SimulationRequestSerializer(serializers.Serializer):
    plan = serializers.CharField(help_text="Plan code of the candidate plan.")
    plan_version = serializers.IntegerField(required=False, help_text="Default: the latest.")
    period = serializers.CharField(help_text="YYYY-MM: a past period.")


class SimulationSerializer(serializers.Serializer):
    plan = serializers.DictField()
    period = serializers.CharField()
    customers = serializers.ListField(child=serializers.DictField())
    into_negative = serializers.ListField(child=serializers.CharField())
    out_of_negative = serializers.ListField(child=serializers.CharField())
    skipped = serializers.ListField(child=serializers.DictField())
    totals = serializers.DictField()


def _bad(errors: dict[str, str]) -> Response:
    return Response(
        {"detail": "; ".join(f"{k}: {v}" for k, v in errors.items()), "errors": errors}, status=400
    )


def _page(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", 100))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise ValueError("limit, offset: must be integers") from None
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise ValueError(f"limit: 1 to {MAX_LIMIT}; offset: 0 or more")
    return limit, offset


_AUTH_ERRORS = {
    401: OpenApiResponse(PricingErrorSerializer, description="Missing, unknown or revoked key."),
    403: OpenApiResponse(PricingErrorSerializer, description="Key without the needed scope."),
}


class CostRatesView(APIView):
    def get_permissions(self) -> list[BasePermission]:
        scope = SCOPE_READ if self.request.method in ("GET", "HEAD", "OPTIONS") else SCOPE_BILLING
        return [scope_required(scope)()]

    @extend_schema(
        operation_id="cost_rates_list",
        summary="Cost rates",
        description="What compute costs the seller: per model and token class, or per "
        "hardware GPU-hour, each from its `effective_from`. With `at`, only the rate of "
        "each key in force at that instant.",
        parameters=[
            OpenApiParameter("kind", str, enum=["token", "gpu"]),
            OpenApiParameter("model", str),
            OpenApiParameter("provider", str),
            OpenApiParameter("hardware", str),
            OpenApiParameter("at", str, description="RFC 3339: rates in force then"),
            OpenApiParameter("limit", int, description=f"1 to {MAX_LIMIT}, default 100"),
            OpenApiParameter("offset", int),
        ],
        responses={
            200: CostRateListSerializer,
            400: OpenApiResponse(PricingErrorSerializer, description="Bad query parameter."),
            **_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        try:
            at = parse_instant(params.get("at"), name="at")
            limit, offset = _page(request)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=400)
        rates = selectors.cost_rates_list(
            kind=params.get("kind") or None,
            model=params.get("model") or None,
            provider=params.get("provider"),
            hardware=params.get("hardware") or None,
            in_force_at=at,
        )
        count = rates.count()
        page = [reports.cost_rate_dict(r) for r in rates[offset : offset + limit]]
        next_offset = offset + limit if offset + limit < count else None
        return Response({"count": count, "results": page, "next_offset": next_offset})

    @extend_schema(
        operation_id="cost_rates_create",
        summary="Create a cost rate",
        description="A per-token rate (give `usd_per_token` or `usd_per_million_tokens`) or "
        "a GPU-hour rate with a utilization factor. Re-sending an identical rate returns "
        "the stored one (200). A rate never rewrites the cost of past usage: once a rate "
        "of the same key is in force, a new one takes effect no earlier than the current "
        "hour.",
        request=CostRateSerializer,
        responses={
            201: CostRateSerializer,
            200: CostRateSerializer,
            400: OpenApiResponse(
                PricingErrorSerializer, description="Invalid rate; `errors` by field."
            ),
            **_AUTH_ERRORS,
        },
        examples=[
            OpenApiExample(
                "gpt-4o output tokens",
                request_only=True,
                value={
                    "kind": "token",
                    "model": "gpt-4o",
                    "token_class": "output",
                    "usd_per_million_tokens": "10.00",
                    "effective_from": "2026-12-01",
                },
            ),
            OpenApiExample(
                "H100 at 60% utilization",
                request_only=True,
                value={
                    "kind": "gpu",
                    "hardware": "h100",
                    "gpu_hour_rate": "2.99",
                    "utilization": "0.6",
                    "effective_from": "2026-12-01T00:00:00Z",
                },
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data: Any = request.data
        if not isinstance(data, dict):
            return _bad({"body": "must be a JSON object"})
        unknown = set(data) - {
            "kind", "model", "provider", "token_class", "usd_per_token",
            "usd_per_million_tokens", "hardware", "gpu_hour_rate", "utilization",
            "effective_from", "note",
        }  # fmt: skip
        if unknown:
            return _bad({k: "unknown field" for k in sorted(unknown)})
        raw_start = data.get("effective_from")
        if not isinstance(raw_start, str) or not raw_start:
            return _bad({"effective_from": "is required: a date or an RFC 3339 date-time"})
        try:
            start: Any = (
                datetime.fromisoformat(raw_start).date()
                if len(raw_start) == 10
                else parse_instant(raw_start, name="effective_from")
            )
        except ValueError as exc:
            return _bad({"effective_from": str(exc).split(": ", 1)[-1]})
        strings = {k: data.get(k) or "" for k in ("model", "provider", "token_class", "hardware")}
        if any(not isinstance(v, str) for v in strings.values()):
            return _bad(
                {k: "must be a string" for k, v in strings.items() if not isinstance(v, str)}
            )
        try:
            rate, created = services.cost_rate_create(
                kind=str(data.get("kind") or ""),
                effective_from=start,
                usd_per_token=data.get("usd_per_token"),
                usd_per_million_tokens=data.get("usd_per_million_tokens"),
                gpu_hour_rate=data.get("gpu_hour_rate"),
                utilization=data.get("utilization"),
                note=str(data.get("note") or "")[:512],
                source="api",
                **strings,
            )
        except services.RateError as exc:
            return _bad(exc.errors)
        return Response(reports.cost_rate_dict(rate), status=201 if created else 200)


class MarginsView(APIView):
    permission_classes: ClassVar = [scope_required(SCOPE_READ)]

    @extend_schema(
        operation_id="margins_list",
        summary="Customers' margins in a period, worst first",
        description="Revenue (invoiced, or accrued in the open period), compute cost, margin "
        "and margin ratio per customer, with breakdowns by model and hardware, uncosted "
        "usage, the active flag and, for flagged customers, the reference-plan amount, "
        "break-even usage, most expensive models and cache-read share. In the open period "
        "`projected_cost` is the cost at the current run rate by the period's end; "
        "`projected_revenue` is the billing engine's rating of usage at that run rate, "
        "given when the projected cost exceeds what the period brings at least (flat fees "
        "in full plus usage rated so far) and null otherwise, since then no projection "
        "can turn negative. As of the last refresh (hourly; `manage.py refresh_margins` "
        "runs it now).",
        parameters=[
            OpenApiParameter("period", str, required=True, description="YYYY-MM"),
            OpenApiParameter("flagged", bool, description="Only flagged customers"),
            OpenApiParameter("limit", int, description="At most this many customers"),
            OpenApiParameter("offset", int, description="Skip this many (worst first)"),
        ],
        responses={
            200: MarginReportSerializer,
            400: OpenApiResponse(PricingErrorSerializer, description="Bad query parameter."),
            **_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        try:
            period = selectors.parse_period(request.query_params.get("period") or "")
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=400)
        flagged_raw = (request.query_params.get("flagged") or "false").lower()
        if flagged_raw not in ("true", "false", "1", "0"):
            return Response({"detail": "flagged: must be true or false"}, status=400)
        try:
            limit = int(request.query_params["limit"]) if "limit" in request.query_params else None
            offset = int(request.query_params.get("offset", 0))
        except ValueError:
            return Response({"detail": "limit, offset: must be integers"}, status=400)
        if (limit is not None and limit < 1) or offset < 0:
            return Response({"detail": "limit: 1 or more; offset: 0 or more"}, status=400)
        report = selectors.margin_report(period=period, flagged=flagged_raw in ("true", "1"))
        end = None if limit is None else offset + limit
        # Totals stay over every customer; only the page's rows are rendered.
        page = dataclasses.replace(report, rows=report.rows[offset:end])
        return Response(reports.margin_report_dict(page))


class SimulationsView(APIView):
    permission_classes: ClassVar = [scope_required(SCOPE_READ)]

    @extend_schema(
        operation_id="simulations_create",
        summary="Re-rate a past period under a candidate plan",
        description="Every subscribed customer's actual usage of the period rated on the "
        "plan: revenue then and now, cost, margin then and now, and who would move into "
        "or out of negative margin. Writes nothing.",
        request=SimulationRequestSerializer,
        responses={
            200: SimulationSerializer,
            400: OpenApiResponse(PricingErrorSerializer, description="Unknown plan or bad period."),
            **_AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        body = SimulationRequestSerializer(data=request.data)
        if not body.is_valid():
            return _bad({k: " ".join(str(m) for m in v) for k, v in body.errors.items()})
        try:
            period = selectors.parse_period(body.validated_data["period"])
            result = plan_simulate(
                plan_code=body.validated_data["plan"],
                plan_version=body.validated_data.get("plan_version"),
                period=period,
            )
        except ValueError as exc:
            return _bad({"period": str(exc).split(": ", 1)[-1]})
        except SimulationError as exc:
            return _bad(exc.errors)
        return Response(reports.simulation_dict(result))
