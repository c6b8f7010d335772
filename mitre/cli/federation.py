"""`attackmap federation keygen|send`: a signing key for this system, and findings sent to a peer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from rich.console import Console

from mitre.cli.common import EXIT_DEAD_LETTERS, fail, load_config
from mitre.cli.export import BATCH, EXIT_SPOOLED
from mitre.config import FederationOutput
from mitre.io.exports.delivery import Delivery
from mitre.io.exports.event import CommonEvent, NotAnEnrichedAlert, from_enriched
from mitre.io.exports.registry import ExportConfigError, federation_sink
from mitre.io.federation.signing import private_key_pem, public_key_text

app = typer.Typer(help="Signed federation with peer systems.", no_args_is_help=True)
err = Console(stderr=True)


@app.command()
def keygen(
    key_id: Annotated[str, typer.Option("--key-id", help="the id peers will know the key by, e.g. soc-east-2026-12")],
    out: Annotated[Path, typer.Option("--out", help="where to write the private key (PEM, mode 600)")],
) -> None:
    """An Ed25519 signing key; prints the entry a peer adds to its peers file."""
    key = Ed25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(private_key_pem(key))
    out.chmod(0o600)
    print(f"- key_id: {key_id}\n  algorithm: ed25519\n  public_key: {public_key_text(key)}")


@app.command()
def send(
    enriched: Annotated[Path, typer.Argument(help="enriched NDJSON (attackmap enrich's output)")],
    url: Annotated[str, typer.Option("--url", help="the peer's inbound endpoint (https://…/v1/federation/inbound)")],
    key_id: Annotated[str, typer.Option("--key-id", help="our key id, as the peer lists it")],
    ca: Annotated[Path, typer.Option("--ca", help="CA bundle that signed the peer's certificate")],
    cert: Annotated[Path | None, typer.Option("--cert", help="our client certificate (mutual TLS)")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="our client certificate's key")] = None,
    private_key: Annotated[Path | None, typer.Option("--private-key", help="Ed25519 signing key (PEM)")] = None,
    hmac_secret_env: Annotated[
        str | None, typer.Option("--hmac-secret-env", help="sign with HMAC-SHA256, secret from this variable")
    ] = None,
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="send only this tenant's findings (repeatable)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="give up waiting for the peer after this many seconds")] = 300,
) -> None:
    """Send the enriched alerts to a peer as signed findings, through the exports' delivery layer: what
    the peer does not take within --timeout stays spooled and goes first on the next send (or with a
    flow's feed to the same peer). Exit codes: 0 all delivered, 3 some refused for good (dead-lettered),
    4 the rest stays spooled."""
    _, env = load_config(None)
    try:
        settings = FederationOutput(
            type="federation",
            url=url,
            key_id=key_id,
            private_key=private_key,
            hmac_secret_env=hmac_secret_env,
            ca_file=ca,
            cert_file=cert,
            key_file=key,
            tenants=tenant or None,
        )
        sink = federation_sink(settings)
    except ValidationError as exc:
        raise fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc
    except ExportConfigError as exc:
        raise fail(str(exc)) from exc
    delivery = Delivery(sink, env.home / "spool")
    skipped = 0
    batch: list[CommonEvent] = []
    with enriched.open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                alert = orjson.loads(line)
                if not isinstance(alert, dict):
                    raise NotAnEnrichedAlert("not a JSON object")
                batch.append(from_enriched(alert))
            except (orjson.JSONDecodeError, NotAnEnrichedAlert):
                skipped += 1
            if len(batch) >= BATCH:
                delivery.offer(batch)
                batch = []
    delivery.offer(batch)
    empty = delivery.close(timeout=timeout)
    stats = delivery.stats
    err.print(
        f"offered {stats.offered} (skipped {skipped} not enriched), sent {stats.delivered}, "
        f"not for this peer {sum(stats.skipped.values())}, dead-lettered {stats.dead_lettered}"
        + (f" to {delivery.dead_letter}" if stats.dead_lettered else "")
    )
    if not empty:
        raise fail(
            f"the peer did not take everything within {timeout:g} s ({stats.last_error}); the rest stays spooled "
            f"under {delivery.root} and goes first on the next send to it",
            EXIT_SPOOLED,
        )
    if stats.dead_lettered:
        raise typer.Exit(EXIT_DEAD_LETTERS)
