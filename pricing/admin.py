"""Finance admin for pricing: cost rates, margins and flags, flat subscriptions first.

Cost rates are created through pricing.services (the same checks as the API) and are
immutable once saved: a price change is a new rate from a later instant, so the cost
of past usage never changes. A rate not yet in force may be deleted."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.http import HttpRequest
from django.utils import timezone

from pricing import services
from pricing.models import PER_MILLION_TOKENS, CostRate, MarginFlag, MarginSnapshot, ReferencePlan

RATE_FIELDS = (
    "kind",
    "model",
    "provider",
    "token_class",
    "usd_per_token",
    "hardware",
    "gpu_hour_rate",
    "utilization",
    "effective_from",
    "note",
)


class CostRateForm(forms.ModelForm):
    usd_per_million_tokens = forms.DecimalField(
        **PER_MILLION_TOKENS,
        required=False,
        help_text="Instead of USD per token: the price per million tokens.",
    )

    class Meta:
        model = CostRate
        fields = RATE_FIELDS

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.instance.pk is not None or self.errors:
            return data
        try:
            self.candidate = services.cost_rate_build(
                kind=data.get("kind") or "",
                effective_from=data.get("effective_from") or timezone.now(),
                model=data.get("model") or "",
                provider=data.get("provider") or "",
                token_class=data.get("token_class") or "",
                usd_per_token=data.get("usd_per_token"),
                usd_per_million_tokens=data.get("usd_per_million_tokens"),
                hardware=data.get("hardware") or "",
                gpu_hour_rate=data.get("gpu_hour_rate"),
                utilization=data.get("utilization"),
                source="admin",
                note=data.get("note") or "",
            )
            services.cost_rate_check_history(rate=self.candidate, now=timezone.now())
        except services.RateError as exc:
            self._add_rate_errors(exc)
            return data
        for name in ("usd_per_token", "gpu_hour_rate", "utilization", "effective_from"):
            data[name] = getattr(self.candidate, name)  # normalised: per token, UTC, defaults
        return data

    def _add_rate_errors(self, exc: services.RateError) -> None:
        for name, message in exc.errors.items():
            self.add_error(name if name in self.fields else None, message)


class InForceFilter(admin.SimpleListFilter):
    title = "in force"
    parameter_name = "in_force"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("now", "In force now"), ("future", "Not yet in force")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[CostRate]) -> QuerySet[CostRate]:
        now = timezone.now()
        if self.value() == "future":
            return queryset.filter(effective_from__gt=now)
        if self.value() == "now":
            from pricing.selectors import cost_rates_list

            ids = cost_rates_list(in_force_at=now).values_list("pk", flat=True)
            return queryset.filter(pk__in=list(ids))
        return queryset


@admin.register(CostRate)
class CostRateAdmin(admin.ModelAdmin):
    form = CostRateForm
    list_display = (
        "kind",
        "model",
        "provider",
        "token_class",
        "per_million",
        "hardware",
        "gpu_hour_rate",
        "utilization",
        "effective_from",
        "source",
    )
    list_filter = ("kind", InForceFilter, "token_class", "source", "provider", "hardware")
    search_fields = ("model", "hardware", "provider", "source")
    date_hierarchy = "effective_from"
    list_per_page = 100

    @admin.display(description="USD / 1M tokens")
    def per_million(self, rate: CostRate) -> Decimal | None:
        return rate.usd_per_million_tokens

    def get_fields(self, request: HttpRequest, obj: CostRate | None = None) -> Any:
        if obj is None:
            return (*RATE_FIELDS[:5], "usd_per_million_tokens", *RATE_FIELDS[5:])
        return (*RATE_FIELDS, "source", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: CostRate | None = None) -> Any:
        return () if obj is None else (*RATE_FIELDS, "source", "created_at")

    def has_delete_permission(self, request: HttpRequest, obj: CostRate | None = None) -> bool:
        if obj is not None and obj.effective_from <= timezone.now():
            return False  # past cost never changes
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: CostRate, form: Any, change: bool) -> None:
        if change:
            return  # immutable
        candidate: CostRate = form.candidate
        fields = {
            name: getattr(candidate, name)
            for name in RATE_FIELDS
            if name not in ("usd_per_token", "gpu_hour_rate", "utilization")
        }
        rate, _ = services.cost_rate_create(
            **fields,
            source="admin",
            usd_per_token=candidate.usd_per_token,
            gpu_hour_rate=candidate.gpu_hour_rate,
            utilization=candidate.utilization,
        )
        obj.pk = rate.pk


class FlaggedFilter(admin.SimpleListFilter):
    title = "flag"
    parameter_name = "flag_kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("any", "Any flag"), *MarginFlag.Kind.choices, ("none", "Not flagged")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[MarginSnapshot]
    ) -> QuerySet[MarginSnapshot]:
        value = self.value()
        if value == "any":
            return queryset.exclude(flag="")
        if value == "none":
            return queryset.filter(flag="")
        if value:
            return queryset.filter(flag=value)
        return queryset


def _flag_rank(field: str) -> Case:
    """Flagged flat subscriptions first, then other flagged, then the rest."""
    return Case(
        When(**{f"{field}__in": MarginFlag.Kind.values, "is_flat": True}, then=Value(0)),
        When(**{f"{field}__in": MarginFlag.Kind.values}, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )


@admin.register(MarginSnapshot)
class MarginSnapshotAdmin(admin.ModelAdmin):
    list_display = (
        "customer",
        "period",
        "flag",
        "is_flat",
        "plans",
        "revenue_shown",
        "cost_shown",
        "margin_shown",
        "ratio",
        "uncosted_requests",
        "revenue_basis",
        "as_of",
    )
    list_filter = (FlaggedFilter, "is_flat", "period", "revenue_basis", "is_open")
    search_fields = ("customer__external_id", "customer__name")
    list_select_related = ("customer",)
    list_per_page = 100

    def get_queryset(self, request: HttpRequest) -> QuerySet[MarginSnapshot]:
        # Annotate before ordering: ModelAdmin.get_queryset orders by get_ordering().
        queryset = MarginSnapshot.objects.annotate(rank=_flag_rank("flag"))
        return queryset.order_by(*self.get_ordering(request))

    def get_ordering(self, request: HttpRequest) -> list[str]:
        return ["rank", "-period", "margin"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in MarginSnapshot._meta.concrete_fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="plans")
    def plans(self, snapshot: MarginSnapshot) -> str:
        return ", ".join(snapshot.plan_codes)

    @admin.display(description="revenue", ordering="revenue")
    def revenue_shown(self, snapshot: MarginSnapshot) -> str:
        return f"{snapshot.revenue:,.2f}"

    @admin.display(description="cost", ordering="cost")
    def cost_shown(self, snapshot: MarginSnapshot) -> str:
        return f"{snapshot.cost:,.2f}"

    @admin.display(description="margin", ordering="margin")
    def margin_shown(self, snapshot: MarginSnapshot) -> str:
        return f"{snapshot.margin:,.2f}"

    @admin.display(description="ratio", ordering="margin_ratio")
    def ratio(self, snapshot: MarginSnapshot) -> str:
        return "n/a" if snapshot.margin_ratio is None else f"{snapshot.margin_ratio * 100:.1f}%"


class ActiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("cleared", "Cleared")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[MarginFlag]
    ) -> QuerySet[MarginFlag]:
        if self.value() == "active":
            return queryset.filter(cleared_at__isnull=True)
        if self.value() == "cleared":
            return queryset.filter(cleared_at__isnull=False)
        return queryset


@admin.register(MarginFlag)
class MarginFlagAdmin(admin.ModelAdmin):
    list_display = (
        "customer",
        "period",
        "kind",
        "is_flat",
        "margin",
        "margin_ratio",
        "raised_at",
        "cleared_at",
        "emailed_at",
        "webhook_delivered_at",
    )
    list_filter = (ActiveFilter, "kind", "is_flat", "period")
    search_fields = ("customer__external_id", "customer__name")
    list_select_related = ("customer",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[MarginFlag]:
        active_first = Case(
            When(cleared_at__isnull=True, then=Value(0)),
            default=Value(1),
            output_field=IntegerField(),
        )
        queryset = MarginFlag.objects.annotate(active_rank=active_first)
        return queryset.order_by(*self.get_ordering(request))

    def get_ordering(self, request: HttpRequest) -> list[str]:
        return ["active_rank", "-is_flat", "margin", "-raised_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in MarginFlag._meta.concrete_fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ReferencePlan)
class ReferencePlanAdmin(admin.ModelAdmin):
    list_display = ("plan_code", "updated_at")
    fields = ("plan_code",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not ReferencePlan.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
