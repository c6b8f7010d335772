"""Delivery that never loses an event: spool to disk, send from there, retry, dead-letter with the reason.

`Delivery.offer()` only appends events to a spool file on local disk, so mapping never waits for a
sink: a receiver that is down, slow or refusing costs the pipeline nothing. A background thread
(`start()`) or the caller (`drain()`) sends the spool in batches, and moves the spool's cursor past a
batch only once the sink has settled it:

- delivered → done;
- rejected for good (a 400 for one event, a bad token for all) → the dead-letter file, with the reason;
- not now (connection refused, 429, 503, timeout) → stays spooled, retried with capped exponential
  backoff (or the receiver's Retry-After), and dead-lettered only after ``give_up_after`` seconds.

Each process spools into its own directory (``<root>/<sink>/<process dir>``) and holds a lock on it;
the spool of a process that died (its lock is free) is adopted and sent by the next one, so a crash
loses nothing that was offered. The cursor is saved after each settled batch: a crash between a send
and that save re-sends one batch (at-least-once), which receivers that keep ids (Elasticsearch,
TAXII) absorb.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import orjson
from pydantic import ValidationError

from mitre.io.exports.event import CommonEvent
from mitre.io.exports.sink import PermanentError, Sink, TransientError

log = logging.getLogger("attackmap.exports")

SEGMENT_BYTES = 16 * 1024 * 1024
_LOCK = "lock"
_CURSOR = "cursor.json"


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a batch that could not be sent is tried again."""

    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    give_up_after: float = 24 * 3600.0
    batch_size: int = 500


@dataclass
class DeliveryStats:
    offered: int = 0
    duplicates: int = 0
    delivered: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    transient_failures: int = 0
    last_error: str | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


class SpoolBusy(RuntimeError):
    """Another live process holds this spool directory."""


class _Spool:
    """One process's append-only spool: numbered NDJSON segments and a cursor (segment, byte offset)."""

    def __init__(self, directory: Path, *, create: bool) -> None:
        self.directory = directory
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        self._lock_handle: IO[bytes] | None = (directory / _LOCK).open("ab")
        try:
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_handle.close()
            self._lock_handle = None
            raise SpoolBusy(str(directory)) from exc
        self.segment, self.offset = self._load_cursor()
        self._writer: IO[bytes] | None = None
        self._writer_segment = max(self._segments(), default=self.segment)

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.ndjson") if p.stem.isdigit())

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.ndjson"

    def _load_cursor(self) -> tuple[int, int]:
        path = self.directory / _CURSOR
        if path.is_file():
            data = orjson.loads(path.read_bytes())
            return int(data["segment"]), int(data["offset"])
        return min(self._segments(), default=1), 0

    def _save_cursor(self) -> None:
        tmp = self.directory / f".{_CURSOR}.tmp"
        tmp.write_bytes(orjson.dumps({"segment": self.segment, "offset": self.offset}))
        os.replace(tmp, self.directory / _CURSOR)

    def append(self, lines: Iterable[bytes]) -> None:
        if self._writer is None or self._writer.tell() >= SEGMENT_BYTES:
            if self._writer is not None:
                self._writer.close()
                self._writer_segment += 1
            self._writer = self._path(self._writer_segment).open("ab")
        self._writer.write(b"".join(line + b"\n" for line in lines))
        self._writer.flush()

    def read(self, limit: int) -> tuple[list[bytes], tuple[int, int]]:
        """Up to ``limit`` lines from the cursor, and the cursor after them (not yet committed)."""
        lines: list[bytes] = []
        segment, offset = self.segment, self.offset
        while len(lines) < limit:
            path = self._path(segment)
            if not path.is_file():
                later = [s for s in self._segments() if s > segment]
                if not later:
                    break
                segment, offset = later[0], 0
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                while len(lines) < limit:
                    line = handle.readline()
                    if not line.endswith(b"\n"):  # nothing more, or a line still being written
                        break
                    offset += len(line)
                    if line.strip():
                        lines.append(line.rstrip(b"\n"))
            if len(lines) >= limit or segment >= self._writer_segment:
                break
            segment, offset = segment + 1, 0
        return lines, (segment, offset)

    def commit(self, position: tuple[int, int]) -> None:
        """Move the cursor; segments wholly behind it are removed."""
        self.segment, self.offset = position
        self._save_cursor()
        for old in self._segments():
            if old < self.segment:
                self._path(old).unlink(missing_ok=True)

    def is_drained(self) -> bool:
        lines, _ = self.read(1)
        return not lines

    def close(self, *, remove_if_empty: bool) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if remove_if_empty and self.is_drained():
            for path in self.directory.iterdir():
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None


