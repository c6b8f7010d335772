"""Inbound webhook → Prefect event: the receiver behind `attackmap serve`.

Prefect OSS has no inbound webhooks, so senders (Kibana's Webhook connector, a SOAR, a script) post
here; each accepted alert becomes one `security.alert.high-risk` event (``POST /api/events``) whose
id is derived from the alert's index and id, so a sender's retry cannot enrich an alert twice.

Authentication (all checked before anything is emitted):

- ``X-Attackmap-Timestamp``: unix seconds; rejected when further than ``tolerance_seconds`` from now;
- ``X-Attackmap-Signature: sha256=<hex>``: HMAC-SHA256 over ``timestamp + "." + body`` with the secret
  from the environment variable named in the workflow's ``trigger.webhook.secret_env``;
- ``X-Attackmap-Nonce``: accepted once within the window (a signature is also accepted only once, so a
  captured request replayed with a fresh nonce is rejected too); remembered by this process, or by every
  receiver when ``claims`` is Redis (`mitre.io.replay`, ``attackmap serve --replay-store redis``);
- bodies larger than ``max_body_bytes`` get 413 (checked on Content-Length and while streaming).

Optional TLS / mutual TLS is uvicorn's (see `mitre/cli/serve.py`). The events themselves, and how they
reach Prefect, are `mitre.io.events`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mitre.config import WebhookSettings, Workflow, WorkflowsFile
from mitre.io.elastic import get_path, kibana_alerts_index
from mitre.io.events import AlertRef, EventSink, alert_event, parse_ref
from mitre.io.replay import Claims, MemoryClaims

log = logging.getLogger("attackmap.webhook")

TIMESTAMP_HEADER = "x-attackmap-timestamp"
SIGNATURE_HEADER = "x-attackmap-signature"
NONCE_HEADER = "x-attackmap-nonce"
TENANT_HEADER = "x-attackmap-tenant"


# --------------------------------------------------------------------------- signing


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Attackmap-Signature`` value: ``sha256=`` + HMAC-SHA256(secret, timestamp + "." + body)."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(
    secret: bytes, body: bytes, *, timestamp: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """Headers a sender attaches (used by tests, benchmarks and as the reference for other senders)."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    return {
        "content-type": "application/json",
        "x-attackmap-timestamp": ts,
        "x-attackmap-nonce": nonce or uuid.uuid4().hex,
        "x-attackmap-signature": sign(secret, ts, body),
    }


# --------------------------------------------------------------------------- payloads


def _alerts_of(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, Mapping):
        for key in ("alerts", "refs", "items"):
            value = payload.get(key)
            if isinstance(value, list):
                return value
        context = payload.get("context")
        if isinstance(context, Mapping) and isinstance(context.get("alerts"), list):
            return list(context["alerts"])
        return [payload]
    raise ValueError("expected a JSON object or array")


def extract_refs(payload: Any, tenant: str | None) -> list[AlertRef]:
    """Alert references from a webhook body.

    Accepted: ``{"alerts": [...]}`` (Kibana: ``{"alerts": {{{context.alerts}}}}``), a list, or a single
    object.  Each item is a resource id string, or an object with ``_index``/``_id`` (Kibana alert
    documents) or ``index``/``id``; without an index, ``kibana.alert.uuid`` is looked up in the
    tenant's (Kibana space's) alerts index.
    """
    refs: list[AlertRef] = []
    for i, item in enumerate(_alerts_of(payload)):
        if isinstance(item, str):
            refs.append(parse_ref(item, tenant))
            continue
        if not isinstance(item, Mapping):
            raise ValueError(f"alert {i}: expected an object or a reference string")
        item_tenant = tenant
        spaces = get_path(item, "kibana.space_ids")
        if item_tenant is None and isinstance(spaces, list) and spaces and isinstance(spaces[0], str):
            item_tenant = spaces[0]
        if (item.get("index") or item.get("_index")) and (item.get("id") or item.get("_id")):
            refs.append(parse_ref(item, item_tenant))
            continue
        uuid_value = get_path(item, "kibana.alert.uuid")
        if isinstance(uuid_value, str) and uuid_value:
            refs.append(AlertRef(kibana_alerts_index(item_tenant or "default"), uuid_value, item_tenant))
            continue
        raise ValueError(f"alert {i}: no _index/_id, index/id or kibana.alert.uuid")
    return refs


