"""The demo's cost rates: real list prices, no files needed, idempotent."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pricing.demo import DEMO_HARDWARE, demo_cost_rates_load
from pricing.models import CostRate

pytestmark = pytest.mark.django_db


def test_demo_rates_load_once_with_published_prices() -> None:
    created = demo_cost_rates_load()
    assert created == CostRate.objects.count() > 0
    assert demo_cost_rates_load() == 0
    output = CostRate.objects.get(model="gpt-4o", token_class="output")
    assert output.usd_per_million_tokens == Decimal("10")
    write = CostRate.objects.get(model="claude-sonnet-4-20250514", token_class="cache_write")
    assert write.usd_per_million_tokens == Decimal("3.75")
    gpu = CostRate.objects.get(kind="gpu")
    assert gpu.hardware == DEMO_HARDWARE
    # $2.99 per GPU-hour at 60% utilization: 2.99 / 3600 / 0.6 per GPU-second served.
    assert gpu.usd_per_gpu_second.quantize(Decimal("1e-12")) == Decimal("0.001384259259")
