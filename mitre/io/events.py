"""The Prefect event contract: one `security.alert.high-risk` event per alert to enrich.

Whoever announces an alert (the webhook, the poller, benchmarks) and whoever acts on it (the
deployment trigger, the event-stream worker) agree here on its shape: the resource id
``attackmap.alert/<index>/<id>``, an event id derived from the alert's index and id (so a retried
announcement never enriches an alert twice), and ``POST /api/events`` as the way in (Prefect OSS
has no inbound webhooks). No Prefect import: it speaks the events REST API with httpx.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson

RESOURCE_PREFIX = "attackmap.alert/"
# Prefect's server keeps at most 256 undelivered events per live-stream subscriber and drops the rest;
# smaller posts give subscribers a chance to keep up (the worker reconciles the remainder).
EVENTS_PER_POST = 100
# Fixed namespace: event ids are uuid5(namespace, "<index>/<id>"), identical in every process.
EVENT_NAMESPACE = uuid.UUID("6f1c7a52-3b1e-5f0c-9a57-2d0f8e4c1b90")


@dataclass(frozen=True)
class AlertRef:
    """Where an alert lives: enough to read it and write the engine's fields back."""

    index: str
    id: str
    tenant: str | None = None

    @property
    def resource_id(self) -> str:
        return alert_resource_id(self.index, self.id)

    @property
    def event_id(self) -> uuid.UUID:
        return alert_event_id(self.index, self.id)


def alert_resource_id(index: str, doc_id: str) -> str:
    """``attackmap.alert/<index>/<id>`` (index names cannot contain '/', ids may)."""
    return f"{RESOURCE_PREFIX}{index}/{doc_id}"


def parse_ref(ref: str | Mapping[str, Any], tenant: str | None = None) -> AlertRef:
    """An AlertRef from a resource id string or a ``{"index", "id"}`` mapping (``_index``/``_id`` too)."""
    if isinstance(ref, str):
        rest = ref.removeprefix(RESOURCE_PREFIX)
        index, sep, doc_id = rest.partition("/")
        if not sep or not index or not doc_id:
            raise ValueError(f"not an alert reference: {ref!r} (expected {RESOURCE_PREFIX}<index>/<id>)")
        return AlertRef(index, doc_id, tenant)
    index_value = ref.get("index") or ref.get("_index")
    id_value = ref.get("id") or ref.get("_id")
    if not isinstance(index_value, str) or not isinstance(id_value, str) or not index_value or not id_value:
        raise ValueError("an alert reference needs string 'index' and 'id' (or '_index' and '_id')")
    index, doc_id = index_value, id_value
    found = ref.get("tenant")
    return AlertRef(index, doc_id, found if isinstance(found, str) and found else tenant)


def alert_event_id(index: str, doc_id: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, f"{index}/{doc_id}")


def alert_event(
    event_name: str, ref: AlertRef, *, workflow: str | None = None, occurred: datetime | None = None
) -> dict[str, Any]:
    """The Prefect event (REST shape) announcing one alert to enrich."""
    resource = {
        "prefect.resource.id": ref.resource_id,
        "prefect.resource.name": ref.id,
        "attackmap.index": ref.index,
        "attackmap.alert_id": ref.id,
    }
    if ref.tenant:
        resource["attackmap.tenant"] = ref.tenant
    return {
        "id": str(ref.event_id),
        "occurred": (occurred or datetime.now(UTC)).isoformat(),
        "event": event_name,
        "resource": resource,
        "related": [],
        "payload": {"index": ref.index, "id": ref.id, "tenant": ref.tenant, "workflow": workflow},
    }


class EventSink(Protocol):
    async def __call__(self, events: Sequence[dict[str, Any]]) -> None: ...


class PrefectEvents:
    """Posts events to a Prefect server's ``/api/events`` (a JSON array; 204 on success)."""

    def __init__(self, api_url: str, *, timeout: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        self.url = api_url.rstrip("/") + "/events"
        self.client = client or httpx.AsyncClient(timeout=timeout)

    async def __call__(self, events: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(events), EVENTS_PER_POST):
            resp = await self.client.post(
                self.url,
                content=orjson.dumps(list(events[start : start + EVENTS_PER_POST])),
                headers={"content-type": "application/json"},
            )
            resp.raise_for_status()

    async def aclose(self) -> None:
        await self.client.aclose()


def post_events(api_url: str, events: Sequence[dict[str, Any]], *, timeout: float = 10.0) -> None:
    """Synchronous ``POST /api/events`` (poller, benchmarks)."""
    for start in range(0, len(events), EVENTS_PER_POST):
        resp = httpx.post(
            api_url.rstrip("/") + "/events",
            content=orjson.dumps(list(events[start : start + EVENTS_PER_POST])),
            headers={"content-type": "application/json"},
            timeout=timeout,
        )
        resp.raise_for_status()


class SeenWithin:
    """Values seen within a sliding window (nonces, signatures), bounded in size; in memory, per process."""

    def __init__(self, window_seconds: float, max_items: int = 200_000) -> None:
        self.window = window_seconds
        self.max_items = max_items
        self._seen: OrderedDict[str, float] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._seen:
            _key, at = next(iter(self._seen.items()))
            if now - at <= self.window and len(self._seen) <= self.max_items:
                break
            self._seen.popitem(last=False)

    def __contains__(self, value: str) -> bool:
        return value in self._seen

    def seen(self, value: str, now: float) -> bool:
        """Whether ``value`` was added within the window before ``now``."""
        at = self._seen.get(value)
        return at is not None and now - at <= self.window

    def add(self, value: str, now: float) -> None:
        self._expire(now)
        self._seen[value] = now
