"""The enrichment API: other detection services post events and get them back enriched; analysts judge
mappings; admins set opt-outs and run their tenant's budget. Every route but the page and the health
check needs ``Authorization: Bearer <API key>``; the key's tenant is the only tenant it can touch.

| route | permission | what |
|---|---|---|
| ``POST /v1/enrich`` | enrich | one event or ``{"events": [...]}`` → enriched, as ECS and as the common event |
| ``POST /v1/queue`` | queue | store the events for the flows (Elasticsearch + a Prefect event each), 202 |
| ``GET /v1/review`` | read | low-confidence or disputed mappings of the tenant, with their evidence |
| ``POST /v1/feedback`` | feedback | accept, reject or correct a mapping (by ``mapping_key``) |
| ``GET /v1/telemetry`` | read | skip / map / extend counts and precision from feedback, per rule |
| ``PUT /v1/opt-outs`` | admin | opt a rule in or out for the tenant |
| ``GET /v1/budget``, ``POST /v1/budget/kill``, ``POST /v1/budget/resume`` | admin | the tenant's budget |
| ``GET /review`` | — | the review page (it asks for a key and calls the routes above) |

Each request and each refusal is one line of the audit trail (`mitre.api.audit`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mitre.api.audit import AuditLog
from mitre.api.keys import ApiKey, ApiKeys
from mitre.api.queue import FlowQueue
from mitre.config import Environment
from mitre.engine import Engine
from mitre.enrich import PROVENANCE_FIELD
from mitre.features import TENANT_FIELDS, FieldReader, first_text
from mitre.feedback.loop import rule_of
from mitre.feedback.models import Feedback, OptOut, Verdict
from mitre.feedback.store import telemetry
from mitre.io.exports.event import from_enriched
from mitre.models import Outcome, OutcomeStatus, RawAlert

_TENANT = FieldReader(TENANT_FIELDS)


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mapping_key: str = Field(min_length=16)
    verdict: Verdict
    techniques: list[str] = Field(default_factory=list)
    comment: str | None = Field(None, max_length=2000)
    alert: dict[str, Any] | None = Field(None, description="the enriched alert, when it is not in the review queue")


class OptOutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule_id: str = Field(min_length=1)
    opted_out: bool = True


@dataclass
class EnrichmentApi:
    engine: Engine
    keys: ApiKeys
    audit: AuditLog
    env: Environment
    queue: FlowQueue | None = None
    max_body_bytes: int = 1_048_576
    max_events: int = 1000
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ plumbing

    def _key(self, request: Request, permission: str) -> ApiKey:
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
        key = self.keys.authenticate(secret) if secret else None
        if key is None:
            raise Refused(401, "unauthenticated", "a valid API key is required (Authorization: Bearer …)")
        if not key.may(permission):
            raise Refused(403, "forbidden", f"role {key.role} may not {permission}")
        return key

    async def _json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Refused(413, "too_large", f"body over {self.max_body_bytes} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise Refused(413, "too_large", f"body over {self.max_body_bytes} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, "invalid_json", str(exc)) from exc

    def _record(self, request: Request, key: ApiKey | None, status: int, outcome: str, **detail: Any) -> None:
        self.audit.write(
            {
                "channel": "api",
                "client": request.client.host if request.client else None,
                "method": request.method,
                "path": request.url.path,
                "key_id": key.id if key else None,
                "role": key.role if key else None,
                "tenant": key.tenant if key else None,
                "status": status,
                "outcome": outcome,
                **detail,
            }
        )

    async def _guarded(self, request: Request, permission: str, handler: Any) -> Response:
        key = None
        try:
            key = self._key(request, permission)
            response, detail = await handler(request, key)
        except Refused as exc:
            self._record(request, key, exc.status, exc.code, message=exc.message)
            return JSONResponse({"error": exc.code, "message": exc.message}, exc.status)
        self._record(request, key, response.status_code, "ok", **detail)
        return response

    def _events(self, payload: Any, key: ApiKey) -> list[dict[str, Any]]:
        events = payload.get("events") if isinstance(payload, Mapping) and "events" in payload else payload
        events = events if isinstance(events, list) else [events]
        if not events or not all(isinstance(e, dict) for e in events):
            raise Refused(422, "invalid_payload", 'expected an event object or {"events": [objects]}')
        if len(events) > self.max_events:
            raise Refused(413, "too_many_events", f"more than {self.max_events} events")
        for event in events:
            owner = first_text(_TENANT.read(event), TENANT_FIELDS)
            if owner is not None and owner != key.tenant:
                raise Refused(403, "wrong_tenant", f"an event of tenant {owner!r} under a key of {key.tenant!r}")
        return events

    # ------------------------------------------------------------ routes

    def _enrich_now(self, tenant: str, events: list[dict[str, Any]]) -> list[Outcome]:
        with self._engine_lock:
            return self.engine.process_batch([RawAlert(line=None, alert=e) for e in events], tenant=tenant)

    async def enrich(self, request: Request) -> Response:
        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            events = self._events(await self._json(request), key)
            outcomes = await run_in_threadpool(self._enrich_now, key.tenant, events)
            results = []
            for outcome in outcomes:
                entry: dict[str, Any] = {"status": outcome.status.value, "reason": outcome.reason}
                if outcome.alert is not None:
                    entry["ecs"] = outcome.alert
                if outcome.status is OutcomeStatus.ENRICHED and outcome.alert is not None:
                    entry["event"] = from_enriched(outcome.alert).model_dump(mode="json")
                results.append(entry)
            counts = {s.value: sum(o.status is s for o in outcomes) for s in OutcomeStatus}
            return JSONResponse({"results": results}), {"events": len(events), **counts}

        return await self._guarded(request, "enrich", handle)

    async def queue_events(self, request: Request) -> Response:
        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            if self.queue is None:
                raise Refused(503, "no_queue", "queueing needs Elasticsearch and Prefect (PREFECT_API_URL)")
            events = self._events(await self._json(request), key)
            try:
                ids = await self.queue.put(key.tenant, events)
            except Exception as exc:  # the event bus or ES refused: the client retries (same ids)
                raise Refused(503, "queue_failed", type(exc).__name__) from exc
            return JSONResponse({"queued": len(ids), "events": ids}, 202), {"events": len(ids)}

        return await self._guarded(request, "queue", handle)

    def _loop(self) -> Any:
        if self.engine.feedback is None:
            raise Refused(503, "no_feedback", "feedback is disabled in workflows.yaml (feedback.enabled)")
        return self.engine.feedback

    async def review(self, request: Request) -> Response:
        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            loop = self._loop()
            limit = min(int(request.query_params.get("limit", "100") or 100), 500)
            items = await run_in_threadpool(loop.log.review, key.tenant, limit) if loop.log else []
            latest = await run_in_threadpool(loop.corrections.latest, [i.mapping_key for i in items])
            body = [
                i.model_copy(update={"verdict": latest[i.mapping_key].verdict if i.mapping_key in latest else None})
                for i in items
            ]
            return JSONResponse({"items": [i.model_dump(mode="json") for i in body]}), {"items": len(body)}

        return await self._guarded(request, "read", handle)

    def _owned_alert(self, loop: Any, key: ApiKey, ask: FeedbackRequest) -> dict[str, Any]:
        """The alert a feedback is about, if it is the key's tenant's; 404 otherwise (nothing leaks)."""
        item = loop.log.item(ask.mapping_key) if loop.log else None
        if item is not None and item.tenant == key.tenant:
            return dict(item.alert)
        alert = ask.alert
        provenance = alert.get(PROVENANCE_FIELD) if alert else None
        if (
            isinstance(provenance, Mapping)
            and provenance.get("mapping_key") == ask.mapping_key
            and provenance.get("tenant") == key.tenant
        ):
            return dict(alert or {})
        raise Refused(404, "unknown_mapping", "no mapping with that key in this tenant")

    async def feedback(self, request: Request) -> Response:
        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            loop = self._loop()
            try:
                ask = FeedbackRequest.model_validate(await self._json(request))
            except ValidationError as exc:
                raise Refused(422, "invalid_payload", str(exc).splitlines()[0]) from exc
            catalog = self.engine.catalog
            resolved = [catalog.resolve(t) for t in ask.techniques]
            unknown = [r.requested for r in resolved if r.active_id is None]
            if unknown:
                raise Refused(422, "unknown_technique", f"not techniques of ATT&CK {catalog.version}: {unknown}")
            if ask.verdict == "correct" and not resolved:
                raise Refused(422, "no_techniques", "a correction names the right techniques")
            alert = self._owned_alert(loop, key, ask)
            rule_id, rule_name, alert_id = rule_of(alert)
            stored = loop.corrections.add(
                Feedback(
                    mapping_key=ask.mapping_key,
                    tenant=key.tenant,
                    verdict=ask.verdict,
                    techniques=tuple(dict.fromkeys(r.active_id for r in resolved if r.active_id)),
                    analyst=key.name,
                    comment=ask.comment,
                    alert_id=alert_id,
                    rule_id=rule_id,
                    rule_name=rule_name,
                    alert=alert,
                )
            )
            body = {"stored": stored.model_dump(mode="json", exclude={"alert"})}
            return JSONResponse(body, 201), {"verdict": ask.verdict, "mapping_key": ask.mapping_key}

        return await self._guarded(request, "feedback", handle)

    async def telemetry(self, request: Request) -> Response:
        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            loop = self._loop()
            if loop.log is None:
                raise Refused(503, "no_telemetry", "no review log")
            rows, totals = await run_in_threadpool(telemetry, loop.log, loop.corrections, key.tenant)
            body = {
                "totals": totals,
                "rules": [r.model_dump(mode="json") | {"precision": r.precision} for r in rows],
            }
            return JSONResponse(body), {}

        return await self._guarded(request, "read", handle)

    async def opt_out(self, request: Request) -> Response:
        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            loop = self._loop()
            try:
                ask = OptOutRequest.model_validate(await self._json(request))
            except ValidationError as exc:
                raise Refused(422, "invalid_payload", str(exc).splitlines()[0]) from exc
            loop.corrections.set_opt_out(
                OptOut(tenant=key.tenant, rule_id=ask.rule_id, opted_out=ask.opted_out, by=key.name)
            )
            return JSONResponse({"rule_id": ask.rule_id, "opted_out": ask.opted_out}), ask.model_dump()

        return await self._guarded(request, "admin", handle)

    def _budget(self, tenant: str) -> Any:
        from mitre.budget.budget import Budget
        from mitre.budget.ledger import open_ledger

        workflow = self.engine.workflow
        account, settings = workflow.budget_account(tenant)
        return Budget(open_ledger(workflow.budget, self.env.home), settings, account, sync_s=0)

    async def budget(self, request: Request) -> Response:
        action = request.path_params.get("action")

        async def handle(request: Request, key: ApiKey) -> tuple[Response, dict[str, Any]]:
            from mitre.budget.report import status_report

            budget = self._budget(key.tenant)
            if action == "kill":
                budget.kill(reason=f"api: {key.name}", by=key.name)
            elif action == "resume":
                budget.resume(by=key.name)
            elif action is not None:
                raise Refused(404, "unknown_action", f"no budget action {action!r}")
            report = await run_in_threadpool(status_report, budget)
            return JSONResponse(report.as_dict()), {"action": action or "status"}

        return await self._guarded(request, "admin", handle)

    async def page(self, _: Request) -> Response:
        return HTMLResponse((resources.files("mitre.api") / "review_page.html").read_text())

    def routes(self) -> Sequence[Route]:
        return [
            Route("/v1/enrich", self.enrich, methods=["POST"]),
            Route("/v1/queue", self.queue_events, methods=["POST"]),
            Route("/v1/review", self.review, methods=["GET"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/v1/telemetry", self.telemetry, methods=["GET"]),
            Route("/v1/opt-outs", self.opt_out, methods=["PUT"]),
            Route("/v1/budget", self.budget, methods=["GET"]),
            Route("/v1/budget/{action}", self.budget, methods=["POST"]),
            Route("/review", self.page, methods=["GET"]),
        ]
