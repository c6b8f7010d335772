"""Options shared by commands, and turning them into an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.status import Status

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


def load_config(workflows: Path | None, *, quiet: bool = False) -> tuple[WorkflowsFile, Environment]:
    """The workflows file in effect (--workflows, $ATTACKMAP_WORKFLOWS, ./workflows.yaml) and the
    environment. No file found: a warning says so (unless `quiet`). A bad file: its problems, as
    `attackmap workflows validate` prints them, and exit code 2."""
    env = Environment()
    path = workflows or default_workflows_path(env)
    if path is None:
        if not quiet:
            warn(NO_WORKFLOWS)
        return load_workflows(None), env
    if not path.is_file():
        raise fail(f"{path}: no such workflows file")
    try:
        return load_workflows(path), env
    except (OSError, ValidationError, ValueError, yaml.YAMLError) as exc:
        from mitre.workflows_schema import validate_file

        problems = validate_file(path)
        for problem in problems:  # as `attackmap workflows validate` prints them: one line each, never wrapped
            typer.echo(str(problem), err=True)
        detail = f"{len(problems)} problem(s)" if problems else str(exc)
        raise fail(f"{path}: {detail} (`attackmap workflows validate {path}` checks it)") from exc


class StartupStatus:
    """What start-up is doing while it takes long: a status line on a terminal, plain lines otherwise
    (so a first run that trains the knowledge base is never a silent blank)."""

    def __init__(self) -> None:
        self._status: Status | None = None

    def __call__(self, message: str) -> None:
        if not err.is_terminal:
            err.print(f"attackmap: {message}…", markup=False, highlight=False)
        elif self._status is None:
            self._status = err.status(message)
            self._status.start()
        else:
            self._status.update(message)

    def __enter__(self) -> StartupStatus:
        return self

    def __exit__(self, *_: object) -> None:
        if self._status is not None:
            self._status.stop()


NO_WORKFLOWS = (
    "no workflows file (--workflows, $ATTACKMAP_WORKFLOWS or ./workflows.yaml): using the built-in defaults "
    "— local mapper, no knowledge-base files, the installed or bundled catalog"
)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


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
        with StartupStatus() as notify:
            engine = build_engine(config, env, options, notify=notify)
    except (CatalogError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    for warning in engine.warnings:
        warn(warning)
    return engine
