"""pricing.costing: rate lookup by instant and provider, the cost of a usage row. No database:
rates are unsaved model instances."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from pricing.costing import ModelRates, RateBook, UsageCost, row_cost
from pricing.models import CostRate

D = Decimal
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 4, 15, tzinfo=UTC)


def token(model: str, token_class: str, per_million: str, start: datetime = T0, provider: str = ""):
    return CostRate(
        kind="token",
        model=model,
        provider=provider,
        token_class=token_class,
        usd_per_token=D(per_million) / 1_000_000,
        effective_from=start,
    )


def row(model: str = "m", hardware: str = "", **metrics: int | str) -> dict[str, object]:
    base: dict[str, object] = {
        "model": model,
        "hardware": hardware,
        "provider": "",
        "requests": 1,
        "input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "output_tokens": 0,
        "reasoning_output_tokens": 0,
        "gpu_seconds": D(0),
    }
    base.update(metrics)
    return base


def test_every_token_class_at_its_rate() -> None:
    rates = ModelRates(
        input=D("0.000003"),
        cache_read=D("0.0000003"),
        cache_write=D("0.00000375"),
        output=D("0.000015"),
        reasoning=D("0.00002"),
    )
    r = row(
        input_tokens=50_000,
        cache_read_input_tokens=30_000,
        cache_write_input_tokens=10_000,
        output_tokens=2_000,
        reasoning_output_tokens=500,
    )
    # uncached 10,000 × 3e-6 = 0.03; read 30,000 × 3e-7 = 0.009; write 10,000 × 3.75e-6
    # = 0.0375; output 1,500 × 1.5e-5 = 0.0225; reasoning 500 × 2e-5 = 0.01 → 0.109
    priced = row_cost(row=r, rates=rates, gpu_second=None)
    assert priced.token_cost == D("0.109")
    assert priced.costed and priced.uncosted_tokens == 0


def test_cache_classes_fall_back_to_input_and_reasoning_to_output() -> None:
    rates = ModelRates(input=D("0.000002"), output=D("0.00001"))
    r = row(
        input_tokens=1000,
        cache_read_input_tokens=300,
        cache_write_input_tokens=200,
        output_tokens=100,
        reasoning_output_tokens=40,
    )
    # all 1,000 input tokens at 2e-6 = 0.002; all 100 output at 1e-5 = 0.001
    assert row_cost(row=r, rates=rates, gpu_second=None).token_cost == D("0.003")


def test_gpu_seconds_cost_hourly_rate_over_utilization() -> None:
    rate = CostRate(
        kind="gpu",
        hardware="h100",
        gpu_hour_rate=D("3.60"),
        utilization=D("0.6"),
        effective_from=T0,
    )
    # 3.60 / 3600 / 0.6 = 0.001666… per GPU-second; 900 s → 1.50
    priced = row_cost(
        row=row("llama", "h100", gpu_seconds=D(900), input_tokens=5000, output_tokens=700),
        rates=ModelRates(),
        gpu_second=rate.usd_per_gpu_second,
    )
    assert priced.gpu_cost.quantize(D("1e-20")) == D("1.5").quantize(D("1e-20"))
    # Tokens of a self-hosted model are costed through its GPU time, not uncosted.
    assert priced.costed and priced.token_cost == 0 and priced.uncosted_tokens == 0


def test_a_row_without_any_rate_is_uncosted_not_free() -> None:
    priced = row_cost(
        row=row("mystery", "a100", input_tokens=10, output_tokens=5, gpu_seconds=D("2.5")),
        rates=ModelRates(),
        gpu_second=None,
    )
    assert not priced.costed
    assert priced.cost == 0
    assert priced.uncosted_tokens == 15 and priced.uncosted_gpu_seconds == D("2.5")
    usage = UsageCost()
    usage.add(row=row("mystery", requests=3, input_tokens=10, output_tokens=5), priced=priced)
    assert usage.uncosted_requests == 3 and usage.uncosted_models == {"mystery"}


def test_a_class_with_no_rate_is_uncosted_while_the_rest_is_costed() -> None:
    priced = row_cost(
        row=row(input_tokens=1000, output_tokens=300),
        rates=ModelRates(input=D("0.000001")),
        gpu_second=None,
    )
    assert priced.costed and priced.token_cost == D("0.001") and priced.uncosted_tokens == 300


def test_rate_book_picks_the_rate_in_force_and_the_provider_specific_one() -> None:
    book = RateBook(
        [
            token("gpt-4o", "output", "10", T0),
            token("gpt-4o", "output", "8", T1),
            token("gpt-4o", "output", "12", T0, provider="azure"),
        ]
    )
    before, after = datetime(2026, 4, 14, 23, tzinfo=UTC), T1
    assert book.model_rates(model="gpt-4o", provider="openai", at=before).output == D("0.00001")
    assert book.model_rates(model="gpt-4o", provider="openai", at=after).output == D("0.000008")
    assert book.model_rates(model="gpt-4o", provider="azure", at=after).output == D("0.000012")
    assert book.model_rates(model="gpt-4o", provider="", at=datetime(2025, 1, 1, tzinfo=UTC)) == (
        ModelRates()
    )
    assert not book.model_rates(model="other", provider="", at=after).any
