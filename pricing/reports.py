"""How margins and simulations are shown: JSON-ready dicts (API, --format json), CSV and
a terminal table. Amounts are decimal strings; nothing here is a float."""

from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pricing.models import CostRate, MarginFlag, MarginSnapshot
from pricing.selectors import MarginReport
from pricing.simulate import SimulationResult

SHOWN = Decimal("0.000001")
CENTS = Decimal("0.01")


def amount(value: Decimal | None, places: Decimal = SHOWN) -> str | None:
    if value is None:
        return None
    return format(Decimal(value).quantize(places, rounding=ROUND_HALF_UP), "f")


def cost_rate_dict(rate: CostRate) -> dict[str, Any]:
    per_million = rate.usd_per_million_tokens
    per_second = rate.usd_per_gpu_second
    return {
        "id": rate.pk,
        "kind": rate.kind,
        "model": rate.model,
        "provider": rate.provider,
        "token_class": rate.token_class,
        "usd_per_token": None
        if rate.usd_per_token is None
        else format(rate.usd_per_token.normalize(), "f"),
        "usd_per_million_tokens": None if per_million is None else format(per_million, "f"),
        "hardware": rate.hardware,
        "gpu_hour_rate": None if rate.gpu_hour_rate is None else format(rate.gpu_hour_rate, "f"),
        "utilization": None if rate.utilization is None else format(rate.utilization, "f"),
        "usd_per_gpu_second": None
        if per_second is None
        else format(per_second.quantize(Decimal("1e-15")), "f"),
        "effective_from": rate.effective_from.isoformat(),
        "source": rate.source,
        "note": rate.note,
    }


def margin_row_dict(snapshot: MarginSnapshot, flag: MarginFlag | None) -> dict[str, Any]:
    return {
        "customer": snapshot.customer.external_id,
        "name": snapshot.customer.name,
        "currency": snapshot.currency,
        "plans": snapshot.plan_codes,
        "flat_subscription": snapshot.is_flat,
        "period_start": snapshot.period_start.isoformat(),
        "period_end": snapshot.period_end.isoformat(),
        "open": snapshot.is_open,
        "as_of": snapshot.as_of.isoformat(),
        "revenue": amount(snapshot.revenue),
        "revenue_basis": snapshot.revenue_basis,
        "cost": amount(snapshot.cost),
        "token_cost": amount(snapshot.token_cost),
        "gpu_cost": amount(snapshot.gpu_cost),
        "margin": amount(snapshot.margin),
        "margin_ratio": amount(snapshot.margin_ratio),
        "projected_revenue": amount(snapshot.projected_revenue),
        "projected_cost": amount(snapshot.projected_cost),
        "usage": {
            "requests": snapshot.requests,
            "input_tokens": snapshot.input_tokens,
            "cache_read_input_tokens": snapshot.cache_read_input_tokens,
            "output_tokens": snapshot.output_tokens,
            "gpu_seconds": amount(snapshot.gpu_seconds),
        },
        "uncosted": {
            "requests": snapshot.uncosted_requests,
            "tokens": snapshot.uncosted_tokens,
            "gpu_seconds": amount(snapshot.uncosted_gpu_seconds),
        },
        "flag": None
        if flag is None
        else {"kind": flag.kind, "raised_at": flag.raised_at.isoformat()},
        "breakdown": snapshot.breakdown,
        "insights": snapshot.insights,
    }


def margin_report_dict(report: MarginReport) -> dict[str, Any]:
    totals = dict(report.totals)
    for key in ("revenue", "cost", "margin", "margin_ratio"):
        totals[key] = amount(totals[key])
    return {
        "period": f"{report.period:%Y-%m}",
        "customers": [margin_row_dict(s, report.flags.get(s.customer_id)) for s in report.rows],
        "totals": totals,
    }


