"""`attackmap enrich` and `attackmap explain`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from mitre.batch import ChunkResult, default_workers, run_chunks, run_file
from mitre.cli.common import (
    EXIT_DEAD_LETTERS,
    EXIT_INTERNAL_ERRORS,
    EXIT_OK,
    CacheDirOpt,
    CatalogOpt,
    KnowledgeOpt,
    MapperOpt,
    NoCacheOpt,
    WorkflowOpt,
    WorkflowsOpt,
    err,
    fail,
    make_engine,
)
from mitre.cli.logs import log_path
from mitre.config import BUILT_IN
from mitre.engine import Engine
from mitre.failures import INTERNAL_REASONS, WORKER_DIED
from mitre.io.ndjson import dead_letter_record, open_input, open_output, read_lines
from mitre.models import AlertFeatures, DecisionKind, RunSummary

# Below this size a file is done before a progress bar could say anything useful.
PROGRESS_MIN_BYTES = 4 * 2**20


def _summary_table(summary: RunSummary, engine: Engine, output: str | None, dead_letter: str) -> Table:
    table = Table(title="attackmap enrich", show_header=False)
    workflows = engine.configuration.workflows
    table.add_row("workflows", workflows if workflows != BUILT_IN else f"[yellow]{workflows}[/]")
    table.add_row("alerts", str(summary.total))
    table.add_row("enriched (techniques found)", str(summary.enriched))
    if summary.no_technique:
        table.add_row("[yellow]mapped, no technique found[/]", str(summary.no_technique))
    for reason, n in sorted(summary.skipped.items()):
        table.add_row(f"skipped: {reason}", str(n))
    for reason, n in sorted(summary.dead_letter.items()):
        table.add_row(f"[red]dead-lettered: {reason}[/]", str(n))
    table.add_row("cache hits / misses", f"{summary.cache_hits} / {summary.cache_misses}")
    if summary.total:
        share = summary.remembered / summary.total
        table.add_row("answered by the outcome memo", f"{summary.remembered} ({share:.1%})")
    for tactic in engine.catalog.tactics:
        if summary.tactics.get(tactic.id):
            table.add_row(f"techniques in {tactic.name}", str(summary.tactics[tactic.id]))
    conf = engine.configuration
    knowledge = ", ".join(Path(s).name if "/" in s else s for s in conf.knowledge_sources) or "none"
    catalog_file = Path(conf.catalog_source.split(":", 1)[-1]).name
    table.add_row("mapper / catalog", f"{conf.mapper} / ATT&CK {conf.catalog_version} ({catalog_file})")
    table.add_row("knowledge base", knowledge)
    if summary.warnings:
        table.add_row("[yellow]warnings[/]", str(len(summary.warnings)))
    table.add_row("output", {None: "(discarded)", "-": "stdout"}.get(output, output or ""))
    table.add_row("dead letters", dead_letter if summary.dead_letter else "none")
    _llm_rows(table, summary)
    return table


def _llm_rows(table: Table, summary: RunSummary) -> None:
    """Who really answered: an LLM answer, the local mapper (cascade), or a fallback with its reason."""
    if set(summary.answered_by) <= {"local"} and not summary.fallbacks and not summary.llm:
        return
    for name, n in sorted(summary.answered_by.items()):
        table.add_row(f"answered by {name}", str(n))
    for reason, n in sorted(summary.fallbacks.items()):
        table.add_row(f"[yellow]local fallback: {reason}[/]", str(n))
    llm = summary.llm
    table.add_row(
        "LLM calls / input / output / cache write / cache read tokens",
        " / ".join(
            str(llm.get(k, 0))
            for k in ("calls", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
        ),
    )
    table.add_row("LLM cost", f"${summary.cost_usd:.4f}")
    if summary.injection_suspected:
        table.add_row("[red]prompt injection suspected[/]", str(summary.injection_suspected))


def run_enrich(
    engine: Engine,
    input_path: str,
    output: str | None,
    dead_letter: str,
    keep_skipped: bool = True,
    progress: bool = True,
    workers: int = 1,
    max_line_bytes: int | None = None,
) -> RunSummary:
    summary = RunSummary(warnings=list(engine.warnings))
    max_line_bytes = max_line_bytes or engine.config.limits.max_line_bytes
    total = Path(input_path).stat().st_size if input_path != "-" else None
    show = progress and total is not None and total >= PROGRESS_MIN_BYTES and err.is_terminal
    bar = Progress(
        TextColumn("enriching"),
        BarColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    )
    with open_output(output) as out, Path(dead_letter).open("wb") as dead, bar:
        task = bar.add_task("enrich", total=total)

        def write(result: ChunkResult) -> None:
            summary.merge(result.summary)
            result.write_output(out)
            dead.write(b"".join(dead_letter_record(o, input_path) for o in result.dead))
            bar.update(task, advance=result.consumed)

        if input_path == "-":
            with open_input(input_path) as src:
                deaths = run_chunks(engine, read_lines(src, max_line_bytes), keep_skipped, workers, write)
        else:
            spool = Path(output).parent if output not in (None, "-") else None
            deaths = run_file(
                engine, Path(input_path), keep_skipped, workers, write, spool_dir=spool, max_line_bytes=max_line_bytes
            )
    if deaths.broken_pools:
        summary.warnings.append(
            f"worker processes died {deaths.broken_pools} time(s) (exit {deaths.exit_codes or 'unknown'}); their work "
            f"was taken over, {deaths.abandoned} input(s) given up on (dead letters: {WORKER_DIED})"
        )
    if not summary.dead_letter:
        Path(dead_letter).unlink(missing_ok=True)
    return summary


def enrich(
    input_path: Annotated[str, typer.Argument(metavar="INPUT", help="NDJSON alerts, or - for stdin")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="enriched NDJSON, or - for stdout")] = "-",
    dead_letter: Annotated[
        str, typer.Option("--dead-letter", help="where rejected lines go, with line number and reason")
    ] = "dead-letter.ndjson",
    skipped: Annotated[str, typer.Option(help="keep: write skipped alerts with their reason; drop: omit")] = "keep",
    summary_json: Annotated[Path | None, typer.Option("--summary-json", help="also write the summary as JSON")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", help="processes (default: one per core)")] = 0,
    max_line_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-line-bytes",
            min=1024,
            help="longer lines are dead-lettered unread (default: limits.max_line_bytes in workflows.yaml, 16 MiB)",
        ),
    ] = None,
    workflows: WorkflowsOpt = None,
    workflow: WorkflowOpt = None,
    mapper: MapperOpt = None,
    catalog: CatalogOpt = None,
    knowledge_base: KnowledgeOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="backfill: send the LLM's share as one vendor batch (half price, hours)")
    ] = False,
    batch_state: Annotated[
        Path | None, typer.Option("--batch-state", help="resumable batch state (default: INPUT.batch-state.json)")
    ] = None,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="seconds between batch polls")] = 60.0,
) -> None:
    """Enrich NDJSON alerts with ATT&CK techniques and tactics (ECS threat.*)."""
    if input_path != "-" and not Path(input_path).is_file():
        raise fail(f"{input_path}: no such file")
    if skipped not in {"keep", "drop"}:
        raise fail("--skipped must be keep or drop")
    engine = make_engine(workflows, workflow, mapper, catalog, knowledge_base, no_cache, cache_dir)
    if batch:
        _prefill_from_batch(engine, input_path, batch_state, poll_interval)
    summary = run_enrich(
        engine,
        input_path,
        output,
        dead_letter,
        keep_skipped=skipped == "keep",
        workers=workers or default_workers(),
        max_line_bytes=max_line_bytes,
    )
    err.print(_summary_table(summary, engine, output, dead_letter))
    for warning in summary.warnings[len(engine.warnings) :]:
        err.print(f"[yellow]warning:[/] {warning}")
    if summary_json:
        data = summary.as_dict() | {
            "configuration": engine.configuration.as_dict(),
            "output": output,
            "dead_letter_file": dead_letter if summary.dead_letter else None,
        }
        summary_json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if summary.dead_letter:
        err.print(f"[red]{sum(summary.dead_letter.values())} line(s) dead-lettered to {dead_letter}[/]")
    if failed := sum(summary.dead_letter.get(reason, 0) for reason in INTERNAL_REASONS):
        err.print(f"[red]{failed} of them hit an internal error: tracebacks in {log_path()} under their error ids[/]")
        raise typer.Exit(EXIT_INTERNAL_ERRORS)
    raise typer.Exit(EXIT_DEAD_LETTERS if summary.dead_letter else EXIT_OK)


def _prefill_from_batch(engine: Engine, input_path: str, state: Path | None, poll_interval: float) -> None:
    """Answer the run's LLM share through the vendor's batch API before enriching (mitre.backfill)."""
    from mitre.backfill import prefill

    if input_path == "-":
        raise fail("--batch reads its input twice: give a file, not stdin")
    path = Path(input_path)
    try:
        done = prefill(
            engine, path, state or path.with_name(path.name + ".batch-state.json"), poll_interval_s=poll_interval
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    err.print(f"batch {done.batch_id or '(none needed)'}: {len(done.results)} mappings ready")


def _load_one(path: str) -> dict[str, Any]:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        lines = [line for line in raw.splitlines() if line.strip()]
        if not lines:
            raise fail(f"{path}: empty") from None
        try:
            doc = orjson.loads(lines[0])
        except orjson.JSONDecodeError as exc:
            raise fail(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise fail(f"{path}: expected one JSON object")
    return doc


def _risk_text(features: AlertFeatures) -> str:
    if features.risk_score is not None:
        risk = f"{features.risk_score:g}"
    elif features.risk_score_text is not None:
        risk = f"unreadable risk score {features.risk_score_text!r}"
    else:
        risk = "no risk score"
    return f"{risk} / {features.severity or 'no severity'}"


def explain(
    alert_path: Annotated[str, typer.Argument(metavar="ALERT", help="one alert as JSON (or the first line of NDJSON)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    workflows: WorkflowsOpt = None,
    workflow: WorkflowOpt = None,
    mapper: MapperOpt = None,
    catalog: CatalogOpt = None,
    knowledge_base: KnowledgeOpt = None,
) -> None:
    """Show features, the hybrid decision, candidate techniques and the evidence behind each."""
    alert = _load_one(alert_path)
    engine = make_engine(workflows, workflow, mapper, catalog, knowledge_base, True, None)
    try:
        explanation = engine.explain(alert)
    except ValueError as exc:
        raise fail(f"{alert_path}: {exc}") from exc
    mapping = explanation.mapping.result if explanation.mapping else None
    if as_json:
        payload = {
            "features": explanation.features.model_dump(),
            "decision": explanation.decision.model_dump(),
            "candidates": [c.model_dump() for c in mapping.candidates] if mapping else [],
            "techniques": [t.model_dump() for t in mapping.techniques] if mapping else [],
            "tactics_only": list(mapping.tactic_ids) if mapping else [],
            "issues": [i.model_dump() for i in explanation.mapping.issues] if explanation.mapping else [],
        }
        sys.stdout.buffer.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.console import Console

    out = Console()
    f = explanation.features
    feats = Table(title="features", show_header=False)
    tags = dict.fromkeys(r.technique_id or f"{r.tactic_id} (tactic only)" for r in f.rule_threat)
    for name, value in [
        ("rule", f"{f.rule_name} ({f.rule_type or 'no type'})" if f.rule_name else "none (raw event)"),
        ("rule tags", ", ".join(tags) or "none"),
        ("risk / severity", _risk_text(f)),
        ("platform", f.platform or "unknown"),
        *[(k, v if len(v) < 200 else v[:200] + "…") for k, v in f.fields.items()],
    ]:
        feats.add_row(name, value)
    out.print(feats)
    d = explanation.decision
    out.print(f"[bold]decision:[/] {d.kind.value} — {d.reason}: {d.detail}")
    for hit in d.indicators:
        out.print(
            f"  indicator [cyan]{hit.indicator_id}[/] on {hit.field}: {hit.matched!r} → {', '.join(hit.techniques)}"
        )
    skipped = d.kind is DecisionKind.SKIP
    if mapping and skipped:
        would = ", ".join(t.technique_id for t in mapping.techniques) or "no technique"
        out.print(f"[bold]not mapped[/] (skipped); a mapping would give: {would}")
    if mapping:
        cands = Table(title="candidates")
        for col in ("technique", "name", "confidence", "tactics", "would be chosen" if skipped else "chosen"):
            cands.add_column(col)
        chosen = {t.technique_id for t in mapping.techniques}
        for c in mapping.candidates:
            cands.add_row(
                c.technique_id,
                engine.catalog.techniques[c.technique_id].name,
                f"{c.confidence:.2f}",
                ", ".join(c.tactic_ids),
                "✔" if c.technique_id in chosen else "",
            )
        out.print(cands)
        for t in mapping.techniques:
            out.print(
                f"[bold]{t.technique_id}[/] {engine.catalog.techniques[t.technique_id].name} ({t.confidence:.2f})"
            )
            for e in t.evidence:
                where = f" [{e.field}]" if e.field else ""
                out.print(f"   {e.source}{where}: {e.detail} (score {e.score})")
        if mapping.tactic_ids:
            out.print(f"tactic only: {', '.join(mapping.tactic_ids)}")
