"""`attackmap api-key create|list|revoke`: keys of the enrichment API, each with a role and a tenant."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mitre.api.keys import ApiKeys, Role
from mitre.cli.common import fail, load_config

app = typer.Typer(help="API keys of `attackmap serve` (roles admin, analyst, service; one tenant each).")


def _keys() -> ApiKeys:
    _, env = load_config(None)
    return ApiKeys(env.home / "api-keys.json")


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="who or what uses it")],
    role: Annotated[Role, typer.Option("--role", help="admin | analyst | service")],
    tenant: Annotated[str, typer.Option("--tenant", help="the only tenant it acts for")],
) -> None:
    """Create a key; the secret is printed once (stdout) and only its SHA-256 is kept."""
    key, secret = _keys().create(name, role, tenant)
    Console(stderr=True).print(f"key {key.id}: {key.role} for tenant {key.tenant} ({key.name})")
    print(secret)


@app.command("list")
def list_keys() -> None:
    table = Table(title="API keys")
    for column in ("id", "name", "role", "tenant", "revoked"):
        table.add_column(column)
    for key in _keys().list():
        table.add_row(key.id, key.name, key.role, key.tenant, "yes" if key.revoked else "")
    Console().print(table)


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id (from list)")]) -> None:
    """Revoke a key: refused from the next request on, no restart needed."""
    if not _keys().revoke(key_id):
        raise fail(f"no key {key_id}")
