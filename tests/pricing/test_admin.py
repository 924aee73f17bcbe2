"""The finance admin: flagged flat subscriptions first; cost rates through the service
checks and immutable once saved."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from pricing.models import CostRate, ReferencePlan
from tests.pricing.helpers import (
    customer,
    ev,
    per_unit,
    plan,
    refresh,
    store,
    subscribe,
    token_rates,
)

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("finance", "f@example.com", "pw-unused-123"))
    return client


@pytest.fixture
def flagged() -> None:
    token_rates("gpt-4o", output="10")
    subscribe(customer("usage-loser"), plan("cheap", charges=[per_unit("output_tokens", "1")]))
    subscribe(customer("flat-loser"), plan("unlimited", flat_fee="30"))
    subscribe(customer("fine"), plan("pro", flat_fee="100"))
    store(
        ev("usage-loser", "2026-04-03 10:00", output_tokens=9_000_000),  # −81.00
        ev("flat-loser", "2026-04-03 10:00", output_tokens=4_000_000),  # −10.00
    )
    refresh("2026-05-01 00:00")


def changelist_customers(client: Client, model: str, query: str = "") -> list[str]:
    response = client.get(reverse(f"admin:pricing_{model}_changelist") + query)
    assert response.status_code == 200
    return [str(obj.customer.external_id) for obj in response.context["cl"].result_list]


def test_flagged_flat_subscriptions_come_first(staff: Client, flagged: None) -> None:
    # The usage customer loses more, but the flat subscription is what finance acts on.
    assert changelist_customers(staff, "marginsnapshot") == ["flat-loser", "usage-loser", "fine"]
    assert changelist_customers(staff, "marginflag") == ["flat-loser", "usage-loser"]
    assert changelist_customers(staff, "marginsnapshot", "?flag_kind=none") == ["fine"]
    assert changelist_customers(staff, "marginflag", "?is_flat__exact=1&state=active") == [
        "flat-loser"
    ]


def test_cost_rates_are_added_through_the_service_and_frozen(staff: Client) -> None:
    url = reverse("admin:pricing_costrate_add")
    form = {
        "kind": "token",
        "model": "gpt-4o",
        "provider": "",
        "token_class": "output",
        "usd_per_token": "",
        "usd_per_million_tokens": "10",
        "hardware": "",
        "gpu_hour_rate": "",
        "utilization": "",
        "effective_from_0": "2026-01-01",
        "effective_from_1": "00:00:00",
        "note": "",
    }
    response = staff.post(url, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    rate = CostRate.objects.get()
    assert rate.usd_per_token == D("0.00001") and rate.source == "admin"

    # Superseding it in the past would rewrite past cost: refused with a form error.
    response = staff.post(
        url, form | {"usd_per_million_tokens": "12", "effective_from_0": "2026-02-01"}
    )
    assert response.status_code == 200
    assert "rewrite the cost of past usage" in str(response.context["adminform"].form.errors)
    assert CostRate.objects.count() == 1

    change = staff.get(reverse("admin:pricing_costrate_change", args=[rate.pk]))
    assert change.status_code == 200
    assert "usd_per_token" in change.context["adminform"].readonly_fields
    delete = staff.get(reverse("admin:pricing_costrate_delete", args=[rate.pk]))
    assert delete.status_code == 403  # in force: past cost never changes


def test_reference_plan_is_editable(staff: Client) -> None:
    response = staff.post(reverse("admin:pricing_referenceplan_add"), {"plan_code": "metered"})
    assert response.status_code == 302
    assert ReferencePlan.code() == "metered"
    assert staff.get(reverse("admin:pricing_referenceplan_add")).status_code == 403  # one row
