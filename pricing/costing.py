"""Cost arithmetic: which rate applies to a usage row, and what the row costs.

Pure apart from `RateBook.load`, which reads the rates once. Decimal throughout; a
token cost is exact (integer tokens × a per-token price), a GPU cost divides by 3600 and
the utilization in a 50-digit context.

Rules (also in the README section on pricing):
- A row of usage is costed at the rates in force at its time (`effective_from` <= t).
  The reader splits each period at every rate's `effective_from`, so a rate change in
  the middle of a period applies exactly from its instant; changes on the hour (dates
  are midnight UTC) cost from hourly rollups alone.
- Token classes: uncached input (input − cache read − cache write), cache read, cache
  write, output and reasoning. Cache read and cache write fall back to the uncached
  input rate when the model has no rate for them; reasoning tokens are part of output
  and are costed as output unless a reasoning rate exists.
- A rate naming the row's provider wins over one with an empty provider (any provider).
- GPU-seconds cost gpu_hour_rate / 3600 / utilization each, by hardware.
- A row no rate applies to at all is uncosted: its requests, tokens and GPU-seconds
  are counted as such, never costed at zero. Tokens of a class with no rate (and no
  fallback) and GPU-seconds on hardware with no rate are uncosted too.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

from pricing.models import CostRate

EXACT = Context(prec=50)
ZERO = Decimal(0)
TOKEN_CLASSES = ("input", "cache_read", "cache_write", "output", "reasoning")


@dataclass(frozen=True, slots=True)
class ModelRates:
    """The per-token rates of one model (and provider) at one instant; None: no rate."""

    input: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal | None = None
    reasoning: Decimal | None = None

    @property
    def any(self) -> bool:
        return any(
            r is not None
            for r in (self.input, self.cache_read, self.cache_write, self.output, self.reasoning)
        )


@dataclass
class _Timeline:
    starts: list[datetime] = field(default_factory=list)
    values: list[Decimal] = field(default_factory=list)

    def at(self, moment: datetime) -> Decimal | None:
        index = bisect.bisect_right(self.starts, moment) - 1
        return self.values[index] if index >= 0 else None


class RateBook:
    """Every rate of a set of models and hardware, looked up by instant."""

    def __init__(self, rates: Iterable[CostRate]) -> None:
        self._tokens: dict[tuple[str, str, str], _Timeline] = {}
        self._gpu: dict[str, _Timeline] = {}
        pairs: list[tuple[datetime, CostRate]] = sorted(
            ((r.effective_from, r) for r in rates), key=lambda pair: pair[0]
        )
        for start, rate in pairs:
            if rate.kind == CostRate.Kind.GPU:
                timeline = self._gpu.setdefault(rate.hardware, _Timeline())
                value = rate.usd_per_gpu_second
            else:
                timeline = self._tokens.setdefault(
                    (rate.model, rate.provider, rate.token_class), _Timeline()
                )
                value = Decimal(rate.usd_per_token)
            assert value is not None  # guaranteed by the model's check constraint
            timeline.starts.append(start)
            timeline.values.append(value)
        self._cache: dict[tuple[str, str, datetime], ModelRates] = {}

    @classmethod
    def load(cls, *, models: Iterable[str], hardware: Iterable[str], before: datetime) -> RateBook:
        """The rates of these models and hardware that start before `before`."""
        model_list = sorted(set(models))
        hardware_list = sorted({h for h in hardware if h})
        rates: list[CostRate] = []
        for i in range(0, len(model_list), 500):
            rates += CostRate.objects.filter(
                kind=CostRate.Kind.TOKEN,
                model__in=model_list[i : i + 500],
                effective_from__lt=before,
            )
        if hardware_list:
            rates += CostRate.objects.filter(
                kind=CostRate.Kind.GPU, hardware__in=hardware_list, effective_from__lt=before
            )
        return cls(rates)

    def model_rates(self, *, model: str, provider: str, at: datetime) -> ModelRates:
        key = (model, provider, at)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found: dict[str, Decimal | None] = {}
        for token_class in TOKEN_CLASSES:
            value = None
            if provider:
                timeline = self._tokens.get((model, provider, token_class))
                value = timeline.at(at) if timeline else None
            if value is None:
                timeline = self._tokens.get((model, "", token_class))
                value = timeline.at(at) if timeline else None
            found[token_class] = value
        rates = ModelRates(**found)
        self._cache[key] = rates
        return rates

    def gpu_second(self, *, hardware: str, at: datetime) -> Decimal | None:
        if not hardware:
            return None
        timeline = self._gpu.get(hardware)
        return timeline.at(at) if timeline else None


@dataclass(slots=True)
class RowCost:
    token_cost: Decimal = ZERO
    gpu_cost: Decimal = ZERO
    costed: bool = False
    uncosted_tokens: int = 0
    uncosted_gpu_seconds: Decimal = ZERO

    @property
    def cost(self) -> Decimal:
        return self.token_cost + self.gpu_cost


def row_cost(*, row: dict[str, Any], rates: ModelRates, gpu_second: Decimal | None) -> RowCost:
    """The cost of one usage row (summed metrics of one model, hardware and provider)."""
    result = RowCost()
    input_tokens: int = row["input_tokens"]
    cache_read: int = row["cache_read_input_tokens"]
    cache_write: int = row["cache_write_input_tokens"]
    output: int = row["output_tokens"]
    reasoning = min(row["reasoning_output_tokens"], output)
    uncached = max(input_tokens - cache_read - cache_write, 0)
    gpu_seconds: Decimal = row["gpu_seconds"]
    has_tokens = bool(input_tokens or output)
    if rates.any:
        result.costed = True
        parts = (
            (uncached, rates.input),
            (cache_read, rates.cache_read if rates.cache_read is not None else rates.input),
            (cache_write, rates.cache_write if rates.cache_write is not None else rates.input),
        )
        if rates.reasoning is not None:
            parts += ((output - reasoning, rates.output), (reasoning, rates.reasoning))
        else:
            parts += ((output, rates.output),)
        with localcontext(EXACT):
            for tokens, rate in parts:
                if not tokens:
                    continue
                if rate is None:
                    result.uncosted_tokens += tokens
                else:
                    result.token_cost += tokens * rate
    if gpu_second is not None:
        result.costed = True
        with localcontext(EXACT):
            result.gpu_cost = gpu_seconds * gpu_second
    elif gpu_seconds and row["hardware"]:
        result.uncosted_gpu_seconds = gpu_seconds
    if not result.costed:
        # Nothing applies: everything in the row is uncosted, nothing is priced at zero.
        result.uncosted_tokens = input_tokens + output if has_tokens else 0
        result.uncosted_gpu_seconds = gpu_seconds
    return result


@dataclass
class UsageCost:
    """One customer's cost and usage over a period, with its breakdowns."""

    token_cost: Decimal = ZERO
    gpu_cost: Decimal = ZERO
    requests: int = 0
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    gpu_seconds: Decimal = ZERO
    uncosted_requests: int = 0
    uncosted_tokens: int = 0
    uncosted_gpu_seconds: Decimal = ZERO
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_hardware: dict[str, dict[str, Any]] = field(default_factory=dict)
    uncosted_models: set[str] = field(default_factory=set)

    @property
    def cost(self) -> Decimal:
        return self.token_cost + self.gpu_cost

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, *, row: dict[str, Any], priced: RowCost) -> None:
        """Add a metering usage row (ints, gpu_seconds a Decimal) and its cost."""
        requests: int = row["requests"]
        input_tokens: int = row["input_tokens"]
        cache_read: int = row["cache_read_input_tokens"]
        output: int = row["output_tokens"]
        gpu_seconds: Decimal = row["gpu_seconds"]
        cost = priced.cost
        self.token_cost += priced.token_cost
        self.gpu_cost += priced.gpu_cost
        self.requests += requests
        self.input_tokens += input_tokens
        self.cache_read_input_tokens += cache_read
        self.cache_write_input_tokens += row["cache_write_input_tokens"]
        self.output_tokens += output
        self.reasoning_output_tokens += row["reasoning_output_tokens"]
        self.gpu_seconds += gpu_seconds
        self.uncosted_tokens += priced.uncosted_tokens
        self.uncosted_gpu_seconds += priced.uncosted_gpu_seconds
        model = self.by_model.get(row["model"])
        if model is None:
            model = self.by_model[row["model"]] = {
                "cost": ZERO,
                "requests": 0,
                "input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
                "gpu_seconds": ZERO,
                "uncosted_requests": 0,
            }
        model["cost"] += cost
        model["requests"] += requests
        model["input_tokens"] += input_tokens
        model["cache_read_input_tokens"] += cache_read
        model["output_tokens"] += output
        model["gpu_seconds"] += gpu_seconds
        if not priced.costed:
            self.uncosted_requests += requests
            self.uncosted_models.add(row["model"])
            model["uncosted_requests"] += requests
        if row["hardware"]:
            hardware = self.by_hardware.get(row["hardware"])
            if hardware is None:
                hardware = self.by_hardware[row["hardware"]] = {
                    "cost": ZERO,
                    "gpu_cost": ZERO,
                    "requests": 0,
                    "gpu_seconds": ZERO,
                }
            hardware["cost"] += cost
            hardware["gpu_cost"] += priced.gpu_cost
            hardware["requests"] += requests
            hardware["gpu_seconds"] += gpu_seconds

    def breakdown(self, *, places: Decimal) -> dict[str, Any]:
        """JSON-ready: models and hardware by cost, dearest first."""

        def amount(value: Decimal) -> str:
            return format(value.quantize(places, rounding=ROUND_HALF_UP), "f")

        models = sorted(self.by_model.items(), key=lambda kv: (-kv[1]["cost"], kv[0]))
        hardware = sorted(self.by_hardware.items(), key=lambda kv: (-kv[1]["cost"], kv[0]))
        return {
            "models": [
                {
                    "model": name,
                    "cost": amount(v["cost"]),
                    "requests": v["requests"],
                    "input_tokens": v["input_tokens"],
                    "cache_read_input_tokens": v["cache_read_input_tokens"],
                    "output_tokens": v["output_tokens"],
                    "gpu_seconds": format(v["gpu_seconds"], "f"),
                    "uncosted_requests": v["uncosted_requests"],
                }
                for name, v in models
            ],
            "hardware": [
                {
                    "hardware": name,
                    "cost": amount(v["cost"]),
                    "gpu_cost": amount(v["gpu_cost"]),
                    "requests": v["requests"],
                    "gpu_seconds": format(v["gpu_seconds"], "f"),
                }
                for name, v in hardware
            ],
            "uncosted_models": sorted(self.uncosted_models),
        }
