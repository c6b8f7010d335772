"""`attackmap serve`: the signed-webhook receiver that turns alerts into Prefect events."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Annotated

import typer

from mitre.cli.common import WorkflowsOpt, err, fail, load_config


def serve(
    workflows: WorkflowsOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8787,
    prefect_api_url: Annotated[
        str | None,
        typer.Option("--prefect-api-url", envvar="PREFECT_API_URL", help="Prefect API, e.g. http://127.0.0.1:4200/api"),
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option("--ssl-certfile", help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option("--ssl-keyfile", help="TLS private key (PEM)")] = None,
    ssl_ca_certs: Annotated[
        Path | None,
        typer.Option("--ssl-ca-certs", help="CA bundle: clients must present a certificate it signed (mTLS)"),
    ] = None,
    no_signature: Annotated[
        bool, typer.Option("--no-signature", help="accept unsigned requests (only with --ssl-ca-certs: mTLS)")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", min=0.1, help="seconds a request head may take to arrive (slowloris)")
    ] = 10.0,
) -> None:
    """Receive alerts on POST /hooks or /hooks/WORKFLOW and emit one Prefect event per alert.

    The HMAC secret is read from the environment variable named by the workflow's
    trigger.webhook.secret_env (default ATTACKMAP_WEBHOOK_SECRET); it is never printed.
    """
    import uvicorn

    from mitre.io.events import PrefectEvents
    from mitre.io.webhook import create_app, slow_client_guard

    config, _ = load_config(workflows)
    if not prefect_api_url:
        raise fail("set PREFECT_API_URL (or --prefect-api-url) to the Prefect server's API")
    if no_signature and ssl_ca_certs is None:
        raise fail("--no-signature is only allowed with mutual TLS (--ssl-ca-certs)")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together")
    if ssl_ca_certs is not None and ssl_certfile is None:
        raise fail("mutual TLS (--ssl-ca-certs) needs --ssl-certfile and --ssl-keyfile")
    secrets: dict[str, bytes | None] = {}
    for w in config.workflows:
        if not w.enabled:
            continue
        if no_signature:
            secrets[w.name] = None
            continue
        value = os.environ.get(w.trigger.webhook.secret_env, "")
        if len(value) < 16:
            raise fail(f"workflow {w.name}: set {w.trigger.webhook.secret_env} to the webhook secret (16+ characters)")
        secrets[w.name] = value.encode()
    app = create_app(config, PrefectEvents(prefect_api_url), secrets)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheme = "https" if ssl_certfile else "http"
    err.print(
        f"attackmap serve: {scheme}://{host}:{port}/hooks → {prefect_api_url}/events"
        + (" (mTLS)" if ssl_ca_certs else "")
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=slow_client_guard(header_timeout),
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        ssl_ca_certs=str(ssl_ca_certs) if ssl_ca_certs else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if ssl_ca_certs else ssl.CERT_NONE,
    )
