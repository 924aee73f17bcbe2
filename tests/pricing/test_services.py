"""pricing.services: cost rates (validation, no rewriting of past cost), the LiteLLM
catalog import (fixture, the whole real file, an event mix priced through it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import Source
from metering.rollup import usage_rollup_fold
from metering.services import events_ingest
from pricing.models import CostRate
from pricing.services import (
    RATES_BEGIN,
    RateError,
    cost_rate_create,
    cost_rates_import_litellm,
    litellm_catalog_read,
    margins_refresh,
)
from tests.pricing.helpers import (
    LITELLM_FIXTURE,
    LITELLM_REAL,
    at,
    customer,
    plan,
    subscribe,
)

pytestmark = pytest.mark.django_db
D = Decimal
NOW = at("2026-04-20 10:30")


def rate(**fields: object) -> tuple[CostRate, bool]:
    fields.setdefault("effective_from", RATES_BEGIN)
    return cost_rate_create(now=NOW, **fields)  # type: ignore[arg-type]


# --- cost rates ----------------------------------------------------------------------------


def test_per_million_is_stored_per_token_exactly() -> None:
    created, new = rate(
        kind="token", model="gpt-4o-mini", token_class="cache_read", usd_per_million_tokens="0.075"
    )
    assert new and created.usd_per_token == D("0.000000075")
    assert created.usd_per_million_tokens == D("0.075")
    again, new = rate(
        kind="token", model="gpt-4o-mini", token_class="cache_read", usd_per_token="0.000000075"
    )
    assert (again.pk, new) == (created.pk, False)  # identical: the stored one


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "tokens"}, "kind"),
        ({"kind": "token", "token_class": "input", "usd_per_token": "1"}, "model"),
        (
            {"kind": "token", "model": "m", "token_class": "prompt", "usd_per_token": "1"},
            "token_class",
        ),
        (
            {"kind": "token", "model": "m", "token_class": "input", "usd_per_token": 0.1},
            "usd_per_token",
        ),
        (
            {"kind": "token", "model": "m", "token_class": "input", "usd_per_token": "-1"},
            "usd_per_token",
        ),
        ({"kind": "token", "model": "m", "token_class": "input"}, "usd_per_token"),
        (
            {"kind": "token", "model": "m", "token_class": "input", "usd_per_token": "1e-19"},
            "usd_per_token",
        ),
        ({"kind": "gpu", "gpu_hour_rate": "2"}, "hardware"),
        ({"kind": "gpu", "hardware": "h100"}, "gpu_hour_rate"),
        (
            {"kind": "gpu", "hardware": "h100", "gpu_hour_rate": "2", "utilization": "1.2"},
            "utilization",
        ),
        (
            {"kind": "gpu", "hardware": "h100", "gpu_hour_rate": "2", "utilization": "0"},
            "utilization",
        ),
        (
            {
                "kind": "token",
                "model": "m",
                "token_class": "input",
                "usd_per_token": "1",
                "effective_from": datetime(2026, 4, 1),
            },
            "effective_from",
        ),
    ],
)
def test_bad_rates_are_refused_naming_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(RateError) as raised:
        rate(**fields)
    assert field in raised.value.errors, raised.value.errors
    assert not CostRate.objects.exists()


def test_gpu_rate_defaults_to_full_utilization() -> None:
    created, _ = rate(kind="gpu", hardware="l40s", gpu_hour_rate="1.80")
    assert created.utilization == 1
    assert created.usd_per_gpu_second == D("0.0005")


def test_a_rate_in_force_cannot_be_superseded_in_the_past() -> None:
    rate(kind="gpu", hardware="h100", gpu_hour_rate="2.99", utilization="0.6")
    with pytest.raises(RateError, match="rewrite the cost of past usage"):
        rate(
            kind="gpu",
            hardware="h100",
            gpu_hour_rate="2.49",
            utilization="0.6",
            effective_from=at("2026-04-01 00:00"),
        )
    # From the current hour on is fine, and so is a first rate of another key in the past.
    rate(kind="gpu", hardware="h100", gpu_hour_rate="2.49", effective_from=at("2026-04-20 10:00"))
    rate(kind="gpu", hardware="a100", gpu_hour_rate="1.29", effective_from=at("2026-01-01 00:00"))
    with pytest.raises(RateError, match="already starts then"):
        rate(kind="gpu", hardware="a100", gpu_hour_rate="1.30", effective_from=at("2026-01-01"))


# --- the LiteLLM catalog --------------------------------------------------------------------


def test_import_the_fixture_then_a_rerun_changes_nothing() -> None:
    catalog = litellm_catalog_read(LITELLM_FIXTURE)
    seen: list[int] = []
    report = cost_rates_import_litellm(catalog=catalog, now=NOW, progress=seen.append)
    # 8 entries: sample_spec and an image model have no per-token price.
    assert (report.entries, report.created, report.changed, report.skipped) == (8, 6, 0, 2)
    # gpt-4o, gpt-4o-mini, o3-mini: 3 classes; the Claudes: 4; gemini-2.5-flash: 4.
    assert report.rates_created == 21 and seen[-1] == 6
    gpt4o = {r.token_class: r.usd_per_token for r in CostRate.objects.filter(model="gpt-4o")}
    assert gpt4o == {"input": D("0.0000025"), "cache_read": D("0.00000125"), "output": D("0.00001")}
    assert CostRate.objects.filter(model="gpt-4o").first().source == "litellm:openai"
    assert set(CostRate.objects.values_list("effective_from", flat=True)) == {RATES_BEGIN}

    again = cost_rates_import_litellm(catalog=catalog, now=NOW)
    assert (again.created, again.changed, again.unchanged, again.rates_created) == (0, 0, 6, 0)
    assert CostRate.objects.count() == 21


def test_a_changed_price_becomes_a_new_rate_from_the_next_hour() -> None:
    catalog = litellm_catalog_read(LITELLM_FIXTURE)
    cost_rates_import_litellm(catalog=catalog, now=NOW)
    catalog["gpt-4o"]["output_cost_per_token"] = D("1.2e-05")
    report = cost_rates_import_litellm(catalog=catalog, now=NOW)
    assert (report.created, report.changed, report.unchanged, report.rates_created) == (0, 1, 5, 1)
    outputs = CostRate.objects.filter(model="gpt-4o", token_class="output").order_by(
        "effective_from"
    )
    assert [(r.effective_from, r.usd_per_token) for r in outputs] == [
        (RATES_BEGIN, D("0.00001")),
        (at("2026-04-20 11:00"), D("0.000012")),
    ]
    # An explicit past instant for a changed price is refused, not applied.
    catalog["gpt-4o"]["output_cost_per_token"] = D("1.3e-05")
    refused = cost_rates_import_litellm(
        catalog=catalog, now=NOW, effective_from=at("2026-04-01 00:00")
    )
    assert refused.rates_created == 0 and "rewrite past cost" in refused.refused[0]


def test_import_filters_by_provider_and_model() -> None:
    catalog = litellm_catalog_read(LITELLM_FIXTURE)
    report = cost_rates_import_litellm(catalog=catalog, providers=["anthropic"], now=NOW)
    assert (report.created, report.skipped) == (2, 6)
    report = cost_rates_import_litellm(catalog=catalog, models=["gpt-4o", "o3-mini"], now=NOW)
    assert (report.created, report.unchanged, report.skipped) == (2, 0, 6)
    assert set(CostRate.objects.values_list("model", flat=True)) == {
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "gpt-4o",
        "o3-mini",
    }


@pytest.mark.skipif(
    not LITELLM_REAL.exists(),
    reason=f"the real LiteLLM catalog is not at {LITELLM_REAL} (../shared/data)",
)
def test_import_the_whole_real_catalog() -> None:
    catalog = litellm_catalog_read(LITELLM_REAL)
    assert len(catalog) == 4878
    report = cost_rates_import_litellm(catalog=catalog, now=NOW)
    assert report.entries == 4878
    assert report.created + report.skipped == 4878 and report.changed == 0
    assert report.created > 3500 and report.rates_created == CostRate.objects.count()
    # Spot checks against the published prices.
    sonnet = {
        r.token_class: r.usd_per_token for r in CostRate.objects.filter(model="claude-sonnet-4-5")
    }
    assert sonnet == {
        "input": D("0.000003"),
        "cache_read": D("0.0000003"),
        "cache_write": D("0.00000375"),
        "output": D("0.000015"),
    }
    # Float noise beyond 18 places is dropped: 2.0000000000000002E-7 is $0.20 per million.
    noisy = CostRate.objects.get(model="novita/stepfun/step-3.7-flash", token_class="input")
    assert noisy.usd_per_token == D("0.0000002")
    again = cost_rates_import_litellm(catalog=catalog, now=NOW)
    assert (again.created, again.changed, again.rates_created) == (0, 0, 0)


def test_an_event_mix_priced_through_the_catalog_for_three_real_models() -> None:
    cost_rates_import_litellm(catalog=litellm_catalog_read(LITELLM_FIXTURE), now=NOW)
    subscribe(customer("acme"), plan("unlimited", flat_fee="30"))
    source = Source.objects.create(name="assistant")
    when = timezone.now().astimezone(UTC).replace(microsecond=0) - timedelta(hours=2)
    stamp = when.isoformat().replace("+00:00", "Z")
    events = [
        {  # OpenAI chat usage
            "event_id": "e1",
            "customer": "acme",
            "timestamp": stamp,
            "model": "gpt-4o",
            "provider": "openai",
            "usage": {
                "prompt_tokens": 12_000,
                "prompt_tokens_details": {"cached_tokens": 8_000},
                "completion_tokens": 1_500,
            },
        },
        {  # Anthropic usage: input_tokens excludes the cached parts
            "event_id": "e2",
            "customer": "acme",
            "timestamp": stamp,
            "model": "claude-sonnet-4-5",
            "provider": "anthropic",
            "usage": {
                "input_tokens": 10_000,
                "cache_read_input_tokens": 30_000,
                "cache_creation_input_tokens": 10_000,
                "output_tokens": 2_000,
            },
        },
        {  # Gemini usageMetadata: thoughts are reasoning output
            "event_id": "e3",
            "customer": "acme",
            "timestamp": stamp,
            "model": "gemini-2.5-flash",
            "provider": "google",
            "usage": {
                "usageMetadata": {
                    "promptTokenCount": 100_000,
                    "cachedContentTokenCount": 20_000,
                    "candidatesTokenCount": 3_000,
                    "thoughtsTokenCount": 5_000,
                }
            },
        },
    ]
    outcome = events_ingest(source_id=source.id, body=json.dumps(events).encode(), cloudevents=None)
    assert outcome.accepted == 3, outcome.body()
    usage_rollup_fold()
    result = margins_refresh(period=when.date().replace(day=1), as_of=when + timedelta(hours=1))
    assert result.customers == 1
    from tests.pricing.helpers import snapshot

    s = snapshot(period=when.date().replace(day=1))
    by_model = {m["model"]: D(m["cost"]) for m in s.breakdown["models"]}
    # gpt-4o: 4,000 × 2.5e-6 + 8,000 × 1.25e-6 + 1,500 × 1e-5 = 0.035
    # claude-sonnet-4-5: 10,000 × 3e-6 + 30,000 × 3e-7 + 10,000 × 3.75e-6 + 2,000 × 1.5e-5
    #   = 0.03 + 0.009 + 0.0375 + 0.03 = 0.1065
    # gemini-2.5-flash: 80,000 × 3e-7 + 20,000 × 3e-8 + 3,000 × 2.5e-6 + 5,000 × 2.5e-6
    #   = 0.024 + 0.0006 + 0.0075 + 0.0125 = 0.0446
    assert by_model == {
        "gpt-4o": D("0.035"),
        "claude-sonnet-4-5": D("0.1065"),
        "gemini-2.5-flash": D("0.0446"),
    }
    assert s.cost == D("0.1861") and s.uncosted_requests == 0
    assert s.input_tokens == 12_000 + 50_000 + 100_000
    assert s.cache_read_input_tokens == 8_000 + 30_000 + 20_000


def test_import_reads_a_real_file_path(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "prices.json"
    path.write_text('{"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}')
    report = cost_rates_import_litellm(catalog=litellm_catalog_read(path), now=NOW)
    assert report.rates_created == 2
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a LiteLLM price catalog"):
        litellm_catalog_read(path)


def test_timestamps_on_rates_are_aware() -> None:
    created, _ = rate(
        kind="token", model="m", token_class="output", usd_per_token="1", effective_from=NOW.date()
    )
    assert created.effective_from == datetime(2026, 4, 20, tzinfo=UTC)
