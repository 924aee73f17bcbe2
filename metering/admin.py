from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from metering.models import ApiKey, Source, UsageRollup


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created by `manage.py create_api_key` (shown once); here they can be
    inspected and revoked by setting revoked_at. The hash is never displayed."""

    list_display = (
        "prefix",
        "source",
        "name",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("source",)
    fields = ("source", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("source", "prefix", "scopes", "created_at", "last_used_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    list_display = ("customer", "hour", "model", "hardware", "provider", "requests")
    list_filter = ("model", "hardware")
    search_fields = ("customer",)
    date_hierarchy = "hour"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
