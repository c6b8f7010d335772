"""`attackmap budget status`: spend, burn rate, projection to month end, cache and hybrid-rule savings,
fallbacks per reason, and a self-contained HTML chart."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mitre.budget.budget import Budget, BudgetState, month_bounds


@dataclass(frozen=True)
class StatusReport:
    workflow: str
    state: BudgetState
    daily_usd: float | None
    monthly_usd: float | None
    burn_usd_per_hour: float
    projected_month_usd: float
    llm_calls_month: int
    tokens_month: dict[str, int]
    cache_hits: int
    cache_misses: int
    avoided_by_rule: int
    avoided_by_cache: int
    fallbacks: dict[str, int]
    decisions: dict[str, int]
    daily_series: list[tuple[str, float]]

    @property
    def cache_hit_rate(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "state": self.state.state,
            "reason": self.state.reason,
            "detail": self.state.detail,
            "spend_today_usd": round(self.state.spend_day, 6),
            "spend_month_usd": round(self.state.spend_month, 6),
            "daily_limit_usd": self.daily_usd,
            "monthly_limit_usd": self.monthly_usd,
            "burn_usd_per_hour": round(self.burn_usd_per_hour, 6),
            "projected_month_usd": round(self.projected_month_usd, 4),
            "llm_calls_month": self.llm_calls_month,
            "tokens_month": self.tokens_month,
            "cache_hit_rate": self.cache_hit_rate,
            "calls_avoided_by_hybrid_rule": self.avoided_by_rule,
            "calls_avoided_by_cache": self.avoided_by_cache,
            "fallbacks": self.fallbacks,
            "decisions": self.decisions,
            "daily_spend": self.daily_series,
        }


def status_report(budget: Budget, burn_window_s: float = 6 * 3600) -> StatusReport:
    """Spend, burn rate (last `burn_window_s`), projection to month end, cache and hybrid-rule savings."""
    state = budget.check()
    now = budget.clock()
    month_start, month_end = month_bounds(now)
    events = budget.ledger.events(since=month_start, workflow=budget.workflow)
    calls = [e for e in events if e.kind == "llm_call"]
    window_start = max(month_start, now - burn_window_s)
    recent = sum(e.cost_usd for e in calls if e.ts >= window_start)
    hours = max((now - window_start) / 3600, 1 / 60)
    burn = recent / hours
    projected = state.spend_month + burn * (month_end - now) / 3600
    tokens = Counter[str]()
    for e in calls:
        tokens["input"] += e.input_tokens
        tokens["output"] += e.output_tokens
        tokens["cache_write"] += e.cache_write_tokens
        tokens["cache_read"] += e.cache_read_tokens
    cache = Counter[str]()
    decisions = Counter[str]()
    fallbacks = Counter[str]()
    for e in events:
        if e.kind == "cache":
            cache[e.reason] += e.count
        elif e.kind == "decision":
            decisions[f"{e.detail.get('decision')}:{e.reason}"] += e.count
        elif e.kind == "fallback":
            fallbacks[e.reason] += e.count
    avoided_by_rule = sum(n for k, n in decisions.items() if k.startswith("skip:"))
    per_day: dict[str, float] = {}
    for e in calls:
        day = datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d")
        per_day[day] = per_day.get(day, 0.0) + e.cost_usd
    return StatusReport(
        workflow=budget.workflow,
        state=state,
        daily_usd=budget.settings.daily_usd,
        monthly_usd=budget.settings.monthly_usd,
        burn_usd_per_hour=burn,
        projected_month_usd=projected,
        llm_calls_month=sum(1 for e in calls if not e.reason.startswith("error")),
        tokens_month=dict(tokens),
        cache_hits=cache["hit"],
        cache_misses=cache["miss"],
        avoided_by_rule=avoided_by_rule,
        avoided_by_cache=cache["hit"],
        fallbacks=dict(fallbacks),
        decisions=dict(decisions),
        daily_series=sorted(per_day.items()),
    )


def spend_chart_html(report: StatusReport) -> str:
    """A self-contained HTML page with an inline SVG chart of daily and cumulative spend (no scripts)."""
    from html import escape

    series = report.daily_series or [(datetime.now(UTC).strftime("%Y-%m-%d"), 0.0)]
    width, height, pad = 760, 320, 50
    cumulative: list[float] = []
    total = 0.0
    for _, usd in series:
        total += usd
        cumulative.append(total)
    top = max([*cumulative, report.monthly_usd or 0.0, 1e-9])
    n = len(series)
    step = (width - 2 * pad) / max(n, 1)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    bars = "".join(
        f'<rect x="{pad + i * step + step * 0.15:.1f}" y="{y(usd):.1f}" width="{step * 0.7:.1f}" '
        f'height="{height - pad - y(usd):.1f}" fill="#6baed6"><title>{escape(d)}: ${usd:.4f}</title></rect>'
        for i, (d, usd) in enumerate(series)
    )
    points = " ".join(f"{pad + (i + 0.5) * step:.1f},{y(v):.1f}" for i, v in enumerate(cumulative))
    limit = ""
    if report.monthly_usd:
        limit = (
            f'<line x1="{pad}" x2="{width - pad}" y1="{y(report.monthly_usd):.1f}" y2="{y(report.monthly_usd):.1f}" '
            f'stroke="#d62728" stroke-dasharray="6 4"/><text x="{width - pad}" y="{y(report.monthly_usd) - 4:.1f}" '
            f'text-anchor="end" font-size="11" fill="#d62728">monthly limit ${report.monthly_usd:g}</text>'
        )
    labels = "".join(
        f'<text x="{pad + (i + 0.5) * step:.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">'
        f"{escape(d[5:])}</text>"
        for i, (d, _) in enumerate(series)
        if n <= 31
    )
    rows = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
        for k, v in report.as_dict().items()
        if k != "daily_spend"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>attackmap LLM spend: {escape(report.workflow)}</title>
<style>body{{font-family:sans-serif;margin:24px}}td{{padding:2px 10px;border-bottom:1px solid #eee}}</style></head>
<body><h1>LLM spend — workflow {escape(report.workflow)}</h1>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"
 aria-label="daily spend bars and cumulative spend line">
<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>
<text x="{pad - 6}" y="{pad}" font-size="11" text-anchor="end">${top:.2f}</text>
<text x="{pad - 6}" y="{height - pad}" font-size="11" text-anchor="end">$0</text>
{bars}<polyline points="{points}" fill="none" stroke="#08519c" stroke-width="2"/>{limit}{labels}
</svg>
<p>Bars: spend per UTC day; line: cumulative spend this month.</p>
<table>{rows}</table></body></html>
"""