# --------------------------------------------------------------------------- app


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class WebhookState:
    settings: WebhookSettings
    secret: bytes | None
    nonces: Claims
    signatures: Claims


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise Rejected(413, "too_large", f"body over {limit} bytes")
        except ValueError as exc:
            raise Rejected(400, "bad_request", "invalid Content-Length") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def verify(state: WebhookState, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise Rejected unless the request is signed, fresh and not a replay; then remember it."""
    if state.secret is None:
        return  # signature checking disabled (only allowed behind mutual TLS; see the CLI)
    ts = headers.get(TIMESTAMP_HEADER)
    sig = headers.get(SIGNATURE_HEADER)
    nonce = headers.get(NONCE_HEADER)
    if not ts or not sig:
        raise Rejected(401, "unsigned", f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    try:
        ts_value = float(ts)
    except ValueError as exc:
        raise Rejected(401, "bad_timestamp", "timestamp is not unix seconds") from exc
    if abs(now - ts_value) > state.settings.tolerance_seconds:
        raise Rejected(401, "stale", f"timestamp outside ±{state.settings.tolerance_seconds:g} s")
    expected = sign(state.secret, ts, body)
    if not hmac.compare_digest(expected.encode(), sig.strip().lower().encode()):
        raise Rejected(401, "bad_signature", "signature does not match")
    if state.settings.require_nonce and not nonce:
        raise Rejected(401, "no_nonce", f"missing {NONCE_HEADER}")
    if (nonce and not state.nonces.claim(nonce, now)) or not state.signatures.claim(expected, now):
        raise Rejected(409, "replay", "nonce or signature already used")


def create_app(
    config: WorkflowsFile,
    emit: EventSink | Callable[[Sequence[dict[str, Any]]], Awaitable[None]],
    secrets: Mapping[str, bytes | None],
    *,
    clock: Callable[[], float] = time.time,
    claims: Callable[[str, float], Claims] | None = None,
) -> Starlette:
    """The webhook app: ``POST /hooks`` (first enabled workflow) and ``POST /hooks/{workflow}``.

    ``secrets`` maps workflow name → HMAC secret (None disables signature checks for that workflow).
    ``claims(namespace, window_seconds)`` makes the replay memory (default: this process's).
    """
    make_claims = claims or (lambda _namespace, window: MemoryClaims(window))
    workflows: dict[str, Workflow] = {w.name: w for w in config.workflows if w.enabled}
    default = config.workflow().name
    states = {
        name: WebhookState(
            settings=w.trigger.webhook,
            secret=secrets.get(name),
            nonces=make_claims(f"hook-nonce:{name}", 2 * w.trigger.webhook.tolerance_seconds),
            signatures=make_claims(f"hook-signature:{name}", 2 * w.trigger.webhook.tolerance_seconds),
        )
        for name, w in workflows.items()
    }

    async def hook(request: Request) -> JSONResponse:
        name = request.path_params.get("workflow") or default
        workflow = workflows.get(name)
        client = request.client.host if request.client else "-"
        if workflow is None:
            return JSONResponse({"error": "unknown_workflow", "message": f"no enabled workflow {name!r}"}, 404)
        state = states[name]
        try:
            body = await _read_body(request, state.settings.max_body_bytes)
            verify(state, request.headers, body, clock())
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Rejected(400, "invalid_json", str(exc)) from exc
            tenant = request.headers.get(TENANT_HEADER) or request.query_params.get("tenant")
            if tenant is None and isinstance(payload, Mapping) and isinstance(payload.get("tenant"), str):
                tenant = payload["tenant"]
            try:
                refs = extract_refs(payload, tenant or None)
            except ValueError as exc:
                raise Rejected(422, "invalid_payload", str(exc)) from exc
            if not refs:
                raise Rejected(422, "no_alerts", "no alerts in the body")
            if len(refs) > state.settings.max_alerts:
                raise Rejected(413, "too_many_alerts", f"more than {state.settings.max_alerts} alerts")
        except Rejected as exc:
            log.warning("webhook %s rejected from %s: %s (%s)", name, client, exc.code, exc.message)
            return JSONResponse({"error": exc.code, "message": exc.message}, exc.status)
        unique = list({ref.event_id: ref for ref in refs}.values())
        events = [alert_event(workflow.trigger.event, ref, workflow=name) for ref in unique]
        try:
            await emit(events)
        except Exception as exc:  # Prefect down or refusing: the sender should retry (same event ids)
            log.error("webhook %s: could not emit %d events: %s", name, len(events), type(exc).__name__)
            return JSONResponse({"error": "emit_failed", "message": "event bus unavailable; retry"}, 503)
        log.info("webhook %s: %d alerts from %s → %d events", name, len(refs), client, len(events))
        return JSONResponse({"accepted": len(events), "events": [e["id"] for e in events]}, 202)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "workflows": sorted(workflows)})

    return Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/hooks", hook, methods=["POST"]),
            Route("/hooks/{workflow}", hook, methods=["POST"]),
        ]
    )
