"""Fixtures shared by the pricing tests (plain helpers live in tests/pricing/helpers.py)."""

from __future__ import annotations

import pytest

from tests.pricing.helpers import customer, ev, per_unit, plan, store, subscribe, token_rates


@pytest.fixture
def april_usage() -> None:
    """April 2026: heavy and light on a $30 flat plan, metered paying $20 per million
    output tokens; gpt-4o output costs $10 per million."""
    token_rates("gpt-4o", output="10")
    unlimited = plan("unlimited", flat_fee="30")
    subscribe(customer("heavy"), unlimited)
    subscribe(customer("light"), unlimited)
    subscribe(customer("metered"), plan("payg", charges=[per_unit("output_tokens", "20")]))
    store(
        ev("heavy", "2026-04-03 10:00", output_tokens=5_000_000),  # cost 50.00
        ev("light", "2026-04-04 10:00", output_tokens=100_000),  # cost 1.00
        ev("metered", "2026-04-04 10:00", output_tokens=1_000_000),  # cost 10.00, revenue 20.00
    )
