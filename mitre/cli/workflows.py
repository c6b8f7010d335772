"""`attackmap workflows validate | show | schema | deploy`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mitre.cli.common import EXIT_FAILURE, EXIT_OK, WorkflowsOpt, err, fail, load_config
from mitre.config import Environment, default_workflows_path

app = typer.Typer(help="Validate, inspect and deploy workflows.yaml.", no_args_is_help=True)
out = Console()


def _path(path: Path | None) -> Path:
    found = path or default_workflows_path(Environment())
    if found is None:
        raise fail("no workflows file: pass PATH, set ATTACKMAP_WORKFLOWS or run where workflows.yaml is")
    return found


@app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="workflows file (default: $ATTACKMAP_WORKFLOWS or ./workflows.yaml)")
    ] = None,
) -> None:
    """Check a workflows file against the schema; print `file:line: message (hint)` per problem."""
    from mitre.workflows_schema import validate_file

    target = _path(path)
    problems = validate_file(target)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        err.print(f"[red]{len(problems)} problem(s)[/] in {target}")
        raise typer.Exit(EXIT_FAILURE)
    err.print(f"[green]ok[/] {target}")
    raise typer.Exit(EXIT_OK)


@app.command()
def schema(
    write: Annotated[Path | None, typer.Option("--write", help="write the schema to this file")] = None,
) -> None:
    """Print (or write) the JSON Schema generated from the models (shipped as workflows.schema.json)."""
    from mitre.workflows_schema import schema_text

    text = schema_text()
    if write is None:
        typer.echo(text, nl=False)
    else:
        write.write_text(text)
        err.print(f"wrote {write}")


@app.command()
def show(
    workflows: WorkflowsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="every setting, defaults filled in, as JSON")] = False,
) -> None:
    """The workflows as loaded (defaults filled in): trigger, decision, mapper, outputs."""
    config, _ = load_config(workflows)
    if as_json:
        payload = {"file": config.describe_source(), **config.model_dump(mode="json")}
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"attackmap workflows — {config.describe_source()}")
    for column in ("name", "enabled", "trigger", "source", "decision", "mapper", "write-back"):
        table.add_column(column, overflow="fold")
    for w in config.workflows:
        trigger = f"{w.trigger.event}\nrisk ≥ {w.decision.min_risk_score:g}"
        source = f"{w.trigger.index_pattern}\nevery {w.trigger.poll_interval_seconds:g}s, batch {w.trigger.batch_size}"
        decision = f"{w.decision.mode}, min risk {w.decision.min_risk_score:g}"
        mapper = w.mapper.provider + (f" ({w.mapper.model})" if w.mapper.model else "")
        if w.mapper.knowledge_base:
            mapper += "\nknowledge base: " + ", ".join(str(p) for p in w.mapper.knowledge_base)
        table.add_row(
            w.name,
            "yes" if w.enabled else "no",
            trigger,
            source,
            decision,
            mapper,
            str(w.outputs.elasticsearch_write_back),
        )
    # Piped or redirected, rich would assume 80 columns and cut every cell: give the table its width.
    console = out if out.is_terminal else Console(width=Console(width=10_000).measure(table).maximum)
    console.print(table)


@app.command()
def deploy(
    workflows: WorkflowsOpt = None,
    serve: Annotated[bool, typer.Option("--serve", help="also serve the deployments here (blocks)")] = False,
    limit: Annotated[int, typer.Option(help="with --serve: concurrent flow runs at most")] = 4,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="with --serve: run the flow runs in this process, on warm engines")
    ] = False,
    work_pool: Annotated[
        str | None, typer.Option("--work-pool", help="deploy to this work pool (run by `prefect worker start`)")
    ] = None,
    poller: Annotated[bool, typer.Option("--poller/--no-poller", help="also deploy the scheduled ES poller")] = False,
    triggers: Annotated[
        bool,
        typer.Option(
            "--triggers/--no-triggers",
            help="the event trigger (a flow run per alert event); --no-triggers when stream workers "
            "(python -m flows.worker --claims redis) take the events",
        ),
    ] = True,
) -> None:
    """Create or update one Prefect deployment per enabled workflow, with its event trigger."""
    if not Environment().prefect_api_url:
        raise fail("set PREFECT_API_URL first (importing Prefect without it starts a throwaway server)")
    config, _ = load_config(workflows)
    from flows.deploy import apply_deployments, build_deployments, serve_deployments

    deployments = build_deployments(config, poller=poller, triggers=triggers)
    if serve:
        err.print(f"serving {len(deployments)} deployment(s), limit {limit}")
        serve_deployments(deployments, limit=limit, in_process=in_process)
        return
    ids = apply_deployments(deployments, work_pool=work_pool)
    # to remove them again: `attackmap workflows undeploy`
    for deployment, deployment_id in zip(deployments, ids, strict=True):
        typer.echo(f"{deployment.flow_name}/{deployment.name}: {deployment_id}")


@app.command()
def undeploy(workflows: WorkflowsOpt = None) -> None:
    """Delete the workflows' deployments and their trigger automations."""
    if not Environment().prefect_api_url:
        raise fail("set PREFECT_API_URL first (importing Prefect without it starts a throwaway server)")
    config, _ = load_config(workflows)
    from flows.deploy import remove_deployments

    for name in remove_deployments(config):
        typer.echo(f"removed {name}")
