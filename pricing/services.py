"""Writes of the pricing app: cost rates, the LiteLLM catalog import, margin refresh
with flag transitions (finance is told through pricing.alerts).

Guarantees:
- A cost rate never rewrites the cost of past usage: once a rate for a key is in
  force, a new rate for that key cannot take effect before the current hour (a first
  rate for a key may start in the past: it costs usage that had no rate, which was
  shown as uncosted until then). Rates in force are not edited or deleted.
- `cost_rates_import_litellm` is idempotent: re-running it on the same file creates
  nothing.
- `margins_refresh` may run any number of times, concurrently: snapshot and flag
  writes of a period are serialised (an advisory lock on PostgreSQL, SQLite has a
  single writer), an older computation never overwrites a newer one, and each flag
  transition is written once and notified once (after commit).
"""

from __future__ import annotations

import json
import time as time_module
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import JSONField
from django.utils import timezone
from psycopg.types.json import Jsonb

from billing.models import Plan
from pricing import selectors
from pricing.alerts import flags_notify
from pricing.margins import (
    CustomerPeriod,
    GroupUsage,
    MarginFigures,
    customer_periods,
    day_start,
    margins_compute,
    margins_read,
    money,
    revenue_on_plan,
)
from pricing.models import MILLION, CostRate, MarginFlag, MarginSnapshot, ReferencePlan

# A first rate imported from a catalog costs everything before it too.
RATES_BEGIN = datetime(2000, 1, 1, tzinfo=UTC)
PER_TOKEN_PLACES = Decimal("1e-18")
REFRESH_CHUNK = 1000  # customers whose usage is read, rated and written together
READ_AHEAD = 2  # connections reading the next customers' usage meanwhile


