"""The pricing management commands: import_cost_catalog, refresh_margins, margin_report,
simulate_plan."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from pricing.models import CostRate, MarginSnapshot
from tests.pricing.helpers import (
    LITELLM_FIXTURE,
    ev,
    store,
)

pytestmark = pytest.mark.django_db
D = Decimal


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_import_cost_catalog_reports_and_reruns_to_no_change() -> None:
    out, err = run("import_cost_catalog", "--litellm", str(LITELLM_FIXTURE))
    assert out.strip() == (
        "8 catalog entries: 6 models created, 0 changed, 0 unchanged, 2 skipped (no per-token "
        "price, or filtered out); 21 rates written."
    )
    assert "models" in err  # the tqdm progress bar
    out, _ = run("import_cost_catalog", "--litellm", str(LITELLM_FIXTURE))
    assert "0 models created, 0 changed, 6 unchanged" in out and "0 rates written" in out
    assert CostRate.objects.count() == 21


def test_import_cost_catalog_filters() -> None:
    out, _ = run("import_cost_catalog", "--litellm", str(LITELLM_FIXTURE), "--provider", "openai")
    assert "3 models created" in out and "5 skipped" in out
    out, _ = run(
        "import_cost_catalog",
        "--litellm",
        str(LITELLM_FIXTURE),
        "--model",
        "claude-haiku-4-5",
        "gemini-2.5-flash",
    )
    assert "2 models created" in out
    with pytest.raises(CommandError, match="--litellm"):
        run("import_cost_catalog", "--litellm", "/nonexistent/prices.json")


@pytest.fixture
def april(april_usage: None) -> None:
    store(ev("metered", "2026-04-04 11:00", "mystery-9b", output_tokens=10))  # no rate


def test_refresh_then_report_in_three_formats(april: None) -> None:
    out, _ = run("refresh_margins", "--period", "2026-04", "--as-of", "2026-05-01")
    assert out.startswith("2026-04: 3 customers as of 2026-05-01 00:00 UTC, 1 flagged (1 raised")
    assert MarginSnapshot.objects.count() == 3

    table, _ = run("margin_report", "--period", "2026-04")
    lines = table.splitlines()
    assert lines[2].split()[:3] == ["customer", "plan", "flat"]
    body = [line.split()[0] for line in lines[4:]]
    assert body == ["heavy", "metered", "light", "TOTAL"]
    assert "negative_margin" in lines[4] and "-20.00" in lines[4] and "yes" in lines[4]
    assert "80.00" in lines[-1] and "61.00" in lines[-1] and "19.00" in lines[-1]
    assert lines[5].split()[-2:] == ["1", "gpt-4o"]  # metered: one uncosted request

    text, _ = run("margin_report", "--period", "2026-04", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["customer"], r["margin"], r["flag"]) for r in rows] == [
        ("heavy", "-20.000000", "negative_margin"),
        ("metered", "10.000000", ""),
        ("light", "29.000000", ""),
    ]
    report = json.loads(
        run("margin_report", "--period", "2026-04", "--format", "json", "--flagged")[0]
    )
    assert [c["customer"] for c in report["customers"]] == ["heavy"]
    assert report["totals"]["margin"] == "-20.000000"


def test_refresh_margins_default_is_the_open_periods(april: None) -> None:
    out, _ = run("refresh_margins", "--as-of", "2026-04-10T12:00:00Z")
    assert out.startswith("2026-04: 3 customers as of 2026-04-10 12:00 UTC")


def test_simulate_plan(april: None) -> None:
    table, _ = run("simulate_plan", "--plan", "payg", "--period", "2026-04")
    assert "2026-04 re-rated on payg v1" in table
    assert "Negative margins: 1 then, 0 now." in table
    heavy = next(line for line in table.splitlines() if line.startswith("heavy"))
    assert "100.00" in heavy and "out of negative" in heavy
    result = json.loads(
        run("simulate_plan", "--plan", "payg", "--period", "2026-04", "--format", "json")[0]
    )
    assert result["out_of_negative"] == ["heavy"]
    with pytest.raises(CommandError, match="plan: no plan 'nope'"):
        run("simulate_plan", "--plan", "nope", "--period", "2026-04")
    with pytest.raises(CommandError, match="--period: must be YYYY-MM"):
        run("simulate_plan", "--plan", "payg", "--period", "April")
