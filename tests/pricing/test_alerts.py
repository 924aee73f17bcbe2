"""Finance is told once per flag transition: an email through Django's mail backend (the
locmem test backend) and a signed JSON POST to a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core import mail

from pricing.alerts import flag_webhook_deliver, webhook_signature
from pricing.models import MarginFlag
from tests.pricing.helpers import (
    active_flag,
    customer,
    ev,
    plan,
    refresh,
    store,
    subscribe,
    token_rates,
)

pytestmark = pytest.mark.django_db
SECRET = "whsec-test-0123456789"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records POSTs and answers with `statuses`
    in turn (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/inferbill"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    server = Receiver()
    settings.INFERBILL_ALERT_WEBHOOK_URL = server.url
    settings.INFERBILL_ALERT_WEBHOOK_SECRET = SECRET
    settings.INFERBILL_FINANCE_EMAILS = ["finance@example.com", "cfo@example.com"]
    yield server
    server.close()


def verify(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over '<t>.<body>'."""
    parts = dict(item.split("=", 1) for item in headers["X-Inferbill-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


@pytest.fixture
def eager_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager Celery retries in-process only when it does not propagate errors; a worker
    retries after 30 s, 60 s, 2 min, …"""
    from inferbill.celery import app

    monkeypatch.setitem(app.conf, "CELERY_TASK_EAGER_PROPAGATES", False)  # the namespaced key


@pytest.fixture
def heavy_flat_customer() -> None:
    token_rates("gpt-4o", output="10")
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    subscribe(customer("light"), plan("starter", flat_fee="30"))
    store(ev("acme", "2026-04-02 10:00", output_tokens=1_000_000))  # 10.00 on day 2


def test_a_transition_is_notified_once_by_email_and_signed_webhook(
    receiver: Receiver,
    heavy_flat_customer: None,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-02 12:00")  # revenue 2.00, cost 10.00
    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["finance@example.com", "cfo@example.com"]
    assert email.subject == "Inferbill: 1 customer flagged (1 on flat subscriptions)"
    assert "acme (FLAT): negative margin in 2026-04" in email.body
    assert "margin -8.00" in email.body

    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert verify(headers, body)
    payload = json.loads(body)
    flag = MarginFlag.objects.get()
    assert payload["id"] == f"flag_{flag.pk}" == headers["X-Inferbill-Event-Id"]
    assert payload["type"] == "margin_flag.raised"
    assert payload["data"] | {"raised_at": None} == {
        "customer": "acme",
        "period": "2026-04",
        "kind": "negative_margin",
        "previous_kind": None,
        "flat_subscription": True,
        "revenue": "2.000000000000",
        "cost": "10.000000000000",
        "margin": "-8.000000000000",
        "margin_ratio": "-4.000000",
        "currency": "USD",
        "raised_at": None,
    }
    flag.refresh_from_db()
    assert flag.emailed_at is not None and flag.webhook_delivered_at is not None

    # The same state an hour later: no transition, nothing sent.
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-02 13:00")
    assert len(mail.outbox) == 1 and len(receiver.requests) == 1

    # A re-delivered task sends nothing twice.
    assert flag_webhook_deliver(flag_id=flag.pk) is False

    # Cleared (the fee catches up: 16.00 by the 16th), then flagged again by new usage: a
    # new transition, told once more.
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-16 12:00")
    assert active_flag() is None
    store(ev("acme", "2026-04-17 10:00", output_tokens=1_000_000))
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-17 12:00")  # revenue 17.00, cost 20.00
    assert len(mail.outbox) == 2 and len(receiver.requests) == 2
    assert MarginFlag.objects.filter(cleared_at__isnull=False).count() == 1


def test_webhook_failures_are_retried_until_delivered(
    eager_retries: None,
    receiver: Receiver,
    heavy_flat_customer: None,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    receiver.statuses = [500, 503]
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-02 12:00")
    assert len(receiver.requests) == 3
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # the same event each time
    flag = MarginFlag.objects.get()
    assert flag.webhook_attempts == 3 and flag.webhook_delivered_at is not None
    assert flag.webhook_last_error == ""


def test_an_unreachable_webhook_does_not_break_the_refresh(
    eager_retries: None,
    settings: Any,
    heavy_flat_customer: None,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    settings.INFERBILL_ALERT_WEBHOOK_URL = "http://127.0.0.1:9/unreachable"
    settings.INFERBILL_FINANCE_EMAILS = []
    with django_capture_on_commit_callbacks(execute=True):
        result = refresh("2026-04-02 12:00")
    assert len(result.raised) == 1 and not mail.outbox
    flag = MarginFlag.objects.get()
    assert flag.webhook_delivered_at is None and flag.webhook_attempts == 9  # 1 + 8 retries
    assert flag.webhook_last_error


def test_backoff_doubles_up_to_an_hour() -> None:
    from pricing.tasks import backoff

    assert [backoff(n) for n in (0, 1, 2, 3, 7, 20)] == [30, 60, 120, 240, 3600, 3600]


def test_signature_format() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signature(secret="k", timestamp=1_700_000_000, body=body) == (
        f"t=1700000000,v1={expected}"
    )


def test_nothing_is_sent_when_nobody_is_configured(
    settings: Any,
    heavy_flat_customer: None,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    settings.INFERBILL_ALERT_WEBHOOK_URL = ""
    settings.INFERBILL_FINANCE_EMAILS = []
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-02 12:00")
    assert not mail.outbox
    assert MarginFlag.objects.get().emailed_at is None


def test_reference_plan_and_break_even_are_shown_for_flagged_customers(
    settings: Any,
    heavy_flat_customer: None,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from billing.services import ChargeInput, plan_create
    from pricing.models import ReferencePlan
    from tests.pricing.helpers import MILLION, snapshot

    plan_create(
        code="metered",
        name="Metered",
        charges=[
            ChargeInput(
                metric="output_tokens",
                price_model="per_unit",
                unit_size=MILLION,
                unit_price=Decimal("15"),
            )
        ],
    )
    ReferencePlan(plan_code="metered").save()
    settings.INFERBILL_FINANCE_EMAILS = ["finance@example.com"]
    with django_capture_on_commit_callbacks(execute=True):
        refresh("2026-04-02 12:00")
    info = snapshot().insights
    assert info["reference_plan"] == "metered"
    assert info["reference_amount"] == "15.00"  # 1M output tokens at $15 per million
    # Break-even: 1M tokens cost 10.00, the period brings 30.00: 3M tokens per period.
    assert info["break_even"]["tokens"] == 3_000_000
    assert "on metered they would pay 15.00" in mail.outbox[0].body
    assert "break-even: 3,000,000 tokens per period" in mail.outbox[0].body