class RateError(Exception):
    """Bad input for a cost rate; `errors` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _instant(value: datetime | date, *, name: str) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise RateError({name: "must include a UTC offset"})
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    raise RateError({name: "must be a date or a date-time"})


def _decimal(value: Any, *, name: str, errors: dict[str, str]) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float | bool):
        errors[name] = "must be a decimal string, not a float"
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        errors[name] = f"not a decimal number: {value!r}"
        return None
    if not number.is_finite() or number < 0:
        errors[name] = "must be a finite number ≥ 0"
        return None
    return number


# --- cost rates ------------------------------------------------------------------------------


def cost_rate_check_history(*, rate: CostRate, now: datetime) -> None:
    """Refuse a new rate that would change the cost of usage already costed: once a rate
    of its key is in force, a new one takes effect no earlier than the current hour."""
    effective_from = rate.effective_from
    if effective_from >= hour_floor(now):
        return
    in_force = selectors.cost_rate_in_force(key=rate.key, at=effective_from)
    if in_force is not None:
        raise RateError(
            {
                "effective_from": (
                    f"{effective_from.isoformat()} would rewrite the cost of past usage "
                    f"(rate {in_force.pk} is in force then); a new rate takes effect at "
                    f"{hour_floor(now).isoformat()} or later"
                )
            }
        )


def cost_rate_build(
    *,
    kind: str,
    effective_from: datetime | date,
    model: str = "",
    provider: str = "",
    token_class: str = "",
    usd_per_token: Any = None,
    usd_per_million_tokens: Any = None,
    hardware: str = "",
    gpu_hour_rate: Any = None,
    utilization: Any = None,
    source: str = "api",
    note: str = "",
) -> CostRate:
    """A validated, unsaved cost rate. Raises RateError naming each bad field. Per-token
    prices may be given per token or per million tokens."""
    errors: dict[str, str] = {}
    start = _instant(effective_from, name="effective_from")
    fields: dict[str, Any] = {"kind": kind, "effective_from": start, "source": source, "note": note}
    if kind == CostRate.Kind.TOKEN:
        if not model or len(model) > 256:
            errors["model"] = "is required (1 to 256 characters) for a token rate"
        if token_class not in CostRate.TokenClass.values:
            errors["token_class"] = f"must be one of {', '.join(CostRate.TokenClass.values)}"
        if hardware or gpu_hour_rate is not None or utilization is not None:
            errors["hardware"] = "a token rate has no hardware, gpu_hour_rate or utilization"
        per_token = _decimal(usd_per_token, name="usd_per_token", errors=errors)
        per_million = _decimal(usd_per_million_tokens, name="usd_per_million_tokens", errors=errors)
        if (per_token is None) == (per_million is None) and not errors:
            errors["usd_per_token"] = "give one of usd_per_token, usd_per_million_tokens"  # noqa: S105
        price = per_token if per_token is not None else (per_million or Decimal(0)) / MILLION
        if price.quantize(PER_TOKEN_PLACES, rounding=ROUND_HALF_UP) != price or price >= 10**12:
            errors.setdefault("usd_per_token", "at most 18 decimal places per token, below 10^12")
        fields |= {
            "model": model,
            "provider": provider,
            "token_class": token_class,
            "usd_per_token": price,
        }
    elif kind == CostRate.Kind.GPU:
        if not hardware or len(hardware) > 128:
            errors["hardware"] = "is required (1 to 128 characters) for a GPU rate"
        if model or token_class or usd_per_token is not None or usd_per_million_tokens is not None:
            errors["model"] = "a GPU rate has no model, token_class or per-token price"
        hourly = _decimal(gpu_hour_rate, name="gpu_hour_rate", errors=errors)
        if hourly is None:
            errors.setdefault("gpu_hour_rate", "is required for a GPU rate")
        share = _decimal(
            1 if utilization is None else utilization, name="utilization", errors=errors
        )
        if share is not None and not Decimal(0) < share <= 1:
            errors["utilization"] = "must be greater than 0 and at most 1"
        elif share is not None and share != share.quantize(Decimal("0.0001")):
            errors["utilization"] = "at most 4 decimal places"
        if hourly is not None and (
            hourly != hourly.quantize(Decimal("0.000001")) or hourly >= 10**14
        ):
            errors["gpu_hour_rate"] = "at most 6 decimal places and below 10^14"
        fields |= {"hardware": hardware, "gpu_hour_rate": hourly, "utilization": share}
    else:
        errors["kind"] = "must be 'token' or 'gpu'"
    if errors:
        raise RateError(errors)
    return CostRate(**fields)


def cost_rate_create(*, now: datetime | None = None, **fields: Any) -> tuple[CostRate, bool]:
    """Create a cost rate (fields as in `cost_rate_build`); returns (rate, created).
    Re-sending an identical rate returns the stored one. Refuses a rate that would
    rewrite the cost of past usage."""
    now = now or timezone.now()
    candidate = cost_rate_build(**fields)
    start = candidate.effective_from
    with transaction.atomic():
        existing = CostRate.objects.filter(
            **CostRate.key_filter(candidate.key), effective_from=start
        ).first()
        if existing is not None:
            same = (
                existing.usd_per_token == candidate.usd_per_token
                and existing.gpu_hour_rate == candidate.gpu_hour_rate
                and existing.utilization == candidate.utilization
            )
            if same:
                return existing, False
            raise RateError(
                {"effective_from": f"rate {existing.pk} of this key already starts then"}
            )
        cost_rate_check_history(rate=candidate, now=now)
        candidate.save()
    return candidate, True


# --- the LiteLLM catalog ------------------------------------------------------------------------

LITELLM_FIELDS = {
    "input_cost_per_token": "input",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_token": "output",
    "output_cost_per_reasoning_token": "reasoning",
}


@dataclass
class ImportReport:
    entries: int = 0
    created: int = 0  # models with no rate before
    changed: int = 0  # models given a new rate for some token class
    unchanged: int = 0
    skipped: int = 0  # no per-token price, or filtered out
    rates_created: int = 0
    refused: list[str] = field(default_factory=list)


def litellm_catalog_read(path: str | Path) -> dict[str, Any]:
    """A LiteLLM price file, numbers as exact Decimals."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle, parse_float=Decimal)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a LiteLLM price catalog (expected a JSON object)")
    return data


def _catalog_prices(entry: Any) -> dict[str, Decimal]:
    if not isinstance(entry, dict):
        return {}
    prices: dict[str, Decimal] = {}
    for name, token_class in LITELLM_FIELDS.items():
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, int | Decimal) or value < 0:
            continue
        # The catalog is written from floats: keep 18 places, drop binary noise beyond.
        prices[token_class] = Decimal(value).quantize(PER_TOKEN_PLACES, rounding=ROUND_HALF_UP)
    if "input" not in prices and "output" not in prices:
        return {}
    return prices


