"""`attackmap coverage --by-control`: which compliance controls the observed techniques touch."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mitre.assemble import resolve_catalog
from mitre.catalog import CatalogError
from mitre.cli.common import CatalogOpt, WorkflowsOpt, err, fail, load_config
from mitre.compliance import FIELDS, coverage_by_control, load_compliance


def _alerts(path: Path, skipped: list[int]) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped.append(number)
                continue
            if isinstance(doc, dict):
                yield doc
            else:
                skipped.append(number)


def coverage(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="enriched NDJSON (attackmap enrich's output)")],
    by_control: Annotated[bool, typer.Option("--by-control", help="per compliance control")] = False,
    framework: Annotated[
        list[str] | None, typer.Option("--framework", help=f"one of {', '.join(FIELDS)} (repeatable; default all)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    workflows: WorkflowsOpt = None,
    catalog: CatalogOpt = None,
) -> None:
    """Report which controls the techniques observed in enriched alerts touch."""
    if not by_control:
        raise fail("say what to report coverage by: --by-control")
    if not input_path.is_file():
        raise fail(f"{input_path}: no such file")
    unknown = [f for f in framework or () if f not in FIELDS]
    if unknown:
        raise fail(f"unknown framework {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    config, env = load_config(workflows)
    try:
        loaded = resolve_catalog(config, env, catalog)
        compliance, warnings = load_compliance(loaded, config.compliance.mappings, config.compliance.user_mappings)
    except (CatalogError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    skipped: list[int] = []
    rows, total = coverage_by_control(_alerts(input_path, skipped), compliance, framework or tuple(FIELDS))
    if skipped:
        err.print(f"[yellow]warning:[/] {len(skipped)} line(s) not a JSON object, not counted: {skipped[:10]}")
    if as_json:
        payload = {
            "alerts": total,
            "controls": [r.model_dump() for r in rows],
            "unavailable": compliance.unavailable,
        }
        sys.stdout.buffer.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
        return
    table = Table(title=f"controls touched by the techniques of {total} alerts")
    for column in ("framework", "control", "name", "alerts", "techniques"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.framework,
            row.control,
            (row.name or "")[:60],
            str(row.alerts),
            ", ".join(f"{t} ({n})" for t, n in row.techniques.items()),
        )
    Console().print(table)
    for field, reason in compliance.unavailable.items():
        err.print(f"{field}: {reason}")
