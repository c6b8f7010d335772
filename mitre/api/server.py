"""One ASGI app for `attackmap serve`: the signed webhook (when Prefect is configured), the enrichment
API and review page, and the federation inbound endpoint (when a peers file is given)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from mitre.api.app import EnrichmentApi
from mitre.io.exports.event import CommonEvent
from mitre.io.federation.envelope import FeedbackItem
from mitre.io.federation.inbound import Inbound

FEDERATION_PATH = "/v1/federation/inbound"


@dataclass
class InboundFiles:
    """Where peers' findings and feedback land: one NDJSON file per tenant, so tenants never mix."""

    directory: Path

    def _append(self, name: str, tenant: str, lines: Sequence[bytes]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in tenant)
        with (self.directory / f"{name}-{safe}.ndjson").open("ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))

    def findings(self, peer: str, findings: Sequence[CommonEvent]) -> None:
        # The inbound endpoint accepts only findings of the request's tenant: never None here.
        for tenant in {f.tenant for f in findings}:
            rows = [
                orjson.dumps({"peer": peer, **f.model_dump(mode="json", exclude_defaults=True)})
                for f in findings
                if f.tenant == tenant
            ]
            self._append("findings", str(tenant), rows)

    def feedback(self, peer: str, items: Sequence[FeedbackItem]) -> None:
        for tenant in {f.tenant for f in items}:
            rows = [orjson.dumps({"peer": peer, **f.model_dump(mode="json")}) for f in items if f.tenant == tenant]
            self._append("feedback", tenant, rows)


def server_app(*, api: EnrichmentApi | None, inbound: Inbound | None, webhook: Starlette | None = None) -> Starlette:
    routes: list[BaseRoute] = list(webhook.routes) if webhook is not None else []
    parts = ["webhook"] if webhook is not None else []
    if api is not None:
        routes += api.routes()
        parts.append("api")
    if inbound is not None:
        routes.append(Route(FEDERATION_PATH, inbound.handle, methods=["POST"]))
        parts.append("federation")

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "serving": parts})

    if webhook is None:
        routes.append(Route("/healthz", health, methods=["GET"]))
    return Starlette(routes=routes)