def cost_rates_import_litellm(
    *,
    catalog: dict[str, Any],
    providers: Sequence[str] = (),
    models: Sequence[str] = (),
    effective_from: datetime | None = None,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Load per-token rates from a LiteLLM-format catalog (model name → prices).

    Each model's rates apply to that model name from any provider (the catalog's
    provider is kept in `source`). A model with no rate yet gets its rates from
    `effective_from` (default: the beginning); a model whose price differs from its
    latest rate gets a new rate from `effective_from` (default: the next hour), never
    earlier than the current hour. Prices equal to the latest rate change nothing."""
    now = now or timezone.now()
    report = ImportReport()
    wanted_providers = set(providers)
    wanted_models = set(models)
    selected: dict[str, dict[str, Decimal]] = {}
    sources: dict[str, str] = {}
    for name, entry in catalog.items():
        report.entries += 1
        provider = entry.get("litellm_provider", "") if isinstance(entry, dict) else ""
        prices = _catalog_prices(entry) if name != "sample_spec" else {}
        if (
            not prices
            or len(name) > 256
            or (wanted_providers and provider not in wanted_providers)
            or (wanted_models and name not in wanted_models)
        ):
            report.skipped += 1
            continue
        selected[name] = prices
        sources[name] = f"litellm:{provider}"[:128]
    latest: dict[tuple[str, str], tuple[datetime, Decimal]] = {}
    names = sorted(selected)
    for i in range(0, len(names), 500):
        for model, token_class, start, price in CostRate.objects.filter(
            kind=CostRate.Kind.TOKEN, provider="", model__in=names[i : i + 500]
        ).values_list("model", "token_class", "effective_from", "usd_per_token"):
            current = latest.get((model, token_class))
            if current is None or start > current[0]:
                latest[(model, token_class)] = (start, Decimal(price))
    next_hour = hour_floor(now) + timedelta(hours=1)
    new_rates: list[CostRate] = []
    for done, name in enumerate(names, start=1):
        created_model = not any((name, c) in latest for c in LITELLM_FIELDS.values())
        changed = False
        for token_class, price in selected[name].items():
            current = latest.get((name, token_class))
            if current is not None and current[1] == price:
                continue
            if current is None:
                start = effective_from or RATES_BEGIN
            else:
                start = effective_from or next_hour
                if start <= current[0] or start < hour_floor(now):
                    report.refused.append(
                        f"{name} {token_class}: a new price from {start.isoformat()} would "
                        "rewrite past cost"
                    )
                    continue
            new_rates.append(
                CostRate(
                    kind=CostRate.Kind.TOKEN,
                    model=name,
                    token_class=token_class,
                    usd_per_token=price,
                    effective_from=start,
                    source=sources[name],
                )
            )
            changed = True
        if not changed:
            report.unchanged += 1
        elif created_model:
            report.created += 1
        else:
            report.changed += 1
        if progress is not None:
            progress(done)
    with transaction.atomic():
        CostRate.objects.bulk_create(new_rates, batch_size=1000)
    report.rates_created = len(new_rates)
    return report


# --- margins and flags -----------------------------------------------------------------------


@dataclass
class RefreshResult:
    period: date
    as_of: datetime
    customers: int = 0
    flagged: int = 0
    raised: list[int] = field(default_factory=list)
    cleared: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": f"{self.period:%Y-%m}",
            "as_of": self.as_of.isoformat(),
            "customers": self.customers,
            "flagged": self.flagged,
            "raised": len(self.raised),
            "cleared": self.cleared,
            "seconds": round(self.seconds, 3),
        }


def margin_floor() -> Decimal:
    return Decimal(str(settings.INFERBILL_MARGIN_FLOOR))


def flag_desired(*, figures: MarginFigures, floor: Decimal) -> str:
    """The one flag that holds for these figures, most severe first, or ''."""
    if not figures.comparable:
        return ""
    if figures.margin < 0:
        return MarginFlag.Kind.NEGATIVE_MARGIN
    projected = figures.projected_margin
    if figures.is_open and projected is not None and projected < 0:
        return MarginFlag.Kind.PROJECTED_NEGATIVE
    ratio = figures.margin_ratio
    if ratio is not None and ratio < floor:
        return MarginFlag.Kind.LOW_MARGIN
    return ""


def reference_plan() -> Plan | None:
    code = ReferencePlan.code()
    if not code:
        return None
    return Plan.objects.filter(code=code, is_latest=True).prefetch_related("charges").first()


def insights_compute(*, figures: MarginFigures, reference: Plan | None) -> dict[str, Any]:
    """What finance sees for a flagged customer."""
    usage = figures.usage
    cost = figures.cost
    fee = figures.project() if figures.is_open else figures.revenue
    out: dict[str, Any] = {
        "reference_plan": reference.code if reference else None,
        "reference_amount": None,
        "break_even": None,
        "top_models": [],
        "cache_read_share": None,
    }
    if reference is not None and reference.currency == figures.currency:
        amount = revenue_on_plan(figures=figures, plan=reference)
        out["reference_amount"] = format(amount, "f")
    if cost > 0 and fee is not None:
        # Cost grows with usage at the customer's own model mix: usage per dollar × fee.
        out["break_even"] = {
            "revenue": format(fee, "f"),
            "tokens": int(Decimal(usage.tokens) * fee / cost),
            "gpu_seconds": format(
                money(usage.gpu_seconds * fee / cost).quantize(Decimal("0.000001")), "f"
            ),
            "tokens_so_far": usage.tokens,
            "gpu_seconds_so_far": format(usage.gpu_seconds, "f"),
        }
    ranked = sorted(usage.by_model.items(), key=lambda kv: (-kv[1]["cost"], kv[0]))[:3]
    out["top_models"] = [
        {
            "model": name,
            "cost": format(money(values["cost"]), "f"),
            "share": format((values["cost"] / usage.cost).quantize(Decimal("0.0001")), "f")
            if usage.cost
            else None,
        }
        for name, values in ranked
    ]
    if usage.input_tokens:
        share = Decimal(usage.cache_read_input_tokens) / Decimal(usage.input_tokens)
        out["cache_read_share"] = format(share.quantize(Decimal("0.0001")), "f")
    return out


def _snapshot(figures: MarginFigures, flag: str, insights: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's column values by attribute name (customer_id, period, …)."""
    usage = figures.usage
    cp = figures.cp
    return {
        "customer_id": figures.customer.id,
        "period": cp.period,
        "period_start": cp.start,
        "period_end": cp.end,
        "as_of": figures.as_of,
        "is_open": figures.is_open,
        "currency": figures.currency,
        "plan_codes": sorted({s.plan.code for s in figures.plans}),
        "is_flat": figures.is_flat,
        "revenue_basis": figures.revenue_basis,
        "revenue": figures.revenue,
        "cost": figures.cost,
        "token_cost": money(usage.token_cost),
        "gpu_cost": money(usage.gpu_cost),
        "margin": figures.margin,
        "margin_ratio": figures.margin_ratio,
        "projected_revenue": figures.projected_revenue,
        "projected_cost": figures.projected_cost,
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "output_tokens": usage.output_tokens,
        "gpu_seconds": usage.gpu_seconds,
        "uncosted_requests": usage.uncosted_requests,
        "uncosted_tokens": usage.uncosted_tokens,
        "uncosted_gpu_seconds": usage.uncosted_gpu_seconds,
        "breakdown": usage.breakdown(places=Decimal("0.000001")),
        "insights": insights,
        "flag": flag,
        "computed_at": timezone.now(),
    }


