"""Elasticsearch sink: common events into a data stream (or an index), in bulk, under an index template
with ECS mappings.

A document is the common event as it is (so reading it back gives the event, unchanged), plus
``@timestamp`` and ECS ``related.*`` arrays derived from it; ECS names the event does not use itself
(``threat.technique.id``, ``event.id``, ``message``, ``organization.id``, …) are field aliases, so ECS
queries and Kibana's views work without a second copy. The event's ``source``, ``destination`` and
``rule`` objects already are ECS.

Each event is created under its `key` (``op_type: create``, which data streams require): a second
delivery of the same event answers 409 and counts as delivered, so retries never duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from mitre.compliance import FIELDS as CONTROL_FIELDS
from mitre.io.exports.event import CommonEvent
from mitre.io.exports.sink import SendResult, TransientError

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_RELATED = {"ip": "ip", "hash": "hash", "user": "user", "host": "hosts"}


def _kw() -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": 1024}


def _endpoint() -> dict[str, Any]:
    return {"properties": {"ip": {"type": "ip"}, "port": {"type": "long"}, "domain": _kw(), "address": _kw()}}


def event_mappings() -> dict[str, Any]:
    """The common event's fields with ECS types, ECS aliases, and ``related.*``."""
    return {
        "dynamic": False,
        "properties": {
            "@timestamp": {"type": "date"},
            "timestamp": {"type": "date"},
            "schema_version": {"type": "integer"},
            "id": _kw(),
            "source": _endpoint(),
            "destination": _endpoint(),
            "technique_ids": _kw(),
            "tactic_ids": _kw(),
            "confidence": {"type": "float"},
            "technique_confidence": {"type": "flattened"},
            "related_indicators": {
                "properties": {"type": _kw(), "value": _kw(), "field": _kw(), "hash_algorithm": _kw()}
            },
            "source_service": _kw(),
            "event_type": _kw(),
            "severity": _kw(),
            "risk_score": {"type": "float"},
            "description": {"type": "text"},
            "rule": {"properties": {"id": _kw(), "name": _kw()}},
            "tenant": _kw(),
            "execution_fingerprint": _kw(),
            **{name: _kw() for name in CONTROL_FIELDS.values()},
            "provenance": {
                "properties": {
                    name: _kw()
                    for name in (
                        "catalog_version",
                        "catalog_fingerprint",
                        "mapper",
                        "model",
                        "decision",
                        "reason",
                        "provenance_hash",
                        "enriched_at",
                    )
                }
                | {"cache_hit": {"type": "boolean"}}
            },
            "related": {"properties": {name: _kw() for name in _RELATED.values()}},
            # ECS names for what the event already holds.
            "threat": {
                "properties": {
                    "technique": {"properties": {"id": {"type": "alias", "path": "technique_ids"}}},
                    "tactic": {"properties": {"id": {"type": "alias", "path": "tactic_ids"}}},
                }
            },
            "event": {
                "properties": {
                    "id": {"type": "alias", "path": "id"},
                    "module": {"type": "alias", "path": "source_service"},
                    "risk_score": {"type": "alias", "path": "risk_score"},
                }
            },
            "message": {"type": "alias", "path": "description"},
            "organization": {"properties": {"id": {"type": "alias", "path": "tenant"}}},
            "log": {"properties": {"level": {"type": "alias", "path": "severity"}}},
        },
    }


def to_document(event: CommonEvent) -> dict[str, Any]:
    doc = event.model_dump(mode="json", exclude_defaults=True)
    doc["@timestamp"] = doc["timestamp"]
    related: dict[str, list[str]] = {}
    for indicator in event.related_indicators:
        if indicator.type in _RELATED:
            related.setdefault(_RELATED[indicator.type], []).append(indicator.value)
    if related:
        doc["related"] = related
    return doc


def from_document(source: dict[str, Any]) -> CommonEvent:
    """The event a document holds (what `to_document` added is left out)."""
    return CommonEvent.model_validate({k: v for k, v in source.items() if k not in ("@timestamp", "related")})


class ElasticExportSink:
    """Creates events in one data stream (default) or index; installs its index template once."""

    def __init__(self, client: Any, target: str, *, data_stream: bool = True, refresh: bool | str = False) -> None:
        self.client = client
        self.target = target
        self.data_stream = data_stream
        self.refresh = refresh
        self._ready = False

    @property
    def name(self) -> str:
        return f"elasticsearch-{self.target}"

    def ensure_template(self) -> None:
        """A composable index template for the target (and, for a data stream, the stream itself)."""
        body: dict[str, Any] = {
            "index_patterns": [self.target if self.data_stream else f"{self.target}*"],
            "priority": 200,
            "template": {"mappings": event_mappings()},
            "_meta": {"managed_by": "attackmap", "description": "attackmap common events (ECS)"},
        }
        if self.data_stream:
            body["data_stream"] = {}
        self.client.indices.put_index_template(name=f"attackmap-events-{self.target}", **body)
        self._ready = True

    def send(self, events: Sequence[CommonEvent]) -> SendResult:
        try:
            if not self._ready:
                self.ensure_template()
            operations: list[Any] = []
            for event in events:
                operations.append({"create": {"_index": self.target, "_id": event.key}})
                operations.append(to_document(event))
            kwargs: dict[str, Any] = {"refresh": self.refresh} if self.refresh else {}
            response = self.client.bulk(
                operations=operations, filter_path=["errors", "items.*.status", "items.*.error"], **kwargs
            )
        except Exception as exc:  # connection refused, timeouts, 429/5xx on the whole request
            status = getattr(getattr(exc, "meta", None), "status", None)
            if isinstance(status, int) and status not in _RETRY_STATUS and 400 <= status < 500:
                raise
            raise TransientError(f"Elasticsearch: {type(exc).__name__}: {exc}") from exc
        result = SendResult()
        if not response.get("errors"):
            return result
        for position, item in enumerate(response["items"]):
            outcome = item.get("create", {})
            status = int(outcome.get("status", 500))
            if status < 300 or status == 409:  # 409: created by an earlier delivery
                continue
            reason = orjson.dumps(outcome.get("error", {})).decode()[:300]
            if status in _RETRY_STATUS:
                result.retry[position] = f"{status} {reason}"
            else:
                result.rejected[position] = f"{status} {reason}"
        return result

    def close(self) -> None:
        return None
