"""The mapping cache's shared tier: one Redis for every machine.

Entries are the local tier's (the same SHA-256 keys, the same JSON) under ``attackmap:map:<key>``, each
with its own expiry (7 days, an LLM's answers 30), and the server evicts the least recently used when
full: run it with ``maxmemory`` and ``maxmemory-policy allkeys-lru`` (a server that says otherwise is
reported). Single-flight across machines is a short-lived lock key per cache key
(``SET attackmap:lock:<key> <token> NX PX``, released only by its holder); a result that is not cached
(an LLM fallback) is handed to the machines waiting for it through ``attackmap:flight:<key>``, kept as
long as a lock.
"""

from __future__ import annotations

import secrets
from typing import Any

from mitre.cache import FlightResults
from mitre.models import MappingResult

PREFIX = "attackmap:"
WANTED_POLICY = "allkeys-lru"
# Delete the lock only if we still hold it (it may have expired and been taken by another machine).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def redis_client(url: str) -> Any:
    """A client for ``url`` (thread-safe; a forked child opens its own connections)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


class RedisFlightResults:
    """`FlightResults` in Redis: a fallback handed to the callers waiting on other machines."""

    def __init__(self, client: Any, expire_seconds: float) -> None:
        self._client = client
        self._expire_ms = int(expire_seconds * 1000)

    def publish(self, key: str, value: MappingResult, finished_at: float) -> None:
        payload = f"{finished_at!r} {value.model_dump_json()}"
        self._client.set(f"{PREFIX}flight:{key}", payload, px=self._expire_ms)

    def since(self, key: str, asked_at: float) -> MappingResult | None:
        found = self._client.get(f"{PREFIX}flight:{key}")
        if found is None:
            return None
        finished_at, _, body = found.partition(b" ")
        if float(finished_at) < asked_at:
            return None
        return MappingResult.model_validate_json(body)


class RedisTier:
    """The shared tier behind a machine's diskcache: get and put raw entries, lock a key across machines."""

    def __init__(self, client: Any, lock_expire_seconds: float) -> None:
        self.client = client
        self._lock_expire_ms = int(lock_expire_seconds * 1000)
        self._release = client.register_script(_RELEASE)
        self.flights: FlightResults = RedisFlightResults(client, lock_expire_seconds)

    def policy_problem(self) -> str | None:
        """Why the server is not run as a shared cache should be (None when it is, or cannot tell)."""
        import redis

        try:
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy")
            maxmemory = int(self.client.config_get("maxmemory").get("maxmemory") or 0)
        except redis.RedisError:  # CONFIG is disabled on some managed servers
            return None
        if policy != WANTED_POLICY:
            return f"the shared cache's Redis evicts with {policy!r}, not {WANTED_POLICY!r}: writes may fail when full"
        if maxmemory == 0:
            return "the shared cache's Redis has no maxmemory: it grows until the machine runs out of memory"
        return None

    def get(self, key: str) -> tuple[bytes, float] | None:
        """(entry, seconds it has left) or None."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(f"{PREFIX}map:{key}")
        pipe.pttl(f"{PREFIX}map:{key}")
        raw, ttl_ms = pipe.execute()
        if raw is None:
            return None
        return raw, (ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else 0.0)

    def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self.client.set(f"{PREFIX}map:{key}", value, px=int(ttl_seconds * 1000))

    def try_lock(self, key: str) -> str | None:
        """The lock's token when this caller now holds the key's lock, else None."""
        token = secrets.token_hex(8)
        if self.client.set(f"{PREFIX}lock:{key}", token, nx=True, px=self._lock_expire_ms):
            return token
        return None

    def unlock(self, key: str, token: str) -> None:
        self._release(keys=[f"{PREFIX}lock:{key}"], args=[token])
