"""The `attackmap` command line."""

from __future__ import annotations

import typer

from mitre.cli import attack, budget
from mitre.cli.enrich import enrich, explain

app = typer.Typer(
    name="attackmap",
    help="Map security alerts to MITRE ATT&CK techniques and tactics — offline by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(enrich)
app.command()(explain)
app.add_typer(attack.app, name="attack")
app.add_typer(budget.app, name="budget")


def main() -> None:
    app()