class Delivery:
    """Spool, send, retry and dead-letter for one sink."""

    def __init__(
        self,
        sink: Sink,
        spool_root: Path,
        *,
        policy: RetryPolicy | None = None,
        dead_letter: Path | None = None,
        dedupe_window: int = 100_000,
    ) -> None:
        self.sink = sink
        self.policy = policy or RetryPolicy()
        self.root = spool_root / sink.name
        self.dead_letter = dead_letter or self.root / "dead-letter.ndjson"
        self.stats = DeliveryStats()
        self._own = _Spool(self.root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}", create=True)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._lock = threading.Lock()  # spool file access: offer() and the sending thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._next_try = 0.0
        self._delay = self.policy.initial_seconds

    # -- producer side ---------------------------------------------------

    def offer(self, events: Iterable[CommonEvent]) -> int:
        """Spool events for delivery; returns how many were new. Never blocks on the sink."""
        lines = []
        with self._lock:
            for event in events:
                key = event.key
                if key in self._recent:
                    self.stats.duplicates += 1
                    continue
                self._recent[key] = None
                if len(self._recent) > self._dedupe_window:
                    self._recent.popitem(last=False)
                lines.append(event.to_json())
            if lines:
                self._own.append(lines)
                self.stats.offered += len(lines)
        if lines:
            self._wake.set()
        return len(lines)

    # -- sending side ----------------------------------------------------

    def _orphans(self) -> Iterator[_Spool]:
        """Spools left by processes that are gone (their lock is free)."""
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self._own.directory):
            try:
                yield _Spool(directory, create=False)
            except (SpoolBusy, FileNotFoundError):
                continue

    def pending(self) -> bool:
        with self._lock:
            return not self._own.is_drained()

    def drain(self, timeout: float | None = None) -> bool:
        """Send what is spooled (this process's and orphaned spools) until empty, the timeout, or a
        transient failure whose retry is due after the timeout. True when nothing is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for orphan in list(self._orphans()):
            try:
                if not self._drain_spool(orphan, deadline, own=False):
                    return False
            finally:
                orphan.close(remove_if_empty=True)
        return self._drain_spool(self._own, deadline, own=True)

    def _drain_spool(self, spool: _Spool, deadline: float | None, *, own: bool) -> bool:
        while True:
            wait = self._next_try - time.monotonic()
            if wait > 0:
                if deadline is not None and time.monotonic() + wait > deadline:
                    return False
                if self._stop.wait(wait):
                    return False
            with self._lock if own else contextlib.nullcontext():
                lines, position = spool.read(self.policy.batch_size)
            if not lines:
                return True
            if not self._send(lines):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            with self._lock if own else contextlib.nullcontext():
                spool.commit(position)

    def _send(self, lines: list[bytes]) -> bool:
        """Settle one batch (True), or schedule a retry (False)."""
        events: list[CommonEvent] = []
        unreadable: list[tuple[bytes, str]] = []
        for line in lines:
            try:
                events.append(CommonEvent.model_validate_json(line))
            except ValidationError as exc:
                unreadable.append((line, f"spooled line is not a common event: {exc.errors()[0]['msg']}"))
        self._dead_letter(unreadable)
        try:
            result = self.sink.send(events) if events else None
        except TransientError as exc:
            return self._failed(str(exc), exc.retry_after, events)
        except PermanentError as exc:
            self._dead_letter([(e.to_json(), f"{self.sink.name}: {exc}") for e in events])
            self._recovered()
            return True
        except Exception as exc:  # an unexpected fault of the sink: retried like a transient one
            log.exception("%s: send failed", self.sink.name)
            return self._failed(f"{type(exc).__name__}: {exc}", None, events)
        if result is not None:
            self._dead_letter([(events[i].to_json(), f"{self.sink.name}: {r}") for i, r in result.rejected.items()])
            if result.retry:
                # Requeue only the events that may pass later; the rest of the batch is settled.
                with self._lock:
                    self._own.append([events[i].to_json() for i in sorted(result.retry)])
                self.stats.last_error = next(iter(result.retry.values()))
            for reason in result.skipped.values():
                self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
            settled = len(result.rejected) + len(result.retry) + len(result.skipped)
            self.stats.delivered += len(events) - settled
        self._recovered()
        return True

    def _failed(self, reason: str, retry_after: float | None, events: list[CommonEvent]) -> bool:
        now = time.monotonic()
        self.stats.transient_failures += 1
        self.stats.last_error = reason
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since >= self.policy.give_up_after:
            self._dead_letter(
                [(e.to_json(), f"{self.sink.name}: undeliverable for {self.policy.give_up_after:.0f}s: {reason}")
                 for e in events]
            )  # fmt: skip
            self._recovered()
            return True
        delay = retry_after if retry_after is not None else self._delay * (0.5 + random.random() / 2)
        self._next_try = now + min(delay, self.policy.max_seconds)
        self._delay = min(self._delay * 2, self.policy.max_seconds)
        log.warning("%s: %s; retry in %.1fs", self.sink.name, reason, self._next_try - now)
        return False

    def _recovered(self) -> None:
        self._failing_since = None
        self._delay = self.policy.initial_seconds
        self._next_try = 0.0

    def _dead_letter(self, items: list[tuple[bytes, str]]) -> None:
        if not items:
            return
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self.dead_letter.open("ab") as handle:
            for raw, reason in items:
                handle.write(orjson.dumps({"sink": self.sink.name, "reason": reason, "at": at})[:-1])
                handle.write(b',"event":' + raw + b"}\n")
                key = reason.split(":", 2)[1].strip() if reason.count(":") >= 2 else reason
                self.stats.dead_letter_reasons[key] = self.stats.dead_letter_reasons.get(key, 0) + 1
        self.stats.dead_lettered += len(items)

    # -- background ------------------------------------------------------

    def start(self) -> None:
        """Send in a background thread for as long as the process lives (or until `close`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"attackmap-export-{self.sink.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.drain(timeout=5.0)
            except Exception:  # keep the sender alive: what is spooled stays spooled
                log.exception("%s: delivery loop", self.sink.name)
                done = False
            if done:
                self._wake.wait(1.0)
                self._wake.clear()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the sender after trying to deliver what is spooled for ``timeout`` seconds. What is
        left stays in the spool, and the next process using this spool root sends it. True if empty."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()
        empty = self.drain(timeout=timeout)
        self._stop.set()
        with self._lock:
            self._own.close(remove_if_empty=True)
        self.sink.close()
        return empty
