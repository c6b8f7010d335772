"""The inbound endpoint for peers' findings and feedback.

Checked in this order, and nothing is emitted unless every check passes: the key id is one of a peer's
(`signing.PeersFile`, re-read when it changes); the peer is within its request rate; the body is within
the peer's size cap; the timestamp is within ``tolerance_seconds``; the signature verifies; the tenant
header is one the peer may speak for, and so is every finding's and feedback item's tenant; the nonce is
used for the first time (`store.ReceiverStore`, shared by every receiver process). Accepted findings are
de-duplicated by key, so a sender's retry is delivered once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from mitre.io.exports.event import CommonEvent
from mitre.io.federation.envelope import Envelope, FeedbackItem
from mitre.io.federation.signing import (
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TENANT_HEADER,
    TIMESTAMP_HEADER,
    PeersFile,
    Verifier,
    signed_message,
)
from mitre.io.replay import FederationMemory

log = logging.getLogger("attackmap.federation")

FindingSink = Callable[[str, Sequence[CommonEvent]], None]
FeedbackSink = Callable[[str, Sequence[FeedbackItem]], None]
AuditSink = Callable[[Mapping[str, object]], None]


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, peer: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.peer = status, code, message, peer


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimits:
    """A token bucket per peer: ``requests_per_minute`` on average, bursts up to a minute's worth.
    Per receiver process (a cap of N per process)."""

    buckets: dict[str, _Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self, peer: str, per_minute: int, now: float) -> bool:
        with self.lock:
            bucket = self.buckets.setdefault(peer, _Bucket(float(per_minute), now))
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.at) * per_minute / 60.0)
            bucket.at = now
            if bucket.tokens < 1:
                return False
            bucket.tokens -= 1
            return True


class Inbound:
    def __init__(
        self,
        peers: PeersFile,
        store: FederationMemory,
        emit_findings: FindingSink,
        emit_feedback: FeedbackSink | None = None,
        *,
        tolerance_seconds: float = 300,
        audit: AuditSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peers = peers
        self.store = store
        self.emit_findings = emit_findings
        self.emit_feedback = emit_feedback
        self.tolerance_seconds = tolerance_seconds
        self.audit = audit
        self.clock = clock
        self.rates = RateLimits()

    async def _body(self, request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Refused(413, "too_large", f"body over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, "too_large", f"body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check(self, verifier: Verifier, headers: Mapping[str, str], body: bytes, now: float) -> str:
        peer = verifier.peer
        ts, nonce, tenant = (headers.get(h) or "" for h in (TIMESTAMP_HEADER, NONCE_HEADER, TENANT_HEADER))
        if not ts or not nonce or not tenant:
            raise Refused(401, "unsigned", "timestamp, nonce and tenant headers are required", peer.name)
        try:
            skew = abs(now - float(ts))
        except ValueError as exc:
            raise Refused(401, "bad_timestamp", "timestamp is not unix seconds", peer.name) from exc
        if skew > self.tolerance_seconds:
            raise Refused(401, "stale", f"timestamp outside ±{self.tolerance_seconds:g} s", peer.name)
        message = signed_message(verifier.key.key_id, ts, nonce, tenant, body)
        if not verifier.verify(message, headers.get(SIGNATURE_HEADER) or ""):
            raise Refused(401, "bad_signature", "signature does not verify", peer.name)
        if tenant not in peer.tenants:
            raise Refused(403, "wrong_tenant", f"peer {peer.name} may not send for tenant {tenant!r}", peer.name)
        if not self.store.claim_nonce(peer.name, nonce, now, 2 * self.tolerance_seconds):
            raise Refused(409, "replay", "nonce already used", peer.name)
        return tenant

    def _envelope(self, body: bytes, tenant: str, peer: str) -> Envelope:
        try:
            envelope = Envelope.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise Refused(422, "invalid_payload", str(exc).splitlines()[0], peer) from exc
        # A finding without a tenant is not the request's tenant's either: refused, never adopted.
        foreign = {f.tenant for f in envelope.findings} | {f.tenant for f in envelope.feedback}
        foreign -= {tenant}
        if foreign:
            named = sorted(map(repr, foreign))
            raise Refused(403, "wrong_tenant", f"items for {', '.join(named)} in a request for {tenant!r}", peer)
        return envelope

    async def handle(self, request: Request) -> JSONResponse:
        """The Starlette endpoint: ``Route(path, inbound.handle, methods=["POST"])``."""
        client = request.client.host if request.client else "-"
        key_id = request.headers.get(KEY_ID_HEADER) or ""
        verifier = self.peers.verifier(key_id) if key_id else None
        peer = verifier.peer.name if verifier else None
        try:
            if verifier is None:
                raise Refused(401, "unknown_key", f"key id {key_id!r} is not a peer's")
            now = self.clock()
            if not self.rates.allow(verifier.peer.name, verifier.peer.requests_per_minute, now):
                raise Refused(429, "rate_limited", "too many requests from this peer", peer)
            body = await self._body(request, verifier.peer.max_body_bytes)
            tenant = self._check(verifier, request.headers, body, now)
            envelope = self._envelope(body, tenant, verifier.peer.name)
        except Refused as exc:
            log.warning("federation: refused %s (peer %s) from %s: %s", exc.code, exc.peer or "-", client, exc.message)
            self._audit(client, exc.peer, exc.code, exc.status)
            headers = {"retry-after": "60"} if exc.status == 429 else None
            return JSONResponse({"error": exc.code, "message": exc.message}, exc.status, headers=headers)
        assert verifier is not None
        by_key = {f.key: f for f in envelope.findings}
        fresh = self.store.new_keys(verifier.peer.name, by_key)
        new = [f for key, f in by_key.items() if key in fresh]
        try:
            if new:
                self.emit_findings(verifier.peer.name, new)
            if envelope.feedback and self.emit_feedback is not None:
                self.emit_feedback(verifier.peer.name, envelope.feedback)
        except Exception:
            self.store.forget(fresh)  # not emitted after all: the sender's retry must get through
            log.exception("federation: could not emit %d findings from %s", len(new), peer)
            self._audit(client, peer, "emit_failed", 503)
            return JSONResponse({"error": "emit_failed", "message": "retry later"}, 503)
        self._audit(client, peer, "accepted", 200, findings=len(new), duplicates=len(by_key) - len(new))
        return JSONResponse(
            {"accepted": len(new), "duplicates": len(by_key) - len(new), "feedback": len(envelope.feedback)}, 200
        )

    def _audit(self, client: str, peer: str | None, outcome: str, status: int, **extra: int) -> None:
        if self.audit is not None:
            self.audit(
                {"ts": self.clock(), "channel": "federation", "client": client, "peer": peer, "outcome": outcome}
                | {"status": status, **extra}
            )
