"""Finance admin for billing. Writes go through the same services as the API."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from billing import invoicing
from billing.models import Charge, Customer, Invoice, InvoiceLine, Plan, Subscription


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("external_id", "name", "email", "currency", "created_at")
    search_fields = ("external_id", "name", "email")


class ChargeInline(admin.TabularInline):
    model = Charge
    extra = 0
    fields = (
        "position",
        "display_name",
        "metric",
        "filter",
        "price_model",
        "unit_size",
        "unit_price",
        "tiers",
        "package_size",
        "included_units",
    )

    # A version with subscriptions is frozen, charges included: prices change by
    # creating a version (PlanAdmin below), never under a subscriber's feet.
    def has_change_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        return _unsubscribed(obj) and super().has_change_permission(request, obj)

    def has_add_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        return _unsubscribed(obj) and super().has_add_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        return _unsubscribed(obj) and super().has_delete_permission(request, obj)


def _unsubscribed(plan: Plan | None) -> bool:
    return plan is None or not plan.subscriptions.exists()


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("code", "version", "name", "currency", "flat_fee", "minimum", "is_latest")
    list_filter = ("is_latest", "currency")
    search_fields = ("code", "name")
    inlines: ClassVar = [ChargeInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Plan | None = None) -> Any:
        # A version with subscriptions is frozen: prices change by creating a version.
        if obj is not None and obj.subscriptions.exists():
            return ("code", "version", "currency", "flat_fee", "minimum", "interval")
        return ("version",)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("customer", "plan", "start_date", "end_date", "anchor_day")
    list_filter = ("plan__code",)
    search_fields = ("customer__external_id",)
    autocomplete_fields = ("customer",)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fk_name = "invoice"
    extra = 0
    can_delete = False
    fields = (
        "position",
        "kind",
        "description",
        "quantity",
        "included_units",
        "billable_quantity",
        "unit_price",
        "unit_size",
        "amount",
        "adjusts_invoice",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "customer",
        "period_start",
        "period_end",
        "status",
        "currency",
        "total",
    )
    list_filter = ("status", "period_start", "currency")
    search_fields = ("number", "customer__external_id")
    date_hierarchy = "period_start"
    inlines: ClassVar = [InvoiceLineInline]
    actions: ClassVar = ["finalize_selected", "void_selected"]
    readonly_fields = (
        "subscription",
        "customer",
        "period_start",
        "period_end",
        "service_start",
        "service_end",
        "currency",
        "status",
        "number",
        "total",
        "created_at",
        "computed_at",
        "finalized_at",
        "voided_at",
        "paid_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # invoices come from the billing cycle, never by hand

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Finalize selected draft invoices", permissions=["finalize"])
    def finalize_selected(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        done = 0
        for invoice in queryset.filter(status=Invoice.Status.DRAFT):
            invoicing.invoice_finalize(invoice_id=invoice.pk)
            done += 1
        self.message_user(request, f"Finalized {done} invoices.", messages.SUCCESS)

    @admin.action(description="Void selected invoices", permissions=["void"])
    def void_selected(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        done = 0
        for invoice in queryset.exclude(status__in=[Invoice.Status.VOID, Invoice.Status.PAID]):
            invoicing.invoice_void(invoice_id=invoice.pk)
            done += 1
        self.message_user(request, f"Voided {done} invoices.", messages.SUCCESS)

    def has_finalize_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("billing.finalize_invoice")

    def has_void_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("billing.void_invoice")
