"""`attackmap serve`: the signed webhook (alerts → Prefect events), the authenticated enrichment API with
the review page, and the federation inbound endpoint, in one server."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import typer

from mitre.cli.common import WorkflowOpt, WorkflowsOpt, err, fail, load_config, make_engine
from mitre.config import Environment


def serve(
    workflows: WorkflowsOpt = None,
    workflow: WorkflowOpt = None,
    api: Annotated[bool, typer.Option("--api/--no-api", help="the enrichment API and the review page")] = True,
    peers: Annotated[
        Path | None,
        typer.Option("--peers", help="federation peers file: accept signed findings (/v1/federation/inbound)"),
    ] = None,
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
    replay_store: Annotated[
        str,
        typer.Option(
            "--replay-store",
            help="where used nonces are remembered: local (this process; federation: a SQLite file per host) "
            "or redis ($ATTACKMAP_REDIS_URL: every receiver on every machine)",
        ),
    ] = "local",
) -> None:
    """Serve the webhook (with PREFECT_API_URL: POST /hooks, /hooks/WORKFLOW → one Prefect event per alert),
    the enrichment API and review page (/v1/…, /review; API keys from `attackmap api-key`), and with
    --peers the federation inbound endpoint.

    The webhook's HMAC secret is read from the environment variable named by the workflow's
    trigger.webhook.secret_env (default ATTACKMAP_WEBHOOK_SECRET); it is never printed.
    """
    import uvicorn

    from mitre.api.server import server_app
    from mitre.io.webhook import slow_client_guard

    config, env = load_config(workflows)
    if not prefect_api_url and not api and peers is None:
        raise fail("nothing to serve: set PREFECT_API_URL for the webhook, or keep --api, or give --peers")
    if no_signature and ssl_ca_certs is None:
        raise fail("--no-signature is only allowed with mutual TLS (--ssl-ca-certs)")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together")
    if ssl_ca_certs is not None and ssl_certfile is None:
        raise fail("mutual TLS (--ssl-ca-certs) needs --ssl-certfile and --ssl-keyfile")
    if replay_store not in ("local", "redis"):
        raise fail("--replay-store is local or redis")
    redis = None
    if replay_store == "redis":
        if not env.redis_url:
            raise fail("--replay-store redis needs ATTACKMAP_REDIS_URL")
        from mitre.cache_redis import redis_client

        redis = redis_client(env.redis_url)
    webhook = _webhook(config, prefect_api_url, no_signature, redis) if prefect_api_url else None
    enrichment = _api(workflows, workflow, env, prefect_api_url) if api else None
    inbound = _inbound(peers, env, redis) if peers is not None else None
    app = server_app(api=enrichment, inbound=inbound, webhook=webhook)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheme = "https" if ssl_certfile else "http"
    serving = [
        *([f"/hooks → {prefect_api_url}/events"] if webhook else []),
        *(["/v1 (API), /review"] if enrichment else []),
        *(["/v1/federation/inbound"] if inbound else []),
    ]
    err.print(f"attackmap serve: {scheme}://{host}:{port} " + ", ".join(serving) + (" (mTLS)" if ssl_ca_certs else ""))
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


def _webhook(config: Any, prefect_api_url: str, no_signature: bool, redis: Any) -> Any:
    from mitre.io.events import PrefectEvents
    from mitre.io.replay import RedisClaims
    from mitre.io.webhook import create_app

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
    claims = None if redis is None else (lambda namespace, window: RedisClaims(redis, namespace, window))
    return create_app(config, PrefectEvents(prefect_api_url), secrets, claims=claims)


def _api(workflows: Path | None, workflow: str | None, env: Environment, prefect_api_url: str | None) -> Any:
    from mitre.api.app import EnrichmentApi
    from mitre.api.audit import AuditLog
    from mitre.api.keys import ApiKeys
    from mitre.api.queue import FlowQueue
    from mitre.io.elastic import es_client
    from mitre.io.events import PrefectEvents

    engine = make_engine(workflows, workflow, None, None, None, False, None)
    queue = None
    if prefect_api_url and env.es_url:
        queue = FlowQueue(
            es_client(env=env), PrefectEvents(prefect_api_url), engine.workflow.trigger.event, engine.workflow.name
        )
    return EnrichmentApi(
        engine=engine,
        keys=ApiKeys(env.home / "api-keys.json"),
        audit=AuditLog(env.home / "audit.ndjson"),
        env=env,
        queue=queue,
    )


def _inbound(peers: Path, env: Environment, redis: Any) -> Any:
    from mitre.api.server import InboundFiles
    from mitre.io.federation.inbound import Inbound
    from mitre.io.federation.signing import PeersFile
    from mitre.io.federation.store import ReceiverStore
    from mitre.io.replay import RedisReceiverStore

    if not peers.is_file():
        raise fail(f"{peers}: no such peers file")
    from mitre.api.audit import AuditLog

    try:
        keyring = PeersFile(peers)
    except ValueError as exc:
        raise fail(f"{peers}: {exc}") from exc
    files = InboundFiles(env.home / "federation" / "inbound")
    return Inbound(
        keyring,
        ReceiverStore(env.home / "federation" / "receiver.sqlite") if redis is None else RedisReceiverStore(redis),
        files.findings,
        files.feedback,
        audit=AuditLog(env.home / "audit.ndjson").write,
    )
