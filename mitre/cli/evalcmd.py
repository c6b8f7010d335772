"""`attackmap eval`: measure a mapper on labelled cases, write reports, and gate on thresholds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from mitre.assemble import EngineOptions
from mitre.catalog import CatalogError
from mitre.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    CatalogOpt,
    MapperOpt,
    WorkflowOpt,
    WorkflowsOpt,
    err,
    fail,
    load_config,
    warn,
)
from mitre.config import WorkflowsFile

DEFAULT_THRESHOLDS = Path(__file__).resolve().parents[2] / "evals" / "thresholds.yaml"


def profile_name(kind: str, cv: int | None, kb_kinds: list[str]) -> str:
    """The thresholds.yaml profile a run is gated against, e.g. sigma-cv, atomic-kb-sigma."""
    if cv:
        return f"{kind}-cv" + (f"+{'+'.join(kb_kinds)}" if kb_kinds else "")
    if kb_kinds:
        return f"{kind}-kb-{'+'.join(kb_kinds)}"
    return f"{kind}-no-kb"


def gate_failures(figures: dict[str, float], profile: dict[str, Any]) -> list[str]:
    """Every figure below its `min` or above its `max` in the profile; unknown figure names fail too."""
    failures = []
    for name, bound in (profile.get("min") or {}).items():
        if name not in figures:
            failures.append(f"{name}: not measured")
        elif figures[name] < float(bound):
            failures.append(f"{name} = {figures[name]:.4f} < min {float(bound):.4f}")
    for name, bound in (profile.get("max") or {}).items():
        if name not in figures:
            failures.append(f"{name}: not measured")
        elif figures[name] > float(bound):
            failures.append(f"{name} = {figures[name]:.4f} > max {float(bound):.4f}")
    return failures


def load_thresholds(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        raise ValueError(f"{path}: no `profiles` mapping")
    return profiles


def knowledge_kinds(paths: list[Path], evaluated: tuple[Path, ...]) -> list[str]:
    """The dataset kinds of the knowledge-base files, less the evaluated corpus itself (for profile names)."""
    from evals.datasets import sniff_kind

    kinds = []
    for path in paths:
        if path.resolve() in evaluated or not path.is_file():
            continue
        try:
            kind = sniff_kind(path)
        except ValueError:
            kind = "rules"
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _override(
    config: WorkflowsFile, workflow: str | None, crosswalk: list[Path] | None, **mapper: Any
) -> WorkflowsFile:
    """The workflows file with the command line's crosswalks and mapper settings on top."""
    chosen = config.workflow(workflow)
    updates = {k: v for k, v in mapper.items() if v is not None}
    workflows = [
        w.model_copy(update={"mapper": w.mapper.model_copy(update=updates)}) if w is chosen else w
        for w in config.workflows
    ]
    catalog = config.catalog.model_copy(update={"crosswalks": [*config.catalog.crosswalks, *(crosswalk or [])]})
    changed = config.model_copy(update={"workflows": workflows, "catalog": catalog})
    changed._source = config.source
    return changed


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "eval"


