"""Billing REST API (scope `billing`): customers, plans, subscriptions, invoices.

Serializers parse and render; writes go through billing.services / billing.invoicing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import invoicing, services
from billing.models import Charge, Customer, Invoice, InvoiceLine, Plan, Subscription
from metering.auth import scope_required
from metering.models import SCOPE_BILLING

BillingScope = scope_required(SCOPE_BILLING)
MONEY = {"max_digits": 30, "decimal_places": 15, "coerce_to_string": True}


def _bad_request(exc: services.ValidationError) -> Response:
    return Response({"errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)


# --- customers ------------------------------------------------------------------------------


class CustomerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Customer
        fields: ClassVar = ["external_id", "name", "email", "currency", "metadata", "created_at"]
        read_only_fields: ClassVar = ["created_at"]
        extra_kwargs: ClassVar = {"external_id": {"validators": []}}


class CustomerUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=256, required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)
    currency = serializers.CharField(max_length=3, required=False)
    metadata = serializers.DictField(required=False)


class CustomersView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(responses=CustomerSerializer(many=True), operation_id="customers_list")
    def get(self, request: Request) -> Response:
        customers = Customer.objects.order_by("external_id")[:1000]
        return Response(CustomerSerializer(customers, many=True).data)

    @extend_schema(
        request=CustomerSerializer,
        responses={201: CustomerSerializer},
        operation_id="customers_create",
    )
    def post(self, request: Request) -> Response:
        data = CustomerSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            customer = services.customer_create(**data.validated_data)
        except services.ValidationError as exc:
            return _bad_request(exc)
        return Response(CustomerSerializer(customer).data, status=201)


class CustomerDetailView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(responses=CustomerSerializer, operation_id="customers_retrieve")
    def get(self, request: Request, external_id: str) -> Response:
        customer = get_object_or_404(Customer, external_id=external_id)
        return Response(CustomerSerializer(customer).data)

    @extend_schema(
        request=CustomerUpdateSerializer,
        responses=CustomerSerializer,
        operation_id="customers_update",
    )
    def patch(self, request: Request, external_id: str) -> Response:
        customer = get_object_or_404(Customer, external_id=external_id)
        data = CustomerUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            customer = services.customer_update(customer=customer, **data.validated_data)
        except services.ValidationError as exc:
            return _bad_request(exc)
        return Response(CustomerSerializer(customer).data)


# --- plans ------------------------------------------------------------------------------------


class TierSerializer(serializers.Serializer):
    up_to = serializers.DecimalField(max_digits=30, decimal_places=6, allow_null=True)
    unit_price = serializers.DecimalField(**MONEY)
    flat_fee = serializers.DecimalField(**MONEY, required=False, default=Decimal(0))


class ChargeFilterSerializer(serializers.Serializer):
    model = serializers.CharField(required=False)
    hardware = serializers.CharField(required=False)
    provider = serializers.CharField(required=False)
    properties = serializers.DictField(required=False)


class ChargeSerializer(serializers.Serializer):
    metric = serializers.CharField(
        help_text="requests, input_tokens, uncached_input_tokens, cache_read_input_tokens, "
        "cache_write_input_tokens, output_tokens, reasoning_output_tokens, gpu_seconds, "
        "sum:<property>, or count (with a property filter)."
    )
    display_name = serializers.CharField(required=False, allow_blank=True, default="")
    filter = ChargeFilterSerializer(
        required=False,
        default=dict,
        help_text="When two charges on one metric match an event, the more specific filter "
        "(more of model/hardware/provider/properties set) wins; on a tie, the first listed.",
    )
    price_model = serializers.ChoiceField(choices=["per_unit", "graduated", "volume", "package"])
    unit_size = serializers.DecimalField(
        max_digits=30, decimal_places=6, required=False, default=Decimal(1)
    )
    unit_price = serializers.DecimalField(**MONEY, required=False, allow_null=True, default=None)
    tiers = TierSerializer(many=True, required=False, default=list)
    package_size = serializers.DecimalField(
        max_digits=30, decimal_places=6, required=False, allow_null=True, default=None
    )
    included_units = serializers.DecimalField(
        max_digits=30, decimal_places=6, required=False, default=Decimal(0)
    )


class PlanSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=64)
    version = serializers.IntegerField(read_only=True)
    name = serializers.CharField(max_length=256, required=False, default="")
    currency = serializers.CharField(max_length=3, required=False, default="USD")
    interval = serializers.ChoiceField(choices=["monthly"], required=False, default="monthly")
    flat_fee = serializers.DecimalField(**MONEY, required=False, default=Decimal(0))
    minimum = serializers.DecimalField(**MONEY, required=False, allow_null=True, default=None)
    charges = ChargeSerializer(many=True, required=False, default=list)
    is_latest = serializers.BooleanField(read_only=True)


def plan_render(plan: Plan) -> dict[str, Any]:
    charges: list[Charge] = list(plan.charges.all())
    return {
        "code": plan.code,
        "version": plan.version,
        "name": plan.name,
        "currency": plan.currency,
        "interval": plan.interval,
        "flat_fee": str(plan.flat_fee),
        "minimum": None if plan.minimum is None else str(plan.minimum),
        "is_latest": plan.is_latest,
        "charges": [
            {
                "metric": c.metric,
                "display_name": c.display_name,
                "filter": c.filter,
                "price_model": c.price_model,
                "unit_size": str(c.unit_size),
                "unit_price": None if c.unit_price is None else str(c.unit_price),
                "tiers": c.tiers,
                "package_size": None if c.package_size is None else str(c.package_size),
                "included_units": str(c.included_units),
            }
            for c in charges
        ],
    }


class PlansView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(responses=PlanSerializer(many=True), operation_id="plans_list")
    def get(self, request: Request) -> Response:
        plans = Plan.objects.prefetch_related("charges").order_by("code", "-version")
        if request.query_params.get("all_versions") not in ("1", "true"):
            plans = plans.filter(is_latest=True)
        return Response([plan_render(p) for p in plans])

    @extend_schema(
        request=PlanSerializer,
        responses={201: PlanSerializer},
        operation_id="plans_create",
        description="Creates a plan, or a new version when the code exists: subscriptions "
        "keep the version they are on until moved.",
    )
    def post(self, request: Request) -> Response:
        data = PlanSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        charges = [
            services.ChargeInput(
                **c,
            )
            for c in values.pop("charges")
        ]
        try:
            plan = services.plan_create(**values, charges=charges)
        except services.ValidationError as exc:
            return _bad_request(exc)
        return Response(plan_render(plan), status=201)


# --- subscriptions ----------------------------------------------------------------------------


class SubscriptionSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    customer = serializers.CharField(help_text="The customer's external_id.")
    plan = serializers.CharField(help_text="Plan code; the latest version unless plan_version.")
    plan_version = serializers.IntegerField(required=False)
    start_date = serializers.DateField()
    end_date = serializers.DateField(required=False, allow_null=True, default=None)
    anchor_day = serializers.IntegerField(required=False, default=1, min_value=1, max_value=28)


def subscription_render(s: Subscription) -> dict[str, Any]:
    return {
        "id": s.id,
        "customer": s.customer.external_id,
        "plan": s.plan.code,
        "plan_version": s.plan.version,
        "start_date": s.start_date.isoformat(),
        "end_date": s.end_date.isoformat() if s.end_date else None,
        "anchor_day": s.anchor_day,
    }


class SubscriptionsView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(
        responses=SubscriptionSerializer(many=True),
        parameters=[OpenApiParameter("customer", str)],
        operation_id="subscriptions_list",
    )
    def get(self, request: Request) -> Response:
        subs = Subscription.objects.select_related("customer", "plan").order_by("id")
        if customer := request.query_params.get("customer"):
            subs = subs.filter(customer__external_id=customer)
        return Response([subscription_render(s) for s in subs[:1000]])

    @extend_schema(
        request=SubscriptionSerializer,
        responses={201: SubscriptionSerializer},
        operation_id="subscriptions_create",
        description="One active subscription per customer: a subscription running on "
        "start_date ends that day (plan change; flat fees prorated by day).",
    )
    def post(self, request: Request) -> Response:
        data = SubscriptionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        customer = Customer.objects.filter(external_id=values["customer"]).first()
        if customer is None:
            return Response({"errors": {"customer": "no such customer"}}, status=400)
        plans = Plan.objects.filter(code=values["plan"])
        plan = (
            plans.filter(version=values["plan_version"]).first()
            if "plan_version" in values
            else plans.filter(is_latest=True).first()
        )
        if plan is None:
            return Response({"errors": {"plan": "no such plan (or version)"}}, status=400)
        try:
            subscription = services.subscription_create(
                customer=customer,
                plan=plan,
                start_date=values["start_date"],
                end_date=values["end_date"],
                anchor_day=values["anchor_day"],
            )
        except services.ValidationError as exc:
            return _bad_request(exc)
        return Response(subscription_render(subscription), status=201)


# --- invoices ----------------------------------------------------------------------------------


class InvoiceLineSerializer(serializers.ModelSerializer):
    adjusts_invoice = serializers.CharField(source="adjusts_invoice.number", default=None)

    class Meta:
        model = InvoiceLine
        fields: ClassVar = [
            "position",
            "kind",
            "description",
            "metric",
            "filter",
            "quantity",
            "included_units",
            "billable_quantity",
            "unit_price",
            "unit_size",
            "tiers_applied",
            "amount",
            "adjusts_invoice",
        ]


class InvoiceSerializer(serializers.ModelSerializer):
    customer = serializers.CharField(source="customer.external_id")
    total_minor_units = serializers.IntegerField()
    lines = InvoiceLineSerializer(many=True, required=False)

    class Meta:
        model = Invoice
        fields: ClassVar = [
            "id",
            "number",
            "status",
            "customer",
            "subscription",
            "period_start",
            "period_end",
            "service_start",
            "service_end",
            "currency",
            "total",
            "total_minor_units",
            "created_at",
            "finalized_at",
            "voided_at",
            "paid_at",
            "lines",
        ]


class InvoiceSummarySerializer(InvoiceSerializer):
    """An invoice without its lines, for lists: one query however many invoices."""

    class Meta(InvoiceSerializer.Meta):
        fields: ClassVar = [f for f in InvoiceSerializer.Meta.fields if f != "lines"]


class InvoicesView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(
        parameters=[OpenApiParameter("customer", str), OpenApiParameter("status", str)],
        responses=InvoiceSummarySerializer(many=True),
        operation_id="invoices_list",
    )
    def get(self, request: Request) -> Response:
        invoices = Invoice.objects.select_related("customer").order_by("-period_start", "id")
        if customer := request.query_params.get("customer"):
            invoices = invoices.filter(customer__external_id=customer)
        if status_filter := request.query_params.get("status"):
            invoices = invoices.filter(status=status_filter)
        return Response(InvoiceSummarySerializer(invoices[:1000], many=True).data)


class InvoiceDetailView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(responses=InvoiceSerializer, operation_id="invoices_retrieve")
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = get_object_or_404(
            Invoice.objects.select_related("customer").prefetch_related("lines__adjusts_invoice"),
            pk=invoice_id,
        )
        return Response(InvoiceSerializer(invoice).data)


class InvoiceFinalizeView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(request=None, responses=InvoiceSerializer, operation_id="invoices_finalize")
    def post(self, request: Request, invoice_id: int) -> Response:
        get_object_or_404(Invoice, pk=invoice_id)
        try:
            invoice = invoicing.invoice_finalize(invoice_id=invoice_id)
        except invoicing.InvoiceStateError as exc:
            return Response({"errors": {"status": str(exc)}}, status=409)
        return Response(InvoiceSerializer(invoice).data)


class InvoiceVoidView(APIView):
    permission_classes: ClassVar = [BillingScope]

    @extend_schema(request=None, responses=InvoiceSerializer, operation_id="invoices_void")
    def post(self, request: Request, invoice_id: int) -> Response:
        get_object_or_404(Invoice, pk=invoice_id)
        try:
            with transaction.atomic():
                invoice = invoicing.invoice_void(invoice_id=invoice_id)
        except invoicing.InvoiceStateError as exc:
            return Response({"errors": {"status": str(exc)}}, status=409)
        return Response(InvoiceSerializer(invoice).data)
