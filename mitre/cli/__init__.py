"""The `attackmap` command line."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from mitre.cli import apikey, attack, budget, federation, feedback, workflows
from mitre.cli.coverage import coverage
from mitre.cli.enrich import enrich, explain
from mitre.cli.evalcmd import eval_command
from mitre.cli.export import export
from mitre.cli.serve import serve

app = typer.Typer(
    name="attackmap",
    help="Map security alerts to MITRE ATT&CK techniques and tactics — offline by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attackmap {metadata.version('attackmap')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Map security alerts to MITRE ATT&CK techniques and tactics — offline by default."""


app.command()(enrich)
app.command()(explain)
app.command(name="eval")(eval_command)
app.command()(export)
app.add_typer(attack.app, name="attack")
app.add_typer(budget.app, name="budget")
app.add_typer(workflows.app, name="workflows")
app.add_typer(feedback.app, name="feedback")
app.add_typer(apikey.app, name="api-key")
app.add_typer(federation.app, name="federation")
app.command()(serve)
app.command()(coverage)


def main() -> None:
    app()
