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
- bodies larger than ``max_body_bytes`` get 413 (checked on Content-Length and while streaming);
- a body that takes longer than ``body_timeout_seconds`` to arrive gets 408, and a request head that
  takes longer than the server's header timeout closes the connection (`SlowClientGuard`): a client
  trickling bytes (slowloris) cannot hold connections open;
- an authentication header sent twice gets 400: ambiguous, never resolved by picking one.

Optional TLS / mutual TLS is uvicorn's (see `mitre/cli/serve.py`). The events themselves, and how they
reach Prefect, are `mitre.io.events`.
"""

from __future__ import annotations

import asyncio
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
from starlette.datastructures import Headers
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
    """Alert references from a webhook body; ValueError naming the first item that is not one.

    Accepted: ``{"alerts": [...]}`` (Kibana: ``{"alerts": {{{context.alerts}}}}``), a list, or a single
    object.  Each item is a resource id string, or an object with ``_index``/``_id`` (Kibana alert
    documents) or ``index``/``id``; without an index, ``kibana.alert.uuid`` is looked up in the
    tenant's (Kibana space's) alerts index.
    """
    refs, rejected = sort_items(payload, tenant)
    if rejected:
        raise ValueError(f"alert {rejected[0]['item']}: {rejected[0]['reason']}")
    return refs


def sort_items(payload: Any, tenant: str | None) -> tuple[list[AlertRef], list[dict[str, Any]]]:
    """(the references of a webhook body, one ``{"item", "reason"}`` per item that is not one): a bad
    item is reported, never a reason to refuse the good ones beside it (see extract_refs for shapes)."""
    refs: list[AlertRef] = []
    rejected: list[dict[str, Any]] = []
    for i, item in enumerate(_alerts_of(payload)):
        try:
            refs.append(_item_ref(item, tenant))
        except ValueError as exc:
            rejected.append({"item": i, "reason": str(exc)})
    return refs, rejected


def _item_ref(item: Any, tenant: str | None) -> AlertRef:
    if isinstance(item, str):
        return parse_ref(item, tenant)
    if not isinstance(item, Mapping):
        raise ValueError("expected an object or a reference string")
    item_tenant = tenant
    spaces = get_path(item, "kibana.space_ids")
    if item_tenant is None and isinstance(spaces, list) and spaces and isinstance(spaces[0], str):
        item_tenant = spaces[0]
    if (item.get("index") or item.get("_index")) and (item.get("id") or item.get("_id")):
        return parse_ref(item, item_tenant)
    uuid_value = get_path(item, "kibana.alert.uuid")
    if isinstance(uuid_value, str) and uuid_value:
        return AlertRef(kibana_alerts_index(item_tenant or "default"), uuid_value, item_tenant)
    raise ValueError("no _index/_id, index/id or kibana.alert.uuid")


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


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError as exc:
            raise Rejected(400, "bad_request", "invalid Content-Length") from exc
        if declared_size > limit:
            raise Rejected(413, "too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, "too_large", f"body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise Rejected(408, "too_slow", f"body not received within {timeout:g} s") from exc
    return b"".join(chunks)


_SINGLE_HEADERS = (TIMESTAMP_HEADER, SIGNATURE_HEADER, NONCE_HEADER, TENANT_HEADER, "content-length")


def _no_duplicates(headers: Headers) -> None:
    """An authentication header sent twice is ambiguous: rejected, never resolved by picking one."""
    for name in _SINGLE_HEADERS:
        if len(headers.getlist(name)) > 1:
            raise Rejected(400, "duplicate_header", f"{name} sent more than once")


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
            _no_duplicates(request.headers)
            body = await _read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_seconds)
            verify(state, request.headers, body, clock())
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Rejected(400, "invalid_json", str(exc)) from exc
            tenant = request.headers.get(TENANT_HEADER) or request.query_params.get("tenant")
            if tenant is None and isinstance(payload, Mapping) and isinstance(payload.get("tenant"), str):
                tenant = payload["tenant"]
            try:
                refs, rejected = sort_items(payload, tenant or None)
            except ValueError as exc:
                raise Rejected(422, "invalid_payload", str(exc)) from exc
            if not refs and rejected:
                raise Rejected(422, "invalid_payload", f"alert {rejected[0]['item']}: {rejected[0]['reason']}")
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
        answer: dict[str, Any] = {"accepted": len(events), "events": [e["id"] for e in events]}
        if rejected:  # the good alerts are accepted; each bad item is named with the reason
            log.warning("webhook %s: %d items from %s rejected, e.g. %s", name, len(rejected), client, rejected[0])
            answer["rejected"] = rejected
        return JSONResponse(answer, 202)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "workflows": sorted(workflows)})

    return Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/hooks", hook, methods=["POST"]),
            Route("/hooks/{workflow}", hook, methods=["POST"]),
        ]
    )


# --------------------------------------------------------------------------- slow clients


def slow_client_guard(header_timeout: float) -> type[Any]:
    """uvicorn's h11 protocol with a deadline on each request head (``http=`` of `uvicorn.run`).

    uvicorn times out idle keep-alive connections, but not a connection whose request head never
    completes: a client that trickles a header byte at a time (slowloris) holds it, and every worker
    slot, for ever. Here the head of each request — the first right after connecting, each next one
    after a response — must arrive within ``header_timeout`` seconds, or the connection is closed.
    (Bodies have their own deadline: `WebhookSettings.body_timeout_seconds`, 408.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowClientGuard(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        _head_deadline: asyncio.TimerHandle | None = None

        def _arm_head_deadline(self) -> None:
            self._waiting_for = self.cycle  # a new cycle starts when the head is complete
            self._head_deadline = self.loop.call_later(header_timeout, self._head_too_slow)

        def _head_too_slow(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                log.warning("webhook: request head not received within %g s; connection closed", header_timeout)
                self.transport.close()

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._waiting_for:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._disarm()
                self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return SlowClientGuard
