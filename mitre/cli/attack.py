"""`attackmap attack info|update|diff`: which ATT&CK catalog is active, installing a new one, and what
changed between two versions."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import httpx
import orjson
import typer
from rich.console import Console
from rich.table import Table

from mitre.assemble import resolve_catalog
from mitre.attack_diff import diff_catalogs
from mitre.catalog import CatalogError, compile_catalog, load_catalog
from mitre.cli.common import CatalogOpt, WorkflowsOpt, fail, load_config

app = typer.Typer(help="The ATT&CK catalog: show the active one, install another, compare two.", no_args_is_help=True)
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


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="older enterprise-attack.json (or compiled catalog)")],
    new: Annotated[Path, typer.Argument(help="newer enterprise-attack.json")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Techniques added, revoked (with replacement), deprecated, moved between tactics, renamed."""
    try:
        result = diff_catalogs(load_catalog(old), load_catalog(new))
    except CatalogError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(orjson.dumps(result.model_dump(), option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in result.counts().items())
    console.print(f"ATT&CK {result.old_version} → {result.new_version}: {counts}")
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        ("tactics added", [(t.id, t.name) for t in result.tactics_added]),
        ("tactics renamed", [(t.id, f"{t.old_name} → {t.new_name}") for t in result.tactics_renamed]),
        ("added", [(t.id, f"{t.name} ({', '.join(t.tactics)})") for t in result.added]),
        ("revoked", [(t.id, f"{t.name} → {t.replaced_by} {t.replaced_by_name}") for t in result.revoked]),
        ("deprecated", [(t.id, t.old_name) for t in result.deprecated]),
        ("moved between tactics",
         [(t.id, f"{t.name}: {', '.join(t.old_tactics)} → {', '.join(t.new_tactics)}") for t in result.moved]),
        ("renamed", [(t.id, f"{t.old_name} → {t.new_name}") for t in result.renamed]),
    ]  # fmt: skip
    for title, rows in sections:
        if rows:
            table = Table(title=f"{title} ({len(rows)})", show_header=False)
            for key, text in rows:
                table.add_row(key, text)
            console.print(table)
