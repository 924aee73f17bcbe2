"""Finance alerts for newly raised margin flags: one digest email to
INFERBILL_FINANCE_EMAILS through Django's mail backend and, when
INFERBILL_ALERT_WEBHOOK_URL is set, one signed JSON POST per flag (retried by Celery with
backoff). Each flag is emailed once and delivered once: both are recorded on the flag
and checked before sending, so a re-run task sends nothing twice.

Webhook receivers verify `X-Inferbill-Signature: t=<unix seconds>,v1=<hex>`, where the
hex is HMAC-SHA256(INFERBILL_ALERT_WEBHOOK_SECRET, "<t>." + raw body), and may use
`X-Inferbill-Event-Id` (flag_<id>) to ignore duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from pricing.margins import COST_CURRENCY
from pricing.models import MarginFlag, MarginSnapshot

WEBHOOK_TIMEOUT_SECONDS = 10


def flags_notify(*, flag_ids: Sequence[int]) -> None:
    """Enqueue the finance email (one digest for these flags) and one webhook per flag."""
    from pricing import tasks  # tasks import services: avoid the cycle at import time

    ids = list(flag_ids)
    if settings.INFERBILL_FINANCE_EMAILS:
        tasks.flags_email_task.delay(ids)
    if settings.INFERBILL_ALERT_WEBHOOK_URL:
        for flag_id in ids:
            tasks.flag_webhook_task.delay(flag_id)


def _flag_line(flag: MarginFlag, snapshot: MarginSnapshot | None) -> str:
    ratio = "n/a" if flag.margin_ratio is None else f"{Decimal(flag.margin_ratio) * 100:.1f}%"
    line = (
        f"- {flag.customer.external_id} ({'FLAT' if flag.is_flat else 'usage'}): "
        f"{flag.kind.replace('_', ' ')} in {flag.period:%Y-%m}; revenue {flag.revenue:.2f}, "
        f"cost {flag.cost:.2f}, margin {flag.margin:.2f} ({ratio})"
    )
    info = snapshot.insights if snapshot is not None else {}
    if info.get("reference_amount") is not None:
        reference = Decimal(info["reference_amount"])
        line += f"\n    on {info['reference_plan']} they would pay {reference:.2f}"
    if info.get("break_even"):
        line += f"\n    break-even: {info['break_even']['tokens']:,} tokens per period"
    if info.get("top_models"):
        tops = ", ".join(f"{m['model']} {Decimal(m['cost']):.2f}" for m in info["top_models"])
        line += f"\n    most expensive models: {tops}"
    if info.get("cache_read_share") is not None:
        line += f"\n    cache-read share of input: {Decimal(info['cache_read_share']) * 100:.1f}%"
    return line


def flags_email_send(*, flag_ids: Sequence[int]) -> int:
    """Email finance once about these newly raised flags (flat subscriptions first).
    Flags already emailed are left out, so a re-run sends nothing twice."""
    recipients = list(settings.INFERBILL_FINANCE_EMAILS)
    if not recipients:
        return 0
    with transaction.atomic():
        flags = list(
            MarginFlag.objects.select_for_update()
            .filter(pk__in=list(flag_ids), emailed_at__isnull=True)
            .select_related("customer")
            .order_by("-is_flat", "margin", "id")
        )
        if not flags:
            return 0
        snapshots = {
            (s.customer_id, s.period): s
            for s in MarginSnapshot.objects.filter(
                customer_id__in=[f.customer_id for f in flags],
                period__in={f.period for f in flags},
            )
        }
        flat = sum(1 for f in flags if f.is_flat)
        subject = (
            f"Inferbill: {len(flags)} customer{'s' if len(flags) != 1 else ''} flagged"
            f" ({flat} on flat subscriptions)"
        )
        body = "\n".join(
            [
                "Newly flagged customers, flat subscriptions first:",
                "",
                *(_flag_line(f, snapshots.get((f.customer_id, f.period))) for f in flags),
                "",
                "See the margin report: python manage.py margin_report --flagged --period "
                f"{flags[0].period:%Y-%m}",
            ]
        )
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
        MarginFlag.objects.filter(pk__in=[f.pk for f in flags]).update(emailed_at=timezone.now())
    return len(flags)


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` (X-Inferbill-Signature)."""
    digest = hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v1={digest}"


def flag_payload(flag: MarginFlag) -> dict[str, Any]:
    def text(value: Decimal | None) -> str | None:
        return None if value is None else format(Decimal(value), "f")

    return {
        "id": f"flag_{flag.pk}",
        "type": "margin_flag.raised",
        "data": {
            "customer": flag.customer.external_id,
            "period": f"{flag.period:%Y-%m}",
            "kind": flag.kind,
            "previous_kind": flag.previous_kind or None,
            "flat_subscription": flag.is_flat,
            "revenue": text(flag.revenue),
            "cost": text(flag.cost),
            "margin": text(flag.margin),
            "margin_ratio": text(flag.margin_ratio),
            "currency": COST_CURRENCY,
            "raised_at": flag.raised_at.isoformat(),
        },
    }


class WebhookError(Exception):
    pass


def flag_webhook_deliver(*, flag_id: int) -> bool:
    """POST the flag, signed, to INFERBILL_ALERT_WEBHOOK_URL. Returns False when it was
    delivered before (or no URL is set); raises WebhookError on failure (the task retries)."""
    url = settings.INFERBILL_ALERT_WEBHOOK_URL
    if not url:
        return False
    if not url.startswith(("https://", "http://")):
        raise WebhookError(f"INFERBILL_ALERT_WEBHOOK_URL must be http(s): {url!r}")
    flag = MarginFlag.objects.select_related("customer").get(pk=flag_id)
    if flag.webhook_delivered_at is not None:
        return False
    body = json.dumps(flag_payload(flag), separators=(",", ":")).encode()
    stamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - an operator-configured URL
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "inferbill-alerts/1",
            "X-Inferbill-Event-Id": f"flag_{flag.pk}",
            "X-Inferbill-Signature": webhook_signature(
                secret=settings.INFERBILL_ALERT_WEBHOOK_SECRET, timestamp=stamp, body=body
            ),
        },
    )
    MarginFlag.objects.filter(pk=flag.pk).update(webhook_attempts=flag.webhook_attempts + 1)
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        MarginFlag.objects.filter(pk=flag.pk).update(webhook_last_error=str(exc)[:512])
        raise WebhookError(f"flag {flag.pk}: {exc}") from exc
    if not 200 <= status < 300:
        MarginFlag.objects.filter(pk=flag.pk).update(webhook_last_error=f"HTTP {status}")
        raise WebhookError(f"flag {flag.pk}: HTTP {status}")
    MarginFlag.objects.filter(pk=flag.pk).update(
        webhook_delivered_at=timezone.now(), webhook_last_error=""
    )
    return True
