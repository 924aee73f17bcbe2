"""Finance admin: finalize/void actions guarded by permissions; subscribed plans frozen."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from billing.models import Charge, Invoice, Plan, Subscription
from tests.billing.helpers import customer, generate, per_unit, plan, subscribe

pytestmark = pytest.mark.django_db
D = Decimal
CHANGELIST = "admin:billing_invoice_changelist"


def staff(client: Client, *perms: str) -> Client:
    user = User.objects.create_user("finance", password="x", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


@pytest.fixture
def invoices() -> list[Invoice]:
    p = plan(flat_fee="10.00")
    return [generate(subscribe(customer(f"c{i}"), p)) for i in range(3)]


def act(client: Client, action: str, invoices: list[Invoice]):
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [str(i.pk) for i in invoices]},
        follow=True,
    )


def statuses() -> list[tuple[str, str | None]]:
    return list(Invoice.objects.order_by("pk").values_list("status", "number"))


def test_actions_refused_without_permission(client: Client, invoices: list[Invoice]) -> None:
    staff(client, "view_invoice", "change_invoice")
    page = client.get(reverse(CHANGELIST))
    assert page.status_code == 200
    assert b"finalize_selected" not in page.content
    assert b"void_selected" not in page.content
    for action in ("finalize_selected", "void_selected"):
        response = act(client, action, invoices)
        assert response.status_code == 200
    assert statuses() == [("draft", None)] * 3


def test_finalize_action_with_permission(client: Client, invoices: list[Invoice]) -> None:
    staff(client, "view_invoice", "finalize_invoice")
    assert b"finalize_selected" in client.get(reverse(CHANGELIST)).content
    response = act(client, "finalize_selected", invoices[:2])
    assert b"Finalized 2 invoices." in response.content
    assert [s for s, _ in statuses()] == ["finalized", "finalized", "draft"]
    assert sorted(n for _, n in statuses()[:2]) == ["INV-000001", "INV-000002"]
    # Finalizing again skips what is final: no number is used twice or skipped.
    response = act(client, "finalize_selected", invoices)
    assert b"Finalized 1 invoices." in response.content
    assert statuses()[2] == ("finalized", "INV-000003")
    # Voiding needs its own permission.
    act(client, "void_selected", invoices)
    assert {s for s, _ in statuses()} == {"finalized"}


def test_void_action_with_permission(client: Client, invoices: list[Invoice]) -> None:
    staff(client, "view_invoice", "void_invoice")
    response = act(client, "void_selected", invoices[1:])
    assert b"Voided 2 invoices." in response.content
    assert statuses() == [("draft", None), ("void", None), ("void", None)]
    act(client, "finalize_selected", invoices)
    assert statuses()[0] == ("draft", None)


def test_superuser_sees_the_invoice_but_cannot_add_or_delete(
    admin_client: Client, invoices: list[Invoice]
) -> None:
    invoice = invoices[0]
    page = admin_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk]))
    assert page.status_code == 200
    assert b"10.00" in page.content
    assert admin_client.get(reverse("admin:billing_invoice_add")).status_code == 403
    delete = reverse("admin:billing_invoice_delete", args=[invoice.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Invoice.objects.filter(pk=invoice.pk).exists()


def _plan_form(p: Plan, charge: Charge, unit_price: str) -> dict[str, str]:
    return {
        "code": p.code,
        "name": p.name,
        "currency": p.currency,
        "interval": p.interval,
        "flat_fee": str(p.flat_fee),
        "minimum": "",
        "is_latest": "on",
        "created_at_0": p.created_at.strftime("%Y-%m-%d"),
        "created_at_1": p.created_at.strftime("%H:%M:%S"),
        "charges-TOTAL_FORMS": "1",
        "charges-INITIAL_FORMS": "1",
        "charges-MIN_NUM_FORMS": "0",
        "charges-MAX_NUM_FORMS": "1000",
        "charges-0-id": str(charge.pk),
        "charges-0-plan": str(p.pk),
        "charges-0-position": "0",
        "charges-0-display_name": charge.display_name,
        "charges-0-metric": charge.metric,
        "charges-0-filter": "{}",
        "charges-0-price_model": "per_unit",
        "charges-0-unit_size": str(charge.unit_size),
        "charges-0-unit_price": unit_price,
        "charges-0-tiers": "[]",
        "charges-0-package_size": "",
        "charges-0-included_units": "0",
    }


def test_a_plan_version_with_subscriptions_keeps_its_charge_prices(admin_client: Client) -> None:
    p = plan("usage", flat_fee="5.00", charges=[per_unit("output_tokens", "10")])
    charge = p.charges.get()
    url = reverse("admin:billing_plan_change", args=[p.pk])
    # Without subscribers the version may still be edited in place.
    response = admin_client.post(url, _plan_form(p, charge, "9"))
    assert response.status_code == 302, response.content[:2000]
    charge.refresh_from_db()
    assert charge.unit_price == D(9)
    subscribe(customer(), p)
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b'name="charges-0-unit_price"' not in page.content  # shown read-only
    response = admin_client.post(url, _plan_form(p, charge, "1"))
    assert response.status_code == 302, response.content[:2000]
    charge.refresh_from_db()
    assert charge.unit_price == D(9)  # prices change by a new version, never in place


# --- subscriptions keep the API's rules --------------------------------------------------


CREATED = {"created_at_0": "2026-03-01", "created_at_1": "00:00:00"}


def _add_subscription(client: Client, **fields: str):
    return client.post(
        reverse("admin:billing_subscription_add"), {"anchor_day": "1", **CREATED, **fields}
    )


def test_admin_subscription_add_ends_the_running_one_like_the_api(admin_client: Client) -> None:
    acme = customer()
    first = subscribe(acme, plan("a"), start=date(2026, 3, 1))
    pro = plan("pro")
    response = _add_subscription(
        admin_client, customer=str(acme.pk), plan=str(pro.pk), start_date="2026-04-11"
    )
    assert response.status_code == 302, response.content[:3000]
    first.refresh_from_db()
    assert first.end_date == date(2026, 4, 11)
    assert Subscription.objects.get(plan=pro).end_date is None


def test_admin_refuses_overlapping_subscriptions(admin_client: Client) -> None:
    acme = customer()
    first = subscribe(acme, plan("a"), start=date(2026, 4, 1))
    pro = plan("pro")
    for start in ("2026-04-01", "2026-03-15"):
        response = _add_subscription(
            admin_client, customer=str(acme.pk), plan=str(pro.pk), start_date=start
        )
        assert response.status_code == 200  # the form again, with the error
        assert b"overlaps subscription" in response.content
    response = _add_subscription(
        admin_client,
        customer=str(acme.pk),
        plan=str(pro.pk),
        start_date="2026-06-01",
        anchor_day="31",
    )
    assert response.status_code == 200
    assert b"between 1 and 28" in response.content
    eur = plan("eur", currency="EUR")
    response = _add_subscription(
        admin_client, customer=str(acme.pk), plan=str(eur.pk), start_date="2026-06-01"
    )
    assert response.status_code == 200
    assert b"differs from" in response.content
    assert Subscription.objects.count() == 1
    first.refresh_from_db()
    assert first.end_date is None


def test_admin_refuses_extending_a_subscription_over_the_next(admin_client: Client) -> None:
    acme = customer()
    first = subscribe(acme, plan("a"), start=date(2026, 3, 1))
    subscribe(acme, plan("b"), start=date(2026, 4, 11))
    url = reverse("admin:billing_subscription_change", args=[first.pk])
    form = {
        "customer": str(acme.pk),
        "plan": str(first.plan_id),
        "start_date": "2026-03-01",
        "anchor_day": "1",
        **CREATED,
    }
    response = admin_client.post(url, {**form, "end_date": "2026-04-20"})
    assert response.status_code == 200
    assert b"overlaps subscription" in response.content
    first.refresh_from_db()
    assert first.end_date == date(2026, 4, 11)
    response = admin_client.post(url, {**form, "end_date": "2026-04-05"})  # shortening is fine
    assert response.status_code == 302, response.content[:3000]
    first.refresh_from_db()
    assert first.end_date == date(2026, 4, 5)
