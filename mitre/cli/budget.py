"""`attackmap budget status|kill|resume`: LLM spend from the ledger, and the manual kill switch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mitre.budget.budget import Budget
from mitre.budget.ledger import open_ledger
from mitre.budget.report import spend_chart_html, status_report
from mitre.cli.common import WorkflowOpt, WorkflowsOpt, fail, load_config

app = typer.Typer(help="LLM spend: status, kill switch, resume.", no_args_is_help=True)
out = Console()


def _budget(workflows: Path | None, workflow: str | None) -> Budget:
    config, env = load_config(workflows)
    try:
        wf = config.workflow(workflow)
        ledger = open_ledger(wf.budget, env.home)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    return Budget(ledger, wf.budget, wf.name, sync_s=0)


def _money(v: float | None) -> str:
    return "—" if v is None else f"${v:,.4f}"


@app.command()
def status(
    workflows: WorkflowsOpt = None,
    workflow: WorkflowOpt = None,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="write a self-contained HTML chart of spend over time")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Spend today and this month, burn rate, projection, cache hit rate, calls avoided."""
    budget = _budget(workflows, workflow)
    report = status_report(budget)
    if chart is not None:
        if chart.suffix.lower() == ".png":
            raise fail("PNG charts need matplotlib, which is not installed; use an .html path")
        chart.write_text(spend_chart_html(report), encoding="utf-8")
    if as_json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    s = report.state
    table = Table(title=f"attackmap budget — {report.workflow}", show_header=False)
    style = {"ok": "green", "soft": "yellow", "killed": "bold red"}[s.state]
    table.add_row("state", f"[{style}]{s.state}[/] ({s.reason}{': ' + s.detail if s.detail else ''})")
    table.add_row("spend today / daily limit", f"{_money(s.spend_day)} / {_money(report.daily_usd)}")
    table.add_row("spend this month / monthly limit", f"{_money(s.spend_month)} / {_money(report.monthly_usd)}")
    table.add_row("burn rate (last 6 h)", f"{_money(report.burn_usd_per_hour)}/h")
    table.add_row("projected month end", _money(report.projected_month_usd))
    table.add_row("LLM calls this month", str(report.llm_calls_month))
    table.add_row(
        "tokens (in / out / cache write / cache read)",
        " / ".join(str(report.tokens_month.get(k, 0)) for k in ("input", "output", "cache_write", "cache_read")),
    )
    rate = report.cache_hit_rate
    table.add_row("cache hit rate", "—" if rate is None else f"{rate:.1%}")
    table.add_row("calls avoided by the hybrid rule", str(report.avoided_by_rule))
    table.add_row("calls avoided by the cache", str(report.avoided_by_cache))
    for reason, n in sorted(report.fallbacks.items()):
        table.add_row(f"local fallbacks: {reason}", str(n))
    if chart is not None:
        table.add_row("chart", str(chart))
    out.print(table)


@app.command()
def kill(
    workflows: WorkflowsOpt = None,
    workflow: WorkflowOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="recorded in the ledger")] = "manual kill",
) -> None:
    """Stop LLM calls now (local mapper only) until `attackmap budget resume`."""
    budget = _budget(workflows, workflow)
    budget.kill(reason)
    out.print(f"[bold red]killed[/]: workflow {budget.workflow} maps with the local mapper until resumed")


@app.command()
def resume(workflows: WorkflowsOpt = None, workflow: WorkflowOpt = None) -> None:
    """Lift a kill or a tripped hard limit (recorded in the ledger)."""
    budget = _budget(workflows, workflow)
    budget.resume()
    state = budget.check()
    note = " (spend is over a hard limit: resumed for the rest of this period)" if state.state != "ok" else ""
    out.print(f"[green]resumed[/]: workflow {budget.workflow}, state {state.state}{note}")