def eval_command(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="handwritten | sigma:PATH | atomic:PATH | elastic:PATH | rules:PATH | cases:PATH | PATH",
        ),
    ] = "handwritten",
    mapper: MapperOpt = None,
    knowledge_base: Annotated[
        list[str] | None,
        typer.Option(
            "--knowledge-base",
            "-k",
            help="instead of the workflow's knowledge base: a dataset spec (sigma:PATH, atomic:PATH, …; repeatable)",
        ),
    ] = None,
    no_knowledge_base: Annotated[
        bool, typer.Option("--no-knowledge-base", help="no knowledge-base files (the catalog's own examples only)")
    ] = False,
    cv: Annotated[
        int | None,
        typer.Option("--cv", help="grouped k-fold CV: each fold's knowledge base leaves out that fold's rows"),
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write JSON, Markdown and HTML here")] = None,
    gate: Annotated[bool, typer.Option("--gate", help="exit 1 when a figure misses thresholds.yaml")] = False,
    thresholds: Annotated[Path, typer.Option("--thresholds", help="gate thresholds")] = DEFAULT_THRESHOLDS,
    profile: Annotated[
        str | None, typer.Option("--profile", help="thresholds profile (default: from dataset, KB and --cv)")
    ] = None,
    catalog: CatalogOpt = None,
    crosswalk: Annotated[
        list[Path] | None, typer.Option("--crosswalk", help="v18→v19 crosswalk JSONL (repeatable)")
    ] = None,
    workflows: WorkflowsOpt = None,
    workflow: WorkflowOpt = None,
    max_techniques: Annotated[int | None, typer.Option("--max-techniques")] = None,
    confidence_floor: Annotated[float | None, typer.Option("--confidence-floor")] = None,
    seed: Annotated[int, typer.Option("--seed", help="fold assignment seed")] = 0,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="dev | holdout: halves by a hash of the group; dev | check: the dataset's own split (default all)",
        ),
    ] = None,
    scoring: Annotated[
        str,
        typer.Option(
            "--scoring",
            help="user: what the user receives under the workflow's hybrid rule (rule tags on skip/extend); "
            "mapper: the mapper's own output on every alert",
        ),
    ] = "user",
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="use a mapping cache here (default: none, every alert mapped)")
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Evaluate the engine a workflows file describes on labelled cases (grouped k-fold CV or not).

    Catalog, crosswalks, knowledge base and mapper come from workflows.yaml, as for `enrich`;
    the flags override them."""
    from evals.report import write_reports
    from evals.runner import Runner, Scoring, dataset_files, prepare

    if scoring not in ("user", "mapper"):
        raise fail(f"unknown --scoring {scoring!r}; known: user, mapper")
    if no_knowledge_base and knowledge_base:
        raise fail("--no-knowledge-base and --knowledge-base exclude each other")
    config, env = load_config(workflows)
    try:
        config = _override(
            config,
            workflow,
            crosswalk,
            max_techniques=max_techniques,
            confidence_floor=confidence_floor,
        )
        kb_files = tuple(f for spec in knowledge_base or [] for f in dataset_files(spec))
        options = EngineOptions(
            workflow=workflow,
            mapper=mapper,
            catalog=catalog,
            knowledge_base=() if no_knowledge_base else (kb_files if knowledge_base else None),
            cache=cache_dir is not None,
            cache_dir=cache_dir,
        )
        mode: Scoring = "mapper" if scoring == "mapper" else "user"
        runner = Runner(config, env=env, options=options, scoring=mode, progress=not no_progress)
        data = prepare(dataset, runner.catalog, split)
    except (CatalogError, OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if not data.cases:
        raise fail(f"{dataset}: no scorable cases ({data.labels.as_dict()['excluded']})")
    try:
        result = runner.run(data, cv=cv, seed=seed)
    except (CatalogError, OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    for warning in result.warnings:
        warn(warning)
    kinds = knowledge_kinds(list(runner.knowledge_paths), data.files)
    name = profile or profile_name(data.kind, cv, kinds) + (f"-{split}" if split else "")

    failures: list[str] | None = None
    if gate:
        try:
            profiles = load_thresholds(thresholds)
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from exc
        if name not in profiles:
            raise fail(f"{thresholds}: no profile {name!r} (have: {', '.join(sorted(profiles))})")
        from evals.metrics import headline

        failures = gate_failures(headline(result.metrics), profiles[name])

    _print_summary(result.metrics, name, data, failures)
    if report is not None:
        paths = write_reports(result, runner.catalog, report, _slug(name), failures)
        err.print(f"reports: {', '.join(str(p) for p in paths.values())}")
    raise typer.Exit(EXIT_FAILURE if failures else EXIT_OK)


def _print_summary(metrics: dict[str, Any], name: str, data: Any, failures: list[str] | None) -> None:
    from evals.metrics import headline

    table = Table(title=f"attackmap eval — {name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("cases scored", str(metrics["cases"]))
    excluded = data.labels.as_dict()["excluded"]
    if excluded:
        table.add_row("cases excluded", ", ".join(f"{k}: {v}" for k, v in excluded.items()))
    if data.load.skipped:
        table.add_row("rows not converted", ", ".join(f"{k}: {v}" for k, v in data.load.skipped.items()))
    for key, value in headline(metrics).items():
        table.add_row(key, f"{value:.4f}")
    err.print(table)
    if failures is not None:
        if failures:
            for f in failures:
                err.print(f"[bold red]gate FAIL[/] {f}")
        else:
            err.print("[bold green]gate pass[/]")
