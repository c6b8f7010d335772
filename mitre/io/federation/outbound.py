"""The outbound feed: enriched findings to a peer, signed, over HTTPS with mutual TLS, never lost.

`offer()` only appends findings to a spool file on local disk, so enrichment never waits for a peer.
`drain()` (or the `run()` loop) sends the spool in batches — one signed request per tenant in a batch —
and moves the spool's cursor past a batch only once the peer accepted every request of it:

- accepted → done (the peer de-duplicates by finding key, so a batch re-sent after a lost answer is
  delivered once);
- refused for good (400, 401, 403, 413, 422) → the batch goes to ``dead-letter.ndjson`` with the reason;
- not now (connection refused, timeout, 408, 429, 5xx) → stays spooled, retried with capped exponential
  backoff and jitter (or the peer's Retry-After).

One sender owns a spool directory at a time (an exclusive lock), so two processes never send it twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import orjson

from mitre.io.federation.finding import Envelope, Finding
from mitre.io.federation.signing import Signer, signed_headers

log = logging.getLogger("attackmap.federation")

COMPACT_BYTES = 8 * 1024 * 1024
_PERMANENT = frozenset({400, 401, 403, 404, 409, 413, 422})


def mtls_client(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None, timeout: float = 10.0
) -> httpx.Client:
    """An HTTPS client that trusts only `ca_file` and, with a certificate, presents it (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return httpx.Client(verify=context, timeout=timeout)


class Spool:
    """An append-only NDJSON file and a saved cursor (byte offset of the first unsent line)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._lock_file: IO[bytes] = (directory / "lock").open("wb")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_file.close()
            raise RuntimeError(f"{directory} is being sent by another process") from exc
        self.data = directory / "spool.ndjson"
        self.data.touch()
        self._cursor_file = directory / "cursor"
        self.cursor = int(self._cursor_file.read_text()) if self._cursor_file.is_file() else 0
        self._mutex = threading.Lock()

    def close(self) -> None:
        self._lock_file.close()

    def append(self, lines: Iterable[bytes]) -> int:
        payload = b"".join(line + b"\n" for line in lines)
        with self._mutex, self.data.open("ab") as handle:
            handle.write(payload)
            handle.flush()
        return payload.count(b"\n")

    def pending(self, limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` unsent lines and the offset just after them."""
        with self._mutex, self.data.open("rb") as handle:
            handle.seek(self.cursor)
            lines: list[bytes] = []
            end = self.cursor
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a line still being written
                lines.append(line[:-1])
                end += len(line)
                if len(lines) >= limit:
                    break
        return lines, end

    def commit(self, end: int) -> None:
        """Everything before `end` is settled; an emptied, large spool starts over."""
        with self._mutex:
            self.cursor = end
            if end >= COMPACT_BYTES and end == self.data.stat().st_size:
                self.data.write_bytes(b"")
                self.cursor = 0
            staging = self._cursor_file.with_suffix(".tmp")
            staging.write_text(str(self.cursor))
            staging.replace(self._cursor_file)

    @property
    def backlog_bytes(self) -> int:
        return self.data.stat().st_size - self.cursor


@dataclass
class RetryPolicy:
    initial_seconds: float = 0.5
    max_seconds: float = 10.0
    batch_size: int = 500


@dataclass
class DrainResult:
    sent: int = 0
    dead_lettered: int = 0
    waiting: bool = False
    retry_after: float = 0.0


class Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(Exception):
    pass


class FederationSender:
    """One peer's outbound feed over a spool directory."""

    def __init__(
        self,
        url: str,
        signer: Signer,
        spool_dir: Path,
        client: httpx.Client,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.signer = signer
        self.spool = Spool(spool_dir)
        self.client = client
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self._failures = 0

    def close(self) -> None:
        self.spool.close()

    def offer(self, findings: Iterable[Finding]) -> int:
        """Spool findings for the peer; returns how many."""
        return self.spool.append(orjson.dumps(f.model_dump(mode="json")) for f in findings)

    def _post(self, tenant: str, findings: list[Finding]) -> None:
        body = Envelope(findings=tuple(findings)).model_dump_json().encode()
        try:
            response = self.client.post(self.url, content=body, headers=signed_headers(self.signer, tenant, body))
        except httpx.HTTPError as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code < 300:
            return
        if response.status_code in _PERMANENT:
            raise Permanent(f"{response.status_code} {response.text[:200]}")
        retry_after = response.headers.get("retry-after")
        raise Transient(
            f"{response.status_code}", float(retry_after) if retry_after and retry_after.isdigit() else None
        )

    def send_batch(self) -> DrainResult:
        """Send the next batch once: sent, dead-lettered, or left waiting with a back-off."""
        lines, end = self.spool.pending(self.policy.batch_size)
        if not lines:
            return DrainResult()
        findings = [Finding.model_validate_json(line) for line in lines]
        by_tenant: dict[str, list[Finding]] = {}
        for finding in findings:
            by_tenant.setdefault(finding.tenant, []).append(finding)
        try:
            for tenant, group in by_tenant.items():
                self._post(tenant, group)
        except Transient as exc:
            self._failures += 1
            backoff = min(self.policy.max_seconds, self.policy.initial_seconds * 2 ** (self._failures - 1))
            wait = exc.retry_after if exc.retry_after is not None else backoff * random.uniform(0.5, 1.0)
            log.warning("federation: %s not reachable (%s); %d findings wait %.1f s", self.url, exc, len(lines), wait)
            return DrainResult(waiting=True, retry_after=min(wait, self.policy.max_seconds))
        except Permanent as exc:
            with (self.spool.directory / "dead-letter.ndjson").open("ab") as dead:
                for line in lines:
                    dead.write(orjson.dumps({"reason": str(exc), "finding": orjson.loads(line)}) + b"\n")
            self.spool.commit(end)
            log.error("federation: %s refused %d findings for good: %s", self.url, len(lines), exc)
            return DrainResult(dead_lettered=len(lines))
        self._failures = 0
        self.spool.commit(end)
        return DrainResult(sent=len(lines))

    def drain(self, deadline: float | None = None) -> DrainResult:
        """Send until the spool is empty (waiting out back-offs) or the deadline (monotonic) passes."""
        total = DrainResult()
        while deadline is None or time.monotonic() < deadline:
            step = self.send_batch()
            total.sent += step.sent
            total.dead_lettered += step.dead_lettered
            if step.waiting:
                self.sleep(step.retry_after)
                continue
            if not step.sent and not step.dead_lettered:
                break
        total.waiting = self.spool.backlog_bytes > 0
        return total

    def run(self, stop: threading.Event, idle_seconds: float = 0.2) -> None:
        """The background loop: send whatever is spooled until `stop` is set."""
        while not stop.is_set():
            step = self.send_batch()
            if step.waiting:
                stop.wait(step.retry_after)
            elif not step.sent and not step.dead_lettered:
                stop.wait(idle_seconds)


@contextlib.contextmanager
def running(sender: FederationSender) -> Iterator[threading.Event]:
    """Run a sender's loop in a thread for the duration of a block."""
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), name="attackmap-federation", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join()