def _ratio(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{Decimal(value) * 100:.1f}%"


def _money(value: Decimal | None) -> str:
    return "—" if value is None else f"{Decimal(value).quantize(CENTS, rounding=ROUND_HALF_UP):,}"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


MARGIN_COLUMNS = [
    "customer",
    "plan",
    "flat",
    "revenue",
    "cost",
    "margin",
    "ratio",
    "flag",
    "uncosted",
    "top model",
]


def _margin_cells(snapshot: MarginSnapshot, flag: MarginFlag | None) -> list[str]:
    models = (snapshot.breakdown or {}).get("models") or []
    top = models[0]["model"] if models else ""
    return [
        snapshot.customer.external_id,
        ",".join(snapshot.plan_codes) or "—",
        "yes" if snapshot.is_flat else "",
        _money(snapshot.revenue) + ("" if snapshot.revenue_basis != "accrued" else "*"),
        _money(snapshot.cost),
        _money(snapshot.margin),
        _ratio(snapshot.margin_ratio),
        flag.kind if flag else "",
        f"{snapshot.uncosted_requests:,}" if snapshot.uncosted_requests else "",
        top,
    ]


def margin_report_table(report: MarginReport) -> str:
    rows = [_margin_cells(s, report.flags.get(s.customer_id)) for s in report.rows]
    t = report.totals
    rows.append(
        [
            f"TOTAL ({t['customers']} customers)",
            "",
            "",
            _money(t["revenue"]),
            _money(t["cost"]),
            _money(t["margin"]),
            _ratio(t["margin_ratio"]),
            f"{t['flagged']} flagged",
            f"{t['uncosted_requests']:,}" if t["uncosted_requests"] else "",
            "",
        ]
    )
    table = _table(MARGIN_COLUMNS, rows, right={3, 4, 5, 6, 8})
    note = (
        f"Period {report.period:%Y-%m}, worst margin first. * accrued (open period). "
        "Amounts in USD; cost is compute cost at the seller's rates."
    )
    return f"{note}\n\n{table}"


def margin_report_csv(report: MarginReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "customer",
            "plans",
            "flat_subscription",
            "currency",
            "revenue",
            "revenue_basis",
            "cost",
            "margin",
            "margin_ratio",
            "projected_revenue",
            "projected_cost",
            "flag",
            "uncosted_requests",
            "uncosted_tokens",
            "uncosted_gpu_seconds",
        ]
    )
    for s in report.rows:
        flag = report.flags.get(s.customer_id)
        writer.writerow(
            [
                s.customer.external_id,
                " ".join(s.plan_codes),
                "true" if s.is_flat else "false",
                s.currency,
                amount(s.revenue),
                s.revenue_basis,
                amount(s.cost),
                amount(s.margin),
                amount(s.margin_ratio) or "",
                amount(s.projected_revenue) or "",
                amount(s.projected_cost) or "",
                flag.kind if flag else "",
                s.uncosted_requests,
                s.uncosted_tokens,
                amount(s.uncosted_gpu_seconds),
            ]
        )
    return out.getvalue()


def simulation_dict(result: SimulationResult) -> dict[str, Any]:
    totals = result.totals()
    for key in ("revenue_then", "revenue_now", "cost", "margin_then", "margin_now"):
        totals[key] = amount(totals[key])
    return {
        "plan": {"code": result.plan.code, "version": result.plan.version},
        "period": f"{result.period:%Y-%m}",
        "customers": [
            {
                "customer": r.customer,
                "plans_then": r.plans_then,
                "flat_then": r.flat_then,
                "revenue_then": amount(r.revenue_then),
                "revenue_now": amount(r.revenue_now),
                "cost": amount(r.cost),
                "margin_then": amount(r.margin_then),
                "margin_now": amount(r.margin_now),
                "moved": r.moved,
                "uncosted_requests": r.uncosted_requests,
            }
            for r in result.rows
        ],
        "into_negative": [r.customer for r in result.rows if r.moved == "into_negative"],
        "out_of_negative": [r.customer for r in result.rows if r.moved == "out_of_negative"],
        "skipped": result.skipped,
        "totals": totals,
    }


def simulation_table(result: SimulationResult) -> str:
    headers = [
        "customer",
        "plan then",
        "revenue then",
        "revenue now",
        "cost",
        "margin then",
        "margin now",
        "moved",
    ]
    rows = [
        [
            r.customer,
            ",".join(r.plans_then),
            _money(r.revenue_then),
            _money(r.revenue_now),
            _money(r.cost),
            _money(r.margin_then),
            _money(r.margin_now),
            (r.moved or "").replace("_", " "),
        ]
        for r in result.rows
    ]
    t = result.totals()
    rows.append(
        [
            f"TOTAL ({t['customers']})",
            "",
            _money(t["revenue_then"]),
            _money(t["revenue_now"]),
            _money(t["cost"]),
            _money(t["margin_then"]),
            _money(t["margin_now"]),
            f"+{t['into_negative']} / -{t['out_of_negative']} negative",
        ]
    )
    head = (
        f"{result.period:%Y-%m} re-rated on {result.plan.code} v{result.plan.version}, "
        f"worst new margin first. Negative margins: {t['negative_then']} then, "
        f"{t['negative_now']} now."
    )
    if result.skipped:
        head += f" Skipped {len(result.skipped)} (currency)."
    return f"{head}\n\n{_table(headers, rows, right={2, 3, 4, 5, 6})}"
