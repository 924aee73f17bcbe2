"""Finance admin for billing. Writes go through the same services as the API."""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from billing import invoicing, services
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


class SubscriptionForm(forms.ModelForm):
    """The API's rules (services.subscription_create): one subscription at a time per
    customer, in the plan's currency. Two at once would bill the same usage twice."""

    class Meta:
        model = Subscription
        fields = ("customer", "plan", "start_date", "end_date", "anchor_day", "created_at")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        instance = self.instance
        # On a change, the read-only fields are not in the form: take the stored ones.
        customer = data.get("customer") or (instance.customer if instance.customer_id else None)
        plan = data.get("plan") or (instance.plan if instance.plan_id else None)
        start = data.get("start_date") or instance.start_date
        end = data.get("end_date") if "end_date" in data else instance.end_date
        if customer is None or plan is None or start is None:
            return data
        if end is not None and end <= start:
            self.add_error("end_date", "must be after the start date")
        anchor = data.get("anchor_day")
        if anchor is not None and not 1 <= anchor <= 28:
            self.add_error("anchor_day", "must be between 1 and 28")
        if plan.currency != customer.currency:
            self.add_error(
                "plan", f"plan currency {plan.currency} differs from customer's {customer.currency}"
            )
        overlapping = (
            Subscription.objects.filter(customer=customer)
            .exclude(pk=instance.pk)
            .filter(Q(end_date__isnull=True) | Q(end_date__gt=start))
        )
        if end is not None:
            overlapping = overlapping.filter(start_date__lt=end)
        if instance.pk is None:
            # A new one ends the subscription running on its start date (a plan change).
            overlapping = overlapping.filter(start_date__gte=start)
        other = overlapping.order_by("start_date").first()
        if other is not None:
            field = "end_date" if instance.pk else "start_date"
            self.add_error(
                field if field in self.fields else None,
                f"overlaps subscription {other.pk} from {other.start_date}"
                f" to {other.end_date or 'open'}",
            )
        return data


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ("customer", "plan", "start_date", "end_date", "anchor_day")
    list_filter = ("plan__code",)
    search_fields = ("customer__external_id",)
    autocomplete_fields = ("customer",)

    def get_readonly_fields(self, request: HttpRequest, obj: Subscription | None = None) -> Any:
        # Invoices are computed from these: a plan change is a new subscription.
        return ("customer", "plan", "start_date", "anchor_day") if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = services.subscription_create(
            customer=obj.customer,
            plan=obj.plan,
            start_date=obj.start_date,
            end_date=obj.end_date,
            anchor_day=obj.anchor_day,
        )
        obj.pk, obj.created_at = created.pk, created.created_at


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
