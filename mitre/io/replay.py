"""Replay memory shared by every receiver: what the webhook and the federation endpoint accept only once.

A request is accepted once by *claiming* its nonce (and the webhook also its signature): the first claim
within the time-to-live wins, every later one is a replay. Where the claims live decides who shares them:

- `MemoryClaims`: this process only (the webhook's default: one receiver, or sticky routing);
- `RedisClaims`: every receiver on every machine (``SET key 1 NX PX ttl``: of two receivers racing on a
  replayed request exactly one wins); `attackmap serve --replay-store redis`;
- for federation, `mitre.io.federation.store.ReceiverStore` (SQLite: every receiver on one host) or
  `RedisReceiverStore` below (every host), which also remember delivered findings.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from mitre.io.events import SeenWithin

PREFIX = "attackmap:"
DELIVERED_SECONDS = 7 * 86_400


class Claims(Protocol):
    def claim(self, value: str, now: float) -> bool:
        """True the first time `value` is claimed within the window; False on a replay."""
        ...


class FederationMemory(Protocol):
    """What the federation inbound endpoint must share with every receiver (ReceiverStore, RedisReceiverStore)."""

    def claim_nonce(self, peer: str, nonce: str, now: float, ttl: float) -> bool: ...

    def new_keys(self, peer: str, keys: Iterable[str], now: float | None = None) -> set[str]: ...

    def forget(self, keys: Iterable[str]) -> None: ...


class MemoryClaims:
    """Claims in this process's memory."""

    def __init__(self, window_seconds: float) -> None:
        self._seen = SeenWithin(window_seconds)

    def claim(self, value: str, now: float) -> bool:
        if self._seen.seen(value, now):
            return False
        self._seen.add(value, now)
        return True


class RedisClaims:
    """Claims in Redis, shared by every receiver: one key per value, expiring with the window."""

    def __init__(self, client: Any, namespace: str, window_seconds: float) -> None:
        self._client = client
        self._prefix = f"{PREFIX}{namespace}:"
        self._window_ms = int(window_seconds * 1000)

    def claim(self, value: str, now: float) -> bool:
        return bool(self._client.set(self._prefix + value, "1", nx=True, px=self._window_ms))


class RedisReceiverStore:
    """The federation receiver's memory (`ReceiverStore`'s three methods) in Redis, for receivers on
    several hosts: nonces per peer for their time-to-live, delivered finding keys for seven days."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def claim_nonce(self, peer: str, nonce: str, now: float, ttl: float) -> bool:
        return bool(self._client.set(f"{PREFIX}fed-nonce:{peer}\x00{nonce}", "1", nx=True, px=int(ttl * 1000)))

    def new_keys(self, peer: str, keys: Iterable[str], now: float | None = None) -> set[str]:
        """Of these finding keys, those never delivered before; they are recorded as delivered now."""
        at = str(time.time() if now is None else now)
        unique = list(dict.fromkeys(keys))
        pipe = self._client.pipeline(transaction=False)
        for key in unique:
            pipe.set(f"{PREFIX}fed-delivered:{key}", f"{peer} {at}", nx=True, ex=DELIVERED_SECONDS)
        return {key for key, fresh in zip(unique, pipe.execute(), strict=True) if fresh}

    def forget(self, keys: Iterable[str]) -> None:
        """Undo `new_keys` for findings that could not be emitted after all (the sender will retry)."""
        names = [f"{PREFIX}fed-delivered:{key}" for key in keys]
        if names:
            self._client.delete(*names)