_SNAPSHOT_FIELDS = [f for f in MarginSnapshot._meta.concrete_fields if f.name != "id"]
# What a newer computation replaces: everything but the (customer, period) key.
_SNAPSHOT_UPDATED = [f for f in _SNAPSHOT_FIELDS if f.name not in ("customer", "period")]
SNAPSHOT_UPDATE_FIELDS = [f.name for f in _SNAPSHOT_UPDATED]
_SNAPSHOT_COLUMNS = ", ".join(f.column for f in _SNAPSHOT_FIELDS)
_SNAPSHOT_JSON = {f.attname for f in _SNAPSHOT_FIELDS if isinstance(f, JSONField)}
_SNAPSHOT_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS pricing_snapshot_staging ON COMMIT DELETE ROWS AS "
    f"SELECT {_SNAPSHOT_COLUMNS} FROM pricing_marginsnapshot WITH NO DATA"
)
_SNAPSHOT_UPSERT = (
    f"INSERT INTO pricing_marginsnapshot ({_SNAPSHOT_COLUMNS}) "
    f"SELECT {_SNAPSHOT_COLUMNS} FROM pricing_snapshot_staging "
    "ON CONFLICT (customer_id, period) DO UPDATE SET "
    + ", ".join(f"{f.column} = EXCLUDED.{f.column}" for f in _SNAPSHOT_UPDATED)
    + " WHERE pricing_marginsnapshot.as_of <= EXCLUDED.as_of RETURNING customer_id"
)


