"""Splunk HTTP Event Collector sink: common events as HEC JSON events, batched.

The wire format, as Splunk documents it: ``POST /services/collector/event`` with ``Authorization:
Splunk <token>``; the body is the events' JSON envelopes back to back, each with ``time`` (epoch
seconds), ``host``, ``source``, ``sourcetype``, ``index``, the ``event`` itself, and ``fields`` — indexed
fields, here the technique, tactic and tenant values, so searches like ``technique_ids=T1003.001`` need
no extraction. With indexer acknowledgement on, every request carries ``X-Splunk-Request-Channel``
and a batch counts as delivered only once ``/services/collector/ack`` says its ``ackId`` is indexed.

Errors map onto the delivery layer: 429, 503 (code 9 "Server is busy", 18–20 unhealthy) and 5xx are
retried (Retry-After honoured); 401/403 (token missing, invalid or disabled) refuse every event; a 400
"Invalid data format" names the bad event (``invalid-event-number``): the events before it were
indexed, it is dead-lettered, the rest are sent again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from mitre.io.exports.event import CommonEvent
from mitre.io.exports.sink import PermanentError, SendResult, TransientError

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def hec_envelope(event: CommonEvent, *, index: str | None, source: str, sourcetype: str, host: str | None) -> bytes:
    """One HEC event: metadata, the common event, and the ATT&CK ids as indexed fields."""
    fields: dict[str, Any] = {"technique_ids": list(event.technique_ids), "tactic_ids": list(event.tactic_ids)}
    if event.tenant:
        fields["tenant"] = event.tenant
    if event.provenance.catalog_version:
        fields["attack_version"] = event.provenance.catalog_version
    envelope: dict[str, Any] = {
        "time": round(event.timestamp.timestamp(), 3),
        "source": source,
        "sourcetype": sourcetype,
        "event": event.model_dump(mode="json", exclude_defaults=True),
        "fields": {k: v for k, v in fields.items() if v},
    }
    event_host = host or next((i.value for i in event.related_indicators if i.type == "host"), None)
    if event_host:
        envelope["host"] = event_host
    if index:
        envelope["index"] = index
    return orjson.dumps(envelope)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"text": response.text[:200]}
    return data if isinstance(data, dict) else {"text": str(data)[:200]}


class HecSink:
    """Sends common events to one HEC endpoint and index."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        index: str | None = None,
        source: str = "attackmap",
        sourcetype: str = "attackmap:event",
        host: str | None = None,
        ack: bool = False,
        ack_timeout: float = 30.0,
        verify: bool | str = True,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.index = index
        self.source = source
        self.sourcetype = sourcetype
        self.host = host
        self.ack = ack
        self.ack_timeout = ack_timeout
        self.channel = str(uuid.uuid4())
        headers = {"Authorization": f"Splunk {token}", "Content-Type": "application/json"}
        if ack:
            headers["X-Splunk-Request-Channel"] = self.channel
        self._client = httpx.Client(headers=headers, verify=verify, timeout=timeout, transport=transport)

    @property
    def name(self) -> str:
        host = httpx.URL(self.url).host
        port = httpx.URL(self.url).port
        return f"hec-{host}-{port or 'default'}-{self.index or 'default'}"

    def send(self, events: Sequence[CommonEvent]) -> SendResult:
        bodies = [
            hec_envelope(e, index=self.index, source=self.source, sourcetype=self.sourcetype, host=self.host)
            for e in events
        ]
        try:
            response = self._client.post(self.url + EVENT_PATH, content=b"\n".join(bodies))
        except httpx.TransportError as exc:
            raise TransientError(f"HEC unreachable: {type(exc).__name__}: {exc}") from exc
        body = _body(response)
        detail = f"HTTP {response.status_code} code {body.get('code')} {body.get('text', '')!r}"
        if response.status_code == 200:
            if self.ack and "ackId" in body:
                self._wait_for_ack(int(body["ackId"]))
            return SendResult()
        if response.status_code in _RETRY_STATUS:
            raise TransientError(detail, _retry_after(response))
        if response.status_code in (401, 403):
            raise PermanentError(detail)
        if response.status_code == 400 and "invalid-event-number" in body:
            bad = int(body["invalid-event-number"])
            return SendResult(
                rejected={bad: detail},
                retry={i: "sent again after an invalid event in its batch" for i in range(bad + 1, len(events))},
            )
        raise PermanentError(detail)

    def _wait_for_ack(self, ack_id: int) -> None:
        """Poll the channel's ack until the batch is indexed; a batch never acked is sent again."""
        deadline = time.monotonic() + self.ack_timeout
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                response = self._client.post(self.url + ACK_PATH, json={"acks": [ack_id]})
            except httpx.TransportError as exc:
                raise TransientError(f"HEC ack unreachable: {exc}") from exc
            if response.status_code == 200 and _body(response).get("acks", {}).get(str(ack_id)) is True:
                return
            if response.status_code in (401, 403):
                raise PermanentError(f"ack refused: HTTP {response.status_code} {_body(response)}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise TransientError(f"ackId {ack_id} not indexed within {self.ack_timeout:.0f}s: sent again")

    def close(self) -> None:
        self._client.close()
