"""The mapping cache: diskcache, least-recently-used eviction, a size limit and a 7-day expiry.

Lookups of one key while it is being computed compute it once (single-flight): a per-key
thread lock inside the process, then a diskcache lock shared by every process using the
same directory. A small in-process memo in front of SQLite keeps warm lookups cheap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import diskcache

from mitre.models import MappingResult

DAY_SECONDS = 86_400
LOCK_EXPIRE_SECONDS = 120  # a crashed holder frees the key after this


class MappingCache:
    def __init__(
        self,
        directory: Path,
        *,
        size_limit_bytes: int = 512 * 2**20,
        ttl_seconds: float = 7 * DAY_SECONDS,
        memo_entries: int = 20_000,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ttl_seconds = ttl_seconds
        self._store = diskcache.Cache(
            str(directory), eviction_policy="least-recently-used", size_limit=size_limit_bytes
        )
        self._memo: OrderedDict[str, MappingResult] = OrderedDict()
        self._memo_entries = memo_entries
        self._memo_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()
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
        if raw is None:
            return None
        value = MappingResult.model_validate_json(raw)
        self._remember(key, value)
        return value

    def put(self, key: str, value: MappingResult) -> None:
        self._store.set(key, value.model_dump_json().encode(), expire=self.ttl_seconds)
        self._remember(key, value)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._key_locks_guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def get_or_compute(self, key: str, compute: Callable[[], tuple[MappingResult, bool]]) -> tuple[MappingResult, bool]:
        """Return (value, hit). `compute` returns (value, cacheable); only cacheable values are stored."""
        found = self.get(key)
        if found is not None:
            self.hits += 1
            return found, True
        lock = self._key_lock(key)
        try:
            with lock, diskcache.Lock(self._store, f"attackmap-lock:{key}", expire=LOCK_EXPIRE_SECONDS):
                found = self.get(key)
                if found is not None:
                    self.hits += 1
                    return found, True
                value, cacheable = compute()
                if cacheable:
                    self.put(key, value)
                self.misses += 1
                return value, False
        finally:
            with self._key_locks_guard:
                if not lock.locked():
                    self._key_locks.pop(key, None)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._store), "bytes": self._store.volume()}
