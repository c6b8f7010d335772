"""Options shared by commands, and turning them into an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from mitre.assemble import EngineOptions, build_engine
from mitre.catalog import CatalogError
from mitre.config import Environment, WorkflowsFile, default_workflows_path, load_workflows
from mitre.engine import Engine

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DEAD_LETTERS = 3
EXIT_INTERNAL_ERRORS = 4

err = Console(stderr=True)

WorkflowsOpt = Annotated[
    Path | None, typer.Option("--workflows", help="workflows.yaml (default: $ATTACKMAP_WORKFLOWS or ./workflows.yaml)")
]
WorkflowOpt = Annotated[str | None, typer.Option("--workflow", help="workflow name (default: the first enabled)")]
MapperOpt = Annotated[str | None, typer.Option("--mapper", help="local | anthropic | openai | openai-compatible")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="ATT&CK STIX bundle or compiled catalog")]
KnowledgeOpt = Annotated[
    list[Path] | None, typer.Option("--knowledge-base", "-k", help="tagged rules/alerts JSONL (repeatable)")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="do not read or write the mapping cache")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="cache directory")]


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def load_config(workflows: Path | None) -> tuple[WorkflowsFile, Environment]:
    env = Environment()
    path = workflows or default_workflows_path(env)
    try:
        return load_workflows(path), env
    except (OSError, ValidationError, ValueError) as exc:
        raise fail(f"{path}: {exc}") from exc


def make_engine(
    workflows: Path | None,
    workflow: str | None,
    mapper: str | None,
    catalog: Path | None,
    knowledge_base: list[Path] | None,
    no_cache: bool,
    cache_dir: Path | None,
) -> Engine:
    config, env = load_config(workflows)
    options = EngineOptions(
        workflow=workflow,
        mapper=mapper,
        catalog=catalog,
        knowledge_base=tuple(knowledge_base) if knowledge_base else None,
        cache=not no_cache,
        cache_dir=cache_dir,
    )
    try:
        engine = build_engine(config, env, options)
    except (CatalogError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    for warning in engine.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    return engine
