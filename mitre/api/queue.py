"""Queueing events for the flows: each event is stored in the tenant's queue index in Elasticsearch and
announced as a ``security.alert.high-risk`` Prefect event (the webhook's path), so the deployed
`enrich-alerts` flow reads it, enriches it and writes the result back to the same document. The event
id derives from the document, so a client's retry queues nothing twice."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from mitre.io.events import AlertRef, alert_event

QUEUE_INDEX_PREFIX = "attackmap-queue-"


def queue_index(tenant: str) -> str:
    return QUEUE_INDEX_PREFIX + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in tenant.lower())


class FlowQueue:
    def __init__(
        self,
        es: Any,
        emit: Callable[[Sequence[dict[str, Any]]], Awaitable[None]],
        event_name: str,
        workflow: str | None = None,
    ) -> None:
        self.es = es
        self.emit = emit
        self.event_name = event_name
        self.workflow = workflow

    async def put(self, tenant: str, events: Sequence[dict[str, Any]]) -> list[str]:
        """Store and announce the events; returns the Prefect event ids."""
        index = queue_index(tenant)
        refs = []
        for event in events:
            doc_id = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
            self.es.index(index=index, id=doc_id, document={**event, "attackmap": {"tenant": tenant}})
            refs.append(AlertRef(index, doc_id, tenant))
        self.es.indices.refresh(index=index)
        announced = [alert_event(self.event_name, ref, workflow=self.workflow) for ref in refs]
        await self.emit(announced)
        return [e["id"] for e in announced]
