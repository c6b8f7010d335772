"""`attackmap attack info|update`: which ATT&CK catalog is active, and installing a new one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from mitre.assemble import resolve_catalog
from mitre.catalog import CatalogError, compile_catalog, load_catalog
from mitre.cli.common import CatalogOpt, WorkflowsOpt, fail, load_config

app = typer.Typer(help="The ATT&CK catalog: show the active one, install another.", no_args_is_help=True)
MIN_TECHNIQUES = 100  # an Enterprise bundle has several hundred; fewer means a wrong or partial file


@app.command()
def info(workflows: WorkflowsOpt = None, catalog: CatalogOpt = None) -> None:
    """Print the active catalog: version, source, counts."""
    config, env = load_config(workflows)
    try:
        loaded = resolve_catalog(config, env, catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from exc
    table = Table(title="ATT&CK catalog", show_header=False)
    for key, value in loaded.info().model_dump().items():
        table.add_row(key, str(value))
    table.add_row("tactics (matrix order)", ", ".join(f"{t.id} {t.name}" for t in loaded.tactics))
    Console().print(table)


@app.command()
def update(
    source: Annotated[str, typer.Option("--from", help="path or URL of an official enterprise-attack.json")],
    workflows: WorkflowsOpt = None,
) -> None:
    """Load a STIX bundle, validate it and make it the active catalog."""
    config, env = load_config(workflows)
    with tempfile.TemporaryDirectory() as tmp:
        if source.startswith(("http://", "https://")):
            path = Path(tmp) / "enterprise-attack.json"
            try:
                with httpx.stream("GET", source, timeout=60, follow_redirects=True) as response:
                    response.raise_for_status()
                    with path.open("wb") as handle:
                        for chunk in response.iter_bytes():
                            handle.write(chunk)
            except httpx.HTTPError as exc:
                raise fail(f"download failed: {exc}") from exc
        else:
            path = Path(source)
        try:
            loaded = load_catalog(path, config.catalog.crosswalks)
        except CatalogError as exc:
            raise fail(str(exc)) from exc
    info_ = loaded.info()
    if info_.techniques + info_.subtechniques < MIN_TECHNIQUES or info_.tactics < 10:
        raise fail(
            f"{source}: only {info_.techniques} techniques and {info_.tactics} tactics: not an Enterprise bundle"
        )
    env.home.mkdir(parents=True, exist_ok=True)
    target = env.home / "catalog.json"
    staging = target.with_suffix(".tmp")
    staging.write_bytes(compile_catalog(loaded))
    staging.replace(target)
    Console().print(
        f"active catalog: ATT&CK {info_.version} ({info_.techniques} techniques, {info_.subtechniques} "
        f"sub-techniques, {info_.tactics} tactics) from {source} → {target}"
    )
