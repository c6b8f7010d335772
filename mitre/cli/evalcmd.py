"""`attackmap eval`: measure a mapper on labelled cases, write reports, and gate on thresholds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from mitre.catalog import Catalog, CatalogError, load_catalog
from mitre.cli.common import EXIT_FAILURE, EXIT_OK, CatalogOpt, WorkflowOpt, WorkflowsOpt, err, fail, load_config
from mitre.config import MapperSettings
from mitre.indicators import load_indicators
from mitre.mappers import default_registry
from mitre.mappers.base import Mapper, MapperContext
from mitre.mappers.local import LocalMapper
from mitre.pipeline import resolve_catalog

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


def _catalog(workflows: Path | None, catalog: Path | None, crosswalk: list[Path] | None) -> Catalog:
    config, env = load_config(workflows)
    try:
        if catalog is not None or crosswalk:
            path = catalog or env.catalog or config.catalog.path
            return load_catalog(path, [*config.catalog.crosswalks, *(crosswalk or [])])
        return resolve_catalog(config, env)
    except (CatalogError, OSError) as exc:
        raise fail(str(exc)) from exc


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
    mapper: Annotated[str, typer.Option("--mapper", help="local | anthropic | openai | ...")] = "local",
    knowledge_base: Annotated[
        list[str] | None,
        typer.Option("--knowledge-base", "-k", help="dataset spec used as knowledge base (repeatable)"),
    ] = None,
    cv: Annotated[
        int | None, typer.Option("--cv", help="grouped k-fold CV: the knowledge base is the other folds")
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
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="mapping cache (LLM mappers)")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Evaluate a mapper on labelled cases (grouped k-fold CV or a separate knowledge base)."""
    from evals.report import write_reports
    from evals.runner import Runner, prepare, scoring_decision

    cat = _catalog(workflows, catalog, crosswalk)
    config, _ = load_config(workflows)
    try:
        settings: MapperSettings = config.workflow(workflow).mapper
    except ValueError as exc:
        raise fail(str(exc)) from exc
    updates: dict[str, Any] = {"provider": mapper}
    if max_techniques is not None:
        updates["max_techniques"] = max_techniques
    if confidence_floor is not None:
        updates["confidence_floor"] = confidence_floor
    settings = settings.model_copy(update=updates)
    if scoring not in ("user", "mapper"):
        raise fail(f"unknown --scoring {scoring!r}; known: user, mapper")
    decision = scoring_decision(config.workflow(workflow).decision) if scoring == "user" else None
    try:
        data = prepare(dataset, cat, split)
        kbs = [prepare(spec, cat) for spec in knowledge_base or []]
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if not data.cases:
        raise fail(f"{dataset}: no scorable cases ({data.labels.as_dict()['excluded']})")

    factory = None
    if mapper != "local":
        registry = default_registry()
        if mapper not in registry.names():
            raise fail(f"unknown mapper {mapper!r}; known: local, {', '.join(registry.names())}")

        def factory(local: LocalMapper) -> Mapper:
            return registry.create(mapper, MapperContext(catalog=cat, settings=settings, local=local))

        factory.__name__ = mapper

    runner = Runner(
        cat,
        load_indicators(cat),
        settings,
        mapper_factory=factory,
        cache_dir=cache_dir,
        progress=not no_progress,
        decision=decision,
    )
    result = runner.run(data, knowledge=kbs, cv=cv, seed=seed)
    name = profile or profile_name(data.kind, cv, [k.kind for k in kbs]) + (f"-{split}" if split else "")

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
        paths = write_reports(result, cat, report, _slug(name), failures)
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
