"""The demo data set: one product, four customers, three plans, two months of usage.

Deterministic (seeded) and safe to load twice: events carry fixed ids, so a second
run stores nothing new; catalogue rows are created only when missing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import Customer, Invoice, Plan, Subscription
from billing.services import ChargeInput, customer_create, plan_create, subscription_create
from billing.tasks import invoices_dispatch
from metering.ingest import events_store
from metering.models import Source
from metering.normalize import NormalizedEvent
from metering.partitions import event_partitions_ensure_range
from metering.rollup import usage_rollup_fold
from metering.services import api_key_create

SOURCE = "demo-assistant"
PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class ModelProfile:
    model: str
    provider: str
    hardware: str
    input_range: tuple[int, int]
    output_range: tuple[int, int]
    cache_share: float  # share of input typically read from cache
    reasoning_share: float
    gpu_seconds_per_1k_output: Decimal  # self-hosted models only


MODELS = {
    profile.model: profile
    for profile in (
        ModelProfile("gpt-4o", "openai", "", (800, 6000), (100, 1200), 0.4, 0.0, Decimal(0)),
        ModelProfile("gpt-4o-mini", "openai", "", (300, 3000), (50, 600), 0.3, 0.0, Decimal(0)),
        ModelProfile("o3-mini", "openai", "", (500, 4000), (400, 4000), 0.2, 0.6, Decimal(0)),
        ModelProfile(
            "claude-sonnet-4-20250514",
            "anthropic",
            "",
            (2000, 30000),
            (300, 3000),
            0.6,
            0.0,
            Decimal(0),
        ),
        ModelProfile(
            "llama-3.1-70b",
            "self-hosted",
            "h100",
            (500, 4000),
            (100, 1500),
            0.0,
            0.0,
            Decimal("2.5"),
        ),
    )
}


@dataclass(frozen=True)
class DemoCustomer:
    external_id: str
    name: str
    plan: str
    requests_per_day: int
    model_weights: dict[str, int]


CUSTOMERS = (
    DemoCustomer(
        "acme",
        "Acme Robotics",
        "hybrid",
        60,
        {"gpt-4o-mini": 5, "gpt-4o": 2, "llama-3.1-70b": 3},
    ),
    DemoCustomer(
        "globex",
        "Globex Analytics",
        "usage",
        45,
        {"gpt-4o": 3, "o3-mini": 2, "claude-sonnet-4-20250514": 1},
    ),
    # A flat "unlimited" subscriber who sends nearly everything to the largest model:
    # the customer the pricing module exists to find.
    DemoCustomer(
        "initech",
        "Initech (flat, heavy)",
        "unlimited",
        70,
        {"claude-sonnet-4-20250514": 8, "gpt-4o": 2},
    ),
    DemoCustomer("umbrella", "Umbrella Studio (flat, light)", "unlimited", 6, {"gpt-4o-mini": 1}),
)


# The "usage" plan: USD per million tokens of each model, by token class.
USAGE_METRICS = (
    ("uncached_input_tokens", "input tokens"),
    ("cache_read_input_tokens", "cached input tokens"),
    ("output_tokens", "output tokens"),
)
USAGE_PRICES = {
    "gpt-4o": ("5.00", "2.50", "15.00"),
    "gpt-4o-mini": ("0.30", "0.15", "1.20"),
    "o3-mini": ("2.20", "1.10", "8.80"),
    "claude-sonnet-4-20250514": ("6.00", "0.60", "30.00"),
    "llama-3.1-70b": ("1.00", "1.00", "2.00"),
}


def _plans() -> dict[str, Plan]:
    def ensure(code: str, create: Callable[[], Plan]) -> Plan:
        return Plan.objects.filter(code=code, is_latest=True).first() or create()

    per_model_usage = [
        ChargeInput(
            metric=metric,
            price_model="per_unit",
            unit_size=PER_MILLION,
            unit_price=Decimal(price),
            filter={"model": model},
            display_name=f"{model} {what} (per 1M)",
        )
        for model, prices in USAGE_PRICES.items()
        for (metric, what), price in zip(USAGE_METRICS, prices, strict=True)
    ]
    return {
        "unlimited": ensure(
            "unlimited",
            lambda: plan_create(code="unlimited", name="Unlimited", flat_fee=Decimal("20.00")),
        ),
        "usage": ensure(
            "usage",
            lambda: plan_create(code="usage", name="Pay as you go", charges=per_model_usage),
        ),
        "hybrid": ensure(
            "hybrid",
            lambda: plan_create(
                code="hybrid",
                name="Team (hybrid)",
                flat_fee=Decimal("49.00"),
                minimum=Decimal("60.00"),
                charges=[
                    ChargeInput(
                        metric="input_tokens",
                        price_model="graduated",
                        unit_size=PER_MILLION,
                        included_units=Decimal(2_000_000),
                        tiers=[
                            {"up_to": 10_000_000, "unit_price": "3.00", "flat_fee": "0"},
                            {"up_to": None, "unit_price": "2.00", "flat_fee": "0"},
                        ],
                        display_name="Input tokens beyond 2M included (per 1M)",
                    ),
                    ChargeInput(
                        metric="output_tokens",
                        price_model="per_unit",
                        unit_size=PER_MILLION,
                        unit_price=Decimal("10.00"),
                        included_units=Decimal(500_000),
                        display_name="Output tokens beyond 500k included (per 1M)",
                    ),
                    ChargeInput(
                        metric="gpu_seconds",
                        price_model="per_unit",
                        unit_size=Decimal(3600),
                        unit_price=Decimal("4.00"),
                        included_units=Decimal(3600),
                        filter={"hardware": "h100"},
                        display_name="H100 GPU time beyond 1 h included (per GPU-hour)",
                    ),
                ],
            ),
        ),
    }


def _events_for(
    customer: DemoCustomer, *, start: datetime, end: datetime, rng: random.Random
) -> list[NormalizedEvent]:
    models = list(customer.model_weights)
    weights = list(customer.model_weights.values())
    events: list[NormalizedEvent] = []
    day = start
    serial = 0
    while day < end:
        count = max(1, int(rng.gauss(customer.requests_per_day, customer.requests_per_day / 5)))
        for _ in range(count):
            moment = day + timedelta(seconds=rng.randrange(86400))
            if moment >= end:
                continue
            profile = MODELS[rng.choices(models, weights)[0]]
            input_tokens = rng.randint(*profile.input_range)
            output_tokens = rng.randint(*profile.output_range)
            cache_read = int(input_tokens * profile.cache_share * rng.random())
            reasoning = int(output_tokens * profile.reasoning_share)
            serial += 1
            events.append(
                NormalizedEvent(
                    event_id=f"{customer.external_id}-{moment:%Y%m%d}-{serial:06d}",
                    customer=customer.external_id,
                    timestamp=moment,
                    model=profile.model,
                    provider=profile.provider,
                    hardware=profile.hardware,
                    input_tokens=input_tokens,
                    cache_read_input_tokens=cache_read,
                    output_tokens=output_tokens,
                    reasoning_output_tokens=reasoning,
                    gpu_seconds=(profile.gpu_seconds_per_1k_output * output_tokens / 1000).quantize(
                        Decimal("0.000001")
                    ),
                    latency_ms=rng.randint(200, 9000),
                    properties={"feature": rng.choice(["chat", "code", "search"])},
                )
            )
        day += timedelta(days=1)
    return events


@dataclass
class DemoResult:
    api_key: str
    events_stored: int
    invoices: int


def demo_load() -> DemoResult:
    """Load the demo: catalogue, last month and this month so far of usage, last
    month's invoices. Returns a fresh API key (ingest, read and billing scopes)."""
    now = timezone.now()
    this_month = datetime(now.year, now.month, 1, tzinfo=UTC)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    rng = random.Random(20261126)
    event_partitions_ensure_range(start=last_month, end=now)
    with transaction.atomic():
        _, raw_key = api_key_create(
            source_name=SOURCE, scopes=("ingest", "read", "billing"), name="demo"
        )
        plans = _plans()
        for c in CUSTOMERS:
            customer = Customer.objects.filter(external_id=c.external_id).first()
            if customer is None:
                customer = customer_create(external_id=c.external_id, name=c.name)
            if not Subscription.objects.filter(customer=customer).exists():
                subscription_create(
                    customer=customer, plan=plans[c.plan], start_date=last_month.date()
                )
    source = Source.objects.get(name=SOURCE)
    stored = 0
    for c in CUSTOMERS:
        events = _events_for(c, start=last_month, end=now, rng=rng)
        for i in range(0, len(events), 2000):
            stored += events_store(
                source_id=source.id, events=events[i : i + 2000], received_at=now
            ).accepted
    usage_rollup_fold()
    # Last month's invoices: finalized once its grace period is over (drafts before).
    with transaction.atomic():
        invoices_dispatch(as_of=now)
    return DemoResult(api_key=raw_key, events_stored=stored, invoices=Invoice.objects.count())
