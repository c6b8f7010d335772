"""`attackmap feedback`: accept, reject or correct a mapping, opt a rule out, read the telemetry."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mitre.assemble import resolve_catalog
from mitre.cli.common import WorkflowsOpt, fail, load_config
from mitre.cli.enrich import _load_one
from mitre.enrich import PROVENANCE_FIELD
from mitre.feedback.loop import FeedbackLoop, open_feedback, rule_of
from mitre.feedback.models import Feedback, OptOut, Verdict
from mitre.feedback.store import telemetry as rule_telemetry

app = typer.Typer(help="The analyst feedback loop: verdicts, opt-outs, telemetry.", no_args_is_help=True)
AlertArg = Annotated[str, typer.Argument(metavar="ALERT", help="the enriched alert (JSON, or - for stdin)")]
AnalystOpt = Annotated[str, typer.Option("--analyst", help="who says so (default: the login name)")]
CommentOpt = Annotated[str | None, typer.Option("--comment", help="why")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="tenant (default: none)")]


def _loop(workflows: Path | None) -> FeedbackLoop:
    config, env = load_config(workflows)
    return open_feedback(config.feedback, env)


def _judge(
    alert_path: str,
    verdict: Verdict,
    techniques: list[str],
    analyst: str | None,
    comment: str | None,
    workflows: Path | None,
) -> None:
    alert = _load_one(alert_path)
    provenance = alert.get(PROVENANCE_FIELD)
    if not isinstance(provenance, dict) or not provenance.get("mapping_key"):
        raise fail(f"{alert_path}: no attackmap.mapping_key — enrich the alert (with a cache or feedback) first")
    config, env = load_config(workflows)
    catalog = resolve_catalog(config, env)
    resolved = [catalog.resolve(t) for t in techniques]
    if unknown := [r.requested for r in resolved if r.active_id is None]:
        raise fail(f"not techniques of ATT&CK {catalog.version}: {', '.join(unknown)}")
    rule_id, rule_name, alert_id = rule_of(alert)
    stored = open_feedback(config.feedback, env).corrections.add(
        Feedback(
            mapping_key=provenance["mapping_key"],
            tenant=provenance.get("tenant"),
            verdict=verdict,
            techniques=tuple(dict.fromkeys(r.active_id for r in resolved if r.active_id)),
            analyst=analyst or getpass.getuser(),
            comment=comment,
            alert_id=alert_id,
            rule_id=rule_id,
            rule_name=rule_name,
            alert=alert,
        )
    )
    Console(stderr=True).print(
        f"stored: {stored.verdict} {', '.join(stored.techniques)} for {stored.mapping_key[:16]}…"
    )


@app.command()
def accept(
    alert: AlertArg, analyst: AnalystOpt = "", comment: CommentOpt = None, workflows: WorkflowsOpt = None
) -> None:
    """The mapping is right (counts towards the rule's precision)."""
    loaded = _load_one(alert)
    mapped = [t["id"] for t in (loaded.get(PROVENANCE_FIELD) or {}).get("techniques", [])]
    _judge(alert, "accept", mapped, analyst or None, comment, workflows)


@app.command()
def reject(
    alert: AlertArg, analyst: AnalystOpt = "", comment: CommentOpt = None, workflows: WorkflowsOpt = None
) -> None:
    """The mapping is wrong and nothing replaces it: the same alert is next mapped to no technique."""
    _judge(alert, "reject", [], analyst or None, comment, workflows)


@app.command()
def correct(
    alert: AlertArg,
    technique: Annotated[list[str], typer.Option("--technique", "-t", help="a right technique (repeatable)")],
    analyst: AnalystOpt = "",
    comment: CommentOpt = None,
    workflows: WorkflowsOpt = None,
) -> None:
    """These are the right techniques: the same alert is next mapped to them, at once."""
    _judge(alert, "correct", technique, analyst or None, comment, workflows)


@app.command("opt-out")
def opt_out(
    rule_id: Annotated[str, typer.Argument(help="the rule id (or a tool event's type)")],
    tenant: TenantOpt = None,
    undo: Annotated[bool, typer.Option("--undo", help="opt the rule back in")] = False,
    analyst: AnalystOpt = "",
    workflows: WorkflowsOpt = None,
) -> None:
    """Stop (or resume) mapping a rule's alerts for a tenant."""
    _loop(workflows).corrections.set_opt_out(
        OptOut(tenant=tenant, rule_id=rule_id, opted_out=not undo, by=analyst or getpass.getuser())
    )


@app.command()
def telemetry(
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    workflows: WorkflowsOpt = None,
) -> None:
    """Skip / map / extend counts per rule and its precision from analysts' verdicts."""
    loop = _loop(workflows)
    assert loop.log is not None
    rows, totals = rule_telemetry(loop.log, loop.corrections, tenant)
    if as_json:
        payload = {"totals": totals, "rules": [r.model_dump() | {"precision": r.precision} for r in rows]}
        sys.stdout.buffer.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
        return
    table = Table(
        title=f"decisions and feedback ({tenant or 'no tenant'}): " + ", ".join(f"{k} {v}" for k, v in totals.items())
    )
    for column in ("rule", "skip", "map", "extend", "accepted", "rejected", "corrected", "precision", "opted out"):
        table.add_column(column)
    for r in rows:
        precision = "—" if r.precision is None else f"{r.precision:.2f}"
        cells = (
            r.rule,
            r.skip,
            r.map,
            r.extend,
            r.accepted,
            r.rejected,
            r.corrected,
            precision,
            "yes" if r.opted_out else "",
        )
        table.add_row(*(str(c) for c in cells))
    Console().print(table)
