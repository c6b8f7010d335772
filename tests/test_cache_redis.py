"""The mapping cache's shared tier on a real Redis: what one machine maps, another reads; a key is
computed once across machines; fallbacks reach the machines waiting for them."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

from mitre.cache import DAY_SECONDS, LOCK_EXPIRE_SECONDS, MappingCache
from mitre.cache_redis import RedisTier, redis_client
from mitre.models import MappingResult, TechniqueScore

RESULT = MappingResult(mapper="local", techniques=(TechniqueScore(technique_id="T1059", confidence=0.9),))
LLM_RESULT = MappingResult(mapper="anthropic", techniques=(TechniqueScore(technique_id="T1003", confidence=0.8),))
KEY = "9f" * 32  # a SHA-256 hex digest, as the engine's keys are


def _machine(directory: Path, url: str) -> MappingCache:
    """A machine: its own cache directory (first tier) and the shared Redis."""
    return MappingCache(
        directory,
        ttl_seconds=7 * DAY_SECONDS,
        llm_ttl_seconds=30 * DAY_SECONDS,
        shared=RedisTier(redis_client(url), LOCK_EXPIRE_SECONDS),
    )


def test_what_one_machine_stores_another_reads_under_the_same_key(tmp_path: Path, redis_url: str, redis_client: Any):
    first, second = _machine(tmp_path / "a", redis_url), _machine(tmp_path / "b", redis_url)
    first.put(KEY, RESULT)
    first.put("e1" * 32, LLM_RESULT)
    assert redis_client.get(f"attackmap:map:{KEY}") == RESULT.model_dump_json().encode()
    assert 7 * DAY_SECONDS - 60 < redis_client.pttl(f"attackmap:map:{KEY}") / 1000 <= 7 * DAY_SECONDS
    assert 30 * DAY_SECONDS - 60 < redis_client.pttl("attackmap:map:" + "e1" * 32) / 1000 <= 30 * DAY_SECONDS
    assert second.get(KEY) == RESULT
    # Kept in the second machine's own tier for the time it had left in Redis.
    redis_client.flushdb()
    third_process_view = MappingCache(tmp_path / "b")
    assert third_process_view.get(KEY) == RESULT
    assert third_process_view._store.get(KEY, expire_time=True)[1] - time.time() > 7 * DAY_SECONDS - 60


def test_the_server_runs_as_an_lru_cache_or_is_reported(redis_url: str, redis_client: Any):
    tier = RedisTier(redis_client, LOCK_EXPIRE_SECONDS)
    assert tier.policy_problem() is None
    policy = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", "noeviction")
    try:
        assert "allkeys-lru" in (tier.policy_problem() or "")
    finally:
        redis_client.config_set("maxmemory-policy", policy)


def _compute_once(directory: str, url: str, counter: str, cacheable: bool, out: Any) -> None:
    cache = _machine(Path(directory), url)

    def compute() -> tuple[MappingResult, bool]:
        with open(counter, "a") as handle:
            handle.write("x")
        time.sleep(0.5)
        return RESULT, cacheable

    value, _ = cache.get_or_compute(KEY, compute)
    out.put(value.model_dump_json())


def test_single_flight_across_machines(tmp_path: Path, redis_url: str, redis_client: Any):
    """Four processes with four cache directories (four machines as far as diskcache can tell)."""
    for cacheable in (True, False):
        redis_client.flushdb()
        counter = tmp_path / f"calls-{cacheable}.txt"
        counter.write_text("")
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [
            ctx.Process(
                target=_compute_once, args=(str(tmp_path / f"m{cacheable}{n}"), redis_url, str(counter), cacheable, out)
            )
            for n in range(4)
        ]
        for p in procs:
            p.start()
        values = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        assert counter.read_text() == "x", f"cacheable={cacheable}: computed {len(counter.read_text())} times"
        assert set(values) == {RESULT.model_dump_json()}
        assert (redis_client.get(f"attackmap:map:{KEY}") is not None) is cacheable
        assert redis_client.get(f"attackmap:lock:{KEY}") is None  # released by its holder


def test_a_dead_holder_frees_the_key_when_its_lock_expires(tmp_path: Path, redis_url: str, redis_client: Any):
    cache = MappingCache(tmp_path, shared=RedisTier(redis_client, lock_expire_seconds=0.5))
    assert redis_client.set(f"attackmap:lock:{KEY}", "a machine that died", nx=True, px=500)
    started = time.monotonic()
    value, hit = cache.get_or_compute(KEY, lambda: (RESULT, True))
    assert value == RESULT and not hit
    assert 0.3 < time.monotonic() - started < 5


def test_threads_of_two_machines_compute_once(tmp_path: Path, redis_url: str, redis_client: Any):
    machines = [_machine(tmp_path / "a", redis_url), _machine(tmp_path / "b", redis_url)]
    calls: list[int] = []

    def compute() -> tuple[MappingResult, bool]:
        calls.append(1)
        time.sleep(0.2)
        return RESULT, True

    results: list[tuple[MappingResult, bool]] = []
    threads = [
        threading.Thread(target=lambda m=machines[n % 2]: results.append(m.get_or_compute(KEY, compute)))
        for n in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sum(1 for _, hit in results if not hit) == 1
