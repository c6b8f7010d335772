"""The mapping cache: diskcache, least-recently-used eviction, a size limit and a 7-day expiry (30 days
for an LLM's answers, which cost money to ask again and come out the same).

Lookups of one key while it is being computed compute it once (single-flight): a per-key
thread lock inside the process, then a diskcache lock shared by every process using the
same directory. A small in-process memo in front of SQLite keeps warm lookups cheap.

Single-flight covers results that are not cached too (an LLM answer that fell back to the local
mapper): the computing caller publishes its result in `FlightResults` for a short while, and every
caller that was already waiting for the key when it finished takes it instead of computing again.
A caller that arrives later computes afresh, so a fallback is never served in place of a later
answer.

Past one machine, a `SharedTier` (Redis, `mitre.cache_redis`) sits behind the directory: a lookup the
directory cannot answer asks it (and keeps the entry locally for the time it has left), every entry
stored goes to both, single-flight takes the shared tier's lock after the local ones, and fallbacks are
handed over through the shared tier's `FlightResults`. The directory then is each machine's first tier.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import diskcache

from mitre.models import MappingResult

DAY_SECONDS = 86_400
LOCK_EXPIRE_SECONDS = 120  # a crashed holder frees the key after this
FLIGHT_PREFIX = "attackmap-flight:"


class FlightResults(Protocol):
    """Where a computation leaves a result it did not cache, for the callers waiting on the same key."""

    def publish(self, key: str, value: MappingResult, finished_at: float) -> None: ...

    def since(self, key: str, asked_at: float) -> MappingResult | None:
        """The result of a computation that finished at or after `asked_at`, if any."""
        ...


class DiskFlightResults:
    """FlightResults in the cache directory: shared by every process using it, kept as long as a lock."""

    def __init__(self, store: diskcache.Cache) -> None:
        self._store = store

    def publish(self, key: str, value: MappingResult, finished_at: float) -> None:
        self._store.set(FLIGHT_PREFIX + key, (finished_at, value.model_dump_json()), expire=LOCK_EXPIRE_SECONDS)

    def since(self, key: str, asked_at: float) -> MappingResult | None:
        found = self._store.get(FLIGHT_PREFIX + key)
        if found is None or found[0] < asked_at:
            return None
        return MappingResult.model_validate_json(found[1])


class SharedTier(Protocol):
    """A cache tier every machine shares (`mitre.cache_redis.RedisTier`)."""

    flights: FlightResults

    def get(self, key: str) -> tuple[bytes, float] | None:
        """(entry, seconds it has left), or None."""
        ...

    def put(self, key: str, value: bytes, ttl_seconds: float) -> None: ...

    def try_lock(self, key: str) -> str | None:
        """A token when the caller now holds the key's lock across machines, else None."""
        ...

    def unlock(self, key: str, token: str) -> None: ...


SHARED_POLL_SECONDS = (0.005, 0.1)  # first and longest wait between looks at a key another machine computes


class MappingCache:
    def __init__(
        self,
        directory: Path,
        *,
        size_limit_bytes: int = 512 * 2**20,
        ttl_seconds: float = 7 * DAY_SECONDS,
        llm_ttl_seconds: float | None = None,
        memo_entries: int = 20_000,
        shared: SharedTier | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ttl_seconds = ttl_seconds
        self.llm_ttl_seconds = llm_ttl_seconds or ttl_seconds
        self._store = diskcache.Cache(
            str(directory), eviction_policy="least-recently-used", size_limit=size_limit_bytes
        )
        self._memo: OrderedDict[str, MappingResult] = OrderedDict()
        self._memo_entries = memo_entries
        self._memo_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()
        self.shared = shared
        self.flights: FlightResults = shared.flights if shared is not None else DiskFlightResults(self._store)
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> MappingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remember(self, key: str, value: MappingResult) -> None:
        with self._memo_lock:
            self._memo[key] = value
            self._memo.move_to_end(key)
            if len(self._memo) > self._memo_entries:
                self._memo.popitem(last=False)

    def get(self, key: str) -> MappingResult | None:
        with self._memo_lock:
            found = self._memo.get(key)
        if found is not None:
            return found
        raw = self._store.get(key)
        if raw is None and self.shared is not None and (found_shared := self.shared.get(key)) is not None:
            raw, left = found_shared
            if left > 0:  # kept here for the time it has left there
                self._store.set(key, raw, expire=left)
        if raw is None:
            return None
        value = MappingResult.model_validate_json(raw)
        self._remember(key, value)
        return value

    def put(self, key: str, value: MappingResult) -> None:
        ttl = self.ttl_seconds if value.mapper == "local" else self.llm_ttl_seconds
        raw = value.model_dump_json().encode()
        self._store.set(key, raw, expire=ttl)
        if self.shared is not None:
            self.shared.put(key, raw, ttl)
        self._remember(key, value)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._key_locks_guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def get_or_compute(self, key: str, compute: Callable[[], tuple[MappingResult, bool]]) -> tuple[MappingResult, bool]:
        """Return (value, hit). `compute` returns (value, cacheable); only cacheable values are stored,
        the others are handed to the callers waiting for the key meanwhile (a hit for them)."""
        found = self.get(key)
        if found is not None:
            self.hits += 1
            return found, True
        asked_at = time.time()
        lock = self._key_lock(key)
        try:
            with lock, diskcache.Lock(self._store, f"attackmap-lock:{key}", expire=LOCK_EXPIRE_SECONDS):
                found = self.get(key) or self.flights.since(key, asked_at)
                token = None
                if found is None and self.shared is not None:
                    token, found = self._shared_turn(self.shared, key, asked_at)
                if found is not None:
                    self.hits += 1
                    return found, True
                try:
                    value, cacheable = compute()
                    if cacheable:
                        self.put(key, value)
                    else:
                        self.flights.publish(key, value, time.time())
                finally:
                    if token is not None and self.shared is not None:
                        self.shared.unlock(key, token)
                self.misses += 1
                return value, False
        finally:
            with self._key_locks_guard:
                if not lock.locked():
                    self._key_locks.pop(key, None)

    def _shared_turn(self, shared: SharedTier, key: str, asked_at: float) -> tuple[str | None, MappingResult | None]:
        """Wait until this machine holds the key's shared lock (token, None), or another machine's
        computation left its result (None, result). A holder that died frees the key when its lock expires."""
        pause, longest = SHARED_POLL_SECONDS
        while True:
            token = shared.try_lock(key)
            if token is not None:
                # Computed by another machine between our look and our lock?
                found = self.get(key) or self.flights.since(key, asked_at)
                if found is not None:
                    shared.unlock(key, token)
                    return None, found
                return token, None
            found = self.get(key) or self.flights.since(key, asked_at)
            if found is not None:
                return None, found
            time.sleep(pause)
            pause = min(pause * 2, longest)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._store), "bytes": self._store.volume()}