def _snapshots_upsert(snapshots: list[dict[str, Any]], *, as_of: datetime) -> set[int]:
    """Insert or replace snapshots (column values by attribute name; one per customer and
    period), except where a snapshot as of a later moment exists. Returns the customer
    ids written. On PostgreSQL through COPY into a staging table and one INSERT … ON
    CONFLICT, rather than building model instances and one huge statement (not timed on
    its own; bench/margin.py times the whole refresh)."""
    if not snapshots:
        return set()
    if connection.vendor != "postgresql":
        newer = set(
            MarginSnapshot.objects.filter(
                period=snapshots[0]["period"],
                customer_id__in=[v["customer_id"] for v in snapshots],
                as_of__gt=as_of,
            ).values_list("customer_id", flat=True)
        )
        fresh = [v for v in snapshots if v["customer_id"] not in newer]
        MarginSnapshot.objects.bulk_create(
            [MarginSnapshot(**values) for values in fresh],
            update_conflicts=True,
            unique_fields=["customer", "period"],
            update_fields=SNAPSHOT_UPDATE_FIELDS,
            batch_size=500,
        )
        return {v["customer_id"] for v in fresh}
    with connection.cursor() as cursor:
        cursor.execute(_SNAPSHOT_STAGING)
        with cursor.cursor.copy(
            f"COPY pricing_snapshot_staging ({_SNAPSHOT_COLUMNS}) FROM STDIN"
        ) as copy:
            for values in snapshots:
                copy.write_row(
                    [
                        Jsonb(values[f.attname])
                        if f.attname in _SNAPSHOT_JSON
                        else values[f.attname]
                        for f in _SNAPSHOT_FIELDS
                    ]
                )
        cursor.execute(_SNAPSHOT_UPSERT)
        written = {row[0] for row in cursor.fetchall()}
        # Inside an outer transaction ON COMMIT has not fired yet: empty it by hand.
        cursor.execute("DELETE FROM pricing_snapshot_staging")
    return written


def _lock_period(period: date) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x1BF1, period.toordinal()])


def _write(
    *, period: date, cps: Sequence[CustomerPeriod], figures: list[MarginFigures], as_of: datetime
) -> tuple[list[int], int, int]:
    """Upsert snapshots and move flags; returns (raised flag ids, cleared, flagged)."""
    floor = margin_floor()
    desired = {fig.customer.id: flag_desired(figures=fig, floor=floor) for fig in figures}
    insights: dict[int, dict[str, Any]] = {}
    if any(desired.values()):
        reference = reference_plan()
        for fig in figures:
            if desired[fig.customer.id]:
                insights[fig.customer.id] = insights_compute(figures=fig, reference=reference)
    ids = [cp.customer.id for cp in cps]
    snapshots = [
        _snapshot(fig, desired[fig.customer.id], insights.get(fig.customer.id, {}))
        for fig in figures
    ]
    now = timezone.now()
    with transaction.atomic():
        _lock_period(period)
        written = _snapshots_upsert(snapshots, as_of=as_of)
        # Customers a newer computation got to first are left as it left them.
        newer = {f.customer.id for f in figures} - written
        inactive = set(ids) - {f.customer.id for f in figures}
        if inactive:
            newer |= set(
                MarginSnapshot.objects.filter(
                    period=period, customer_id__in=inactive, as_of__gt=as_of
                ).values_list("customer_id", flat=True)
            )
        fresh = [f for f in figures if f.customer.id not in newer]
        active = {
            f.customer_id: f
            for f in MarginFlag.objects.select_for_update().filter(
                period=period, customer_id__in=ids, cleared_at__isnull=True
            )
        }
        by_customer = {f.customer.id: f for f in fresh}
        to_clear: list[MarginFlag] = []
        to_raise: list[MarginFlag] = []
        flagged = 0
        for customer_id in ids:
            if customer_id in newer:
                continue
            want = desired.get(customer_id, "")
            current = active.get(customer_id)
            flagged += bool(want)
            if current is not None and current.kind == want:
                continue
            if current is not None:
                current.cleared_at = now
                to_clear.append(current)
            if want:
                fig = by_customer[customer_id]
                to_raise.append(
                    MarginFlag(
                        customer_id=customer_id,
                        period=period,
                        kind=want,
                        is_flat=fig.is_flat,
                        raised_at=now,
                        revenue=fig.revenue,
                        cost=fig.cost,
                        margin=fig.margin,
                        margin_ratio=fig.margin_ratio,
                        previous_kind=current.kind if current is not None else "",
                    )
                )
        MarginFlag.objects.bulk_update(to_clear, ["cleared_at"], batch_size=500)
        raised = MarginFlag.objects.bulk_create(to_raise, batch_size=500)
        raised_ids = [f.pk for f in raised]
        if raised_ids:
            transaction.on_commit(lambda: flags_notify(flag_ids=raised_ids), robust=True)
    return raised_ids, len(to_clear), flagged


