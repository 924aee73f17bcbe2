"""Test factories shared by the billing, pricing and metering tests: events in through
the real write path (`metering.ingest.events_store`, which takes any timestamp, so
tests can use fixed months in the past), customers, and per-unit charges."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing.models import Customer
from billing.services import ChargeInput, customer_create
from metering.ingest import IngestResult, events_store
from metering.models import Source
from metering.normalize import NormalizedEvent

MILLION = Decimal(1_000_000)

# One counter for every test module, so event ids never repeat within a run.
_ids = itertools.count(1)


def at(text: str) -> datetime:
    """A UTC moment from 'YYYY-MM-DD[ HH:MM[:SS]]'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ev(
    customer: str, when: str | datetime, model: str = "gpt-4o", **fields: Any
) -> NormalizedEvent:
    """One valid event; token classes, hardware, provider, gpu_seconds, properties by name."""
    if "gpu_seconds" in fields:
        fields["gpu_seconds"] = Decimal(str(fields["gpu_seconds"]))
    return NormalizedEvent(
        event_id=f"ev-{next(_ids)}",
        customer=customer,
        timestamp=at(when) if isinstance(when, str) else when,
        model=model,
        **fields,
    )


def store(
    *events: NormalizedEvent, source: str, received_at: datetime | None = None
) -> IngestResult:
    """Store events as one ingest batch of `source` through the real ingest path; every
    one must be accepted."""
    src = Source.objects.get_or_create(name=source)[0]
    result = events_store(
        source_id=src.id, events=list(events), received_at=received_at or timezone.now()
    )
    assert result.accepted == len(events), result
    return result


def customer(external_id: str = "acme", currency: str = "USD") -> Customer:
    return customer_create(external_id=external_id, name=external_id.title(), currency=currency)


def per_unit(metric: str, price: str, *, unit_size: Decimal = MILLION, **kw: Any) -> ChargeInput:
    """A per-unit charge: `price` per `unit_size` (a million by default) of `metric`."""
    return ChargeInput(
        metric=metric, price_model="per_unit", unit_size=unit_size, unit_price=Decimal(price), **kw
    )
