"""A mapping cache that cannot stop mapping.

The cache is an optimisation: when its directory cannot be created or written (read-only, full,
permissions, a corrupt database), mapping goes on uncached and one warning says so — not one per
alert. After `retry_seconds` the cache is tried again, so a disk that was cleaned up is used again
by a long-running worker. Any store with the MappingCache methods can be guarded (a Redis cache too).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from mitre.failures import describe
from mitre.models import MappingResult

log = logging.getLogger("attackmap.cache")

RETRY_SECONDS = 600.0


class Store(Protocol):
    def get(self, key: str) -> MappingResult | None: ...

    def put(self, key: str, value: MappingResult) -> None: ...

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[MappingResult, bool]]
    ) -> tuple[MappingResult, bool]: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


class _MapperFailed(Exception):
    """Carries an exception of `compute` through the store, so it is not taken for the store's."""


class GuardedCache:
    """Opens the store with `open_store` (now, and again after a failure and a cool-down); while it
    is unusable, lookups miss, writes are dropped and `get_or_compute` just computes."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        where: str,
        *,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = open_store
        self.where = where
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._store: Store | None = None
        self._down_since: float | None = None
        self.problem: str | None = None  # why the cache is off, while it is
        self._store = self._usable()

    def _usable(self) -> Store | None:
        if self._store is not None:
            return self._store
        if self._down_since is not None and self._clock() - self._down_since < self.retry_seconds:
            return None
        try:
            self._store = self._open()
        except Exception as exc:
            self._failed(exc)
            return None
        if self.problem is not None:
            log.warning("mapping cache %s usable again", self.where)
            self.problem = None
        self._down_since = None
        return self._store

    def _failed(self, exc: Exception) -> None:
        first = self.problem is None
        self.problem = describe(exc)
        self._down_since = self._clock()
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):  # a store that failed may fail to close too; dropped either way
                store.close()
        if first:
            log.warning(
                "mapping cache %s unusable (%s): mapping goes on uncached; retried in %.0f s",
                self.where,
                self.problem,
                self.retry_seconds,
            )

    def get(self, key: str) -> MappingResult | None:
        store = self._usable()
        if store is None:
            return None
        try:
            return store.get(key)
        except Exception as exc:
            self._failed(exc)
            return None

    def put(self, key: str, value: MappingResult) -> None:
        store = self._usable()
        if store is None:
            return
        try:
            store.put(key, value)
        except Exception as exc:
            self._failed(exc)

    def get_or_compute(self, key: str, compute: Callable[[], tuple[MappingResult, bool]]) -> tuple[MappingResult, bool]:
        """The store's single-flight lookup; a value computed before the store failed is not computed
        again (an LLM call is paid once)."""
        store = self._usable()
        computed: list[MappingResult] = []

        def remembered() -> tuple[MappingResult, bool]:
            try:
                value, cacheable = compute()
            except Exception as exc:  # the mapper's failure, not the store's
                raise _MapperFailed from exc
            computed.append(value)
            return value, cacheable

        if store is not None:
            try:
                return store.get_or_compute(key, remembered)
            except _MapperFailed as failed:
                raise failed.__cause__ from None  # type: ignore[misc]
            except Exception as exc:
                self._failed(exc)
        if computed:
            return computed[0], False
        return compute()[0], False

    def close(self) -> None:
        """Close the store (before a fork: SQLite connections must not cross it); it reopens lazily."""
        if self._store is not None:
            try:
                self._store.close()
            except Exception as exc:
                self._failed(exc)

    def stats(self) -> dict[str, int]:
        store = self._usable()
        if store is None:
            return {"hits": 0, "misses": 0, "entries": 0, "bytes": 0}
        try:
            return store.stats()
        except Exception as exc:
            self._failed(exc)
            return {"hits": 0, "misses": 0, "entries": 0, "bytes": 0}