def margins_refresh(
    *,
    period: date | None = None,
    as_of: datetime | None = None,
    open_only: bool = False,
    chunk_size: int = REFRESH_CHUNK,
) -> RefreshResult:
    """Recompute the margin snapshots of a period (default: the month of `as_of`, which
    defaults to now) and raise or clear flags. `open_only`: only customers whose billing
    period is still open at `as_of`."""
    started = time_module.perf_counter()
    as_of = (as_of or timezone.now()).astimezone(UTC)
    month = selectors.month_start(period or as_of.date())
    result = RefreshResult(period=month, as_of=as_of)
    periods = [
        cp
        for cp in customer_periods(period=month)
        if day_start(cp.start) < as_of and (not open_only or day_start(cp.end) > as_of)
    ]
    # Usage is read for chunk_size customers at a time (one pass over their rollups per
    # piece of the period), then rated and written. On PostgreSQL the next chunks are
    # read on other connections meanwhile. (Inside a transaction another connection
    # would not see its writes: then everything is read in line.)
    chunks = [periods[i : i + chunk_size] for i in range(0, len(periods), chunk_size)]
    in_line = connection.vendor != "postgresql" or connection.in_atomic_block
    ahead = 0 if in_line else READ_AHEAD
    with ThreadPoolExecutor(max_workers=max(ahead, 1)) as readers:
        pending = [readers.submit(_read, chunk, as_of) for chunk in chunks[:ahead]]
        for index, chunk in enumerate(chunks):
            if ahead:
                reads = pending.pop(0).result()
                if index + ahead < len(chunks):
                    pending.append(readers.submit(_read, chunks[index + ahead], as_of))
            else:
                reads = margins_read(periods=chunk, as_of=as_of)
            figures = margins_compute(periods=chunk, as_of=as_of, reads=reads)
            raised, cleared, flagged = _write(period=month, cps=chunk, figures=figures, as_of=as_of)
            result.customers += len(figures)
            result.flagged += flagged
            result.raised += raised
            result.cleared += cleared
    result.seconds = time_module.perf_counter() - started
    return result


def _read(periods: list[CustomerPeriod], as_of: datetime) -> list[GroupUsage]:
    """margins_read on the reader thread's own connection, closed afterwards."""
    try:
        return margins_read(periods=periods, as_of=as_of)
    finally:
        connections.close_all()


def margins_refresh_open(*, as_of: datetime | None = None) -> list[RefreshResult]:
    """What beat runs hourly: every customer's open period. With anchor days after the
    1st, some open periods started last month."""
    as_of = (as_of or timezone.now()).astimezone(UTC)
    month = selectors.month_start(as_of.date())
    previous = selectors.previous_month(month)
    return [
        margins_refresh(period=month, as_of=as_of),
        margins_refresh(period=previous, as_of=as_of, open_only=True),
    ]
