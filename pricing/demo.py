"""Demo cost rates: real published list prices, hard-coded so the demo needs no files.

Per-token prices are the providers' published standard (non-batch) prices in USD per
million tokens: OpenAI's for gpt-4o, gpt-4o-mini and o3-mini (cached input at half
price), Anthropic's for Claude Sonnet 4 and Claude 3.5 Haiku (5-minute
cache writes at 1.25× input, cache reads at 0.1× input). The self-hosted model runs on
H100s rented at $2.99 per GPU-hour (a published on-demand H100 SXM price), at 60%
utilization, so a GPU-second served costs 2.99 / 3600 / 0.6 ≈ $0.00138.
"""

from __future__ import annotations

from decimal import Decimal

from pricing.models import CostRate
from pricing.services import RATES_BEGIN, cost_rate_create

# model → token class → USD per million tokens
DEMO_TOKEN_PRICES: dict[str, dict[str, str]] = {
    "gpt-4o": {"input": "2.50", "cache_read": "1.25", "output": "10.00"},
    "gpt-4o-mini": {"input": "0.15", "cache_read": "0.075", "output": "0.60"},
    "o3-mini": {"input": "1.10", "cache_read": "0.55", "output": "4.40"},
    "claude-sonnet-4-20250514": {
        "input": "3.00",
        "cache_write": "3.75",
        "cache_read": "0.30",
        "output": "15.00",
    },
    "claude-3-5-haiku-20241022": {
        "input": "0.80",
        "cache_write": "1.00",
        "cache_read": "0.08",
        "output": "4.00",
    },
}
# The same prices under the short names events often carry.
DEMO_ALIASES = {
    "claude-sonnet-4": "claude-sonnet-4-20250514",
    "claude-3-5-haiku": "claude-3-5-haiku-20241022",
}
DEMO_PROVIDERS = {"gpt": "openai", "o3": "openai", "claude": "anthropic"}

# The self-hosted model: events carry model "llama-3.1-70b", hardware "h100" and
# gpu_seconds; it is costed by GPU time only.
DEMO_SELF_HOSTED_MODEL = "llama-3.1-70b"
DEMO_HARDWARE = "h100"
DEMO_GPU_HOUR_RATE = Decimal("2.99")
DEMO_UTILIZATION = Decimal("0.60")


def demo_cost_rates_load() -> int:
    """Create the demo's cost rates, in force from the beginning. Idempotent: returns
    how many were created (0 on a re-run)."""
    created = 0
    prices = dict(DEMO_TOKEN_PRICES)
    prices |= {alias: DEMO_TOKEN_PRICES[model] for alias, model in DEMO_ALIASES.items()}
    for model, classes in prices.items():
        provider = DEMO_PROVIDERS[model.split("-")[0]]
        for token_class, per_million in classes.items():
            _, new = cost_rate_create(
                kind=CostRate.Kind.TOKEN,
                model=model,
                token_class=token_class,
                usd_per_million_tokens=Decimal(per_million),
                effective_from=RATES_BEGIN,
                source="demo",
                note=f"{provider} published list price",
            )
            created += new
    _, new = cost_rate_create(
        kind=CostRate.Kind.GPU,
        hardware=DEMO_HARDWARE,
        gpu_hour_rate=DEMO_GPU_HOUR_RATE,
        utilization=DEMO_UTILIZATION,
        effective_from=RATES_BEGIN,
        source="demo",
        note=f"self-hosted {DEMO_SELF_HOSTED_MODEL}: rented H100 at 60% utilization",
    )
    return created + new
