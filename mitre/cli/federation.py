"""`attackmap federation keygen|send`: a signing key for this system, and findings sent to a peer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from mitre.cli.common import fail, load_config
from mitre.io.federation.finding import finding_from_enriched
from mitre.io.federation.outbound import FederationSender, mtls_client
from mitre.io.federation.signing import Ed25519Signer, HmacSigner, Signer, private_key_pem, public_key_text

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
    timeout: Annotated[float, typer.Option(help="give up waiting for the peer after this many seconds")] = 300,
) -> None:
    """Spool the enriched alerts as findings and send them (the spool survives a peer outage; run again)."""
    _, env = load_config(None)
    signer: Signer
    if private_key is not None:
        signer = Ed25519Signer.from_pem(key_id, private_key)
    elif hmac_secret_env and len(os.environ.get(hmac_secret_env, "")) >= 16:
        signer = HmacSigner(key_id, os.environ[hmac_secret_env].encode())
    else:
        raise fail("give --private-key, or --hmac-secret-env naming a variable with a 16+ character secret")
    spool = env.home / "federation" / "outbound" / "".join(c if c.isalnum() else "-" for c in url)
    sender = FederationSender(url, signer, spool, mtls_client(ca, cert, key))
    offered = skipped = 0
    with enriched.open("rb") as handle:
        for line in handle:
            try:
                offered += sender.offer([finding_from_enriched(orjson.loads(line))])
            except (orjson.JSONDecodeError, ValueError):
                skipped += 1
    result = sender.drain(deadline=time.monotonic() + timeout)
    err.print(
        f"offered {offered} (skipped {skipped} not enriched), sent {result.sent}, dead-lettered {result.dead_lettered}"
    )
    if result.waiting:
        raise fail(f"the peer did not take everything within {timeout:g} s; the rest stays spooled in {spool}", 1)
