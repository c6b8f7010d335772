"""The outbound feed: common events to a peer as signed findings, over HTTPS with mutual TLS.

`FederationSink` is one more sink of the exports' delivery layer (`mitre.io.exports.delivery`), so a
peer is fed like Splunk or a TAXII collection: the flows, the event worker and the webhook path hand it
enriched alerts through `outputs.exports` (type ``federation``), `attackmap federation send` through the
same `Delivery`. Spooling, retries with backoff, give-up and the dead-letter file are that layer's;
this module only turns a batch into signed requests and says what became of each finding:

- one request per tenant in a batch (the tenant is signed and checked by the peer), split so no body
  exceeds the peer's size cap; a finding with no tenant goes as the ``default`` tenant (Kibana's
  default space), and a tenant the peer is not configured for is skipped;
- accepted → delivered (the peer de-duplicates by finding key, so a batch sent again after a lost
  answer, or after a later tenant's request failed, is delivered once);
- refused for good (400, 401, 403, 404, 409, 413, 422) → that request's findings are dead-lettered
  with the reason, the rest of the batch goes on;
- not now (connection refused, timeout, 408, 429, 5xx) → the whole batch stays spooled and is retried
  (the peer's Retry-After honoured).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from mitre.io.exports.event import CommonEvent
from mitre.io.exports.sink import PermanentError, SendResult, TransientError
from mitre.io.federation.signing import Signer, signed_headers

UNSCOPED_TENANT = "default"
_PERMANENT = frozenset({400, 401, 403, 404, 409, 413, 422})
_HEAD, _SEPARATOR, _TAIL = b'{"findings":[', b",", b"]}"


def mtls_client(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None, timeout: float = 10.0
) -> httpx.Client:
    """An HTTPS client that trusts `ca_file` (the system's CAs when None) and, with a certificate,
    presents it (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return httpx.Client(verify=context, timeout=timeout)


def request_body(findings: Sequence[bytes]) -> bytes:
    """An `Envelope` of findings already serialised (`CommonEvent.to_json`), as the peer receives it."""
    return _HEAD + _SEPARATOR.join(findings) + _TAIL


class FederationSink:
    """One peer's inbound endpoint, as a sink of the delivery layer."""

    def __init__(
        self,
        url: str,
        signer: Signer,
        client: httpx.Client,
        *,
        tenants: Sequence[str] | None = None,
        max_request_bytes: int = 1_048_576,
    ) -> None:
        self.url = url
        self.signer = signer
        self.client = client
        self.tenants = frozenset(tenants) if tenants is not None else None
        self.max_request_bytes = max_request_bytes

    @property
    def name(self) -> str:
        """Host and port, plus a digest of what else makes it another feed (path, key id, tenants): two
        feeds never adopt each other's spool."""
        url = httpx.URL(self.url)
        what = f"{self.url}\x00{self.signer.key_id}\x00{sorted(self.tenants) if self.tenants is not None else '*'}"
        return f"federation-{url.host}-{url.port or 'default'}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"

    def send(self, events: Sequence[CommonEvent]) -> SendResult:
        result = SendResult()
        by_tenant: dict[str, list[tuple[int, bytes]]] = {}
        for position, event in enumerate(events):
            tenant = event.tenant or UNSCOPED_TENANT
            if self.tenants is not None and tenant not in self.tenants:
                result.skipped[position] = f"tenant {tenant!r} is not federated to this peer"
                continue
            finding = event if event.tenant else event.model_copy(update={"tenant": tenant})
            by_tenant.setdefault(tenant, []).append((position, finding.to_json()))
        for tenant, findings in by_tenant.items():
            for positions, body in self._requests(findings, result):
                try:
                    self._post(tenant, body)
                except PermanentError as exc:
                    result.rejected.update({p: f"peer refused: {exc}" for p in positions})
        return result

    def _requests(self, findings: list[tuple[int, bytes]], result: SendResult) -> Iterator[tuple[list[int], bytes]]:
        """Request bodies of whole findings, each within `max_request_bytes`; a finding too large on
        its own is rejected."""
        room = self.max_request_bytes - len(_HEAD) - len(_TAIL)
        positions: list[int] = []
        parts: list[bytes] = []
        size = 0
        for position, part in findings:
            if len(part) > room:
                result.rejected[position] = f"{len(part)} bytes: over the peer's {self.max_request_bytes} per request"
                continue
            if parts and size + len(_SEPARATOR) + len(part) > room:
                yield positions, request_body(parts)
                positions, parts, size = [], [], 0
            size += len(part) + (len(_SEPARATOR) if parts else 0)
            positions.append(position)
            parts.append(part)
        if parts:
            yield positions, request_body(parts)

    def _post(self, tenant: str, body: bytes) -> None:
        try:
            response = self.client.post(self.url, content=body, headers=signed_headers(self.signer, tenant, body))
        except httpx.HTTPError as exc:
            raise TransientError(f"{self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code < 300:
            return
        detail = f"HTTP {response.status_code} {response.text[:200]}"
        if response.status_code in _PERMANENT:
            raise PermanentError(detail)
        retry_after = response.headers.get("retry-after")
        raise TransientError(detail, float(retry_after) if retry_after and retry_after.isdigit() else None)

    def close(self) -> None:
        self.client.close()
