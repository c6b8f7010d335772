from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

from mitre.cache import MappingCache
from mitre.models import MappingResult, TechniqueScore

RESULT = MappingResult(mapper="slow", techniques=(TechniqueScore(technique_id="T1059", confidence=0.9),))


def test_put_get_and_expiry(tmp_path: Path):
    cache = MappingCache(tmp_path, ttl_seconds=0.2, memo_entries=0)
    cache.put("k", RESULT)
    assert cache.get("k") == RESULT
    time.sleep(0.3)
    assert cache.get("k") is None


def test_cache_uses_lru_eviction_and_a_size_limit(tmp_path: Path):
    cache = MappingCache(tmp_path, size_limit_bytes=12345)
    assert cache._store.eviction_policy == "least-recently-used"
    assert cache._store.size_limit == 12345


def test_uncacheable_results_are_not_stored(tmp_path: Path):
    cache = MappingCache(tmp_path)
    value, hit = cache.get_or_compute("k", lambda: (RESULT, False))
    assert value == RESULT and not hit
    assert cache.get("k") is None


def test_single_flight_across_threads(tmp_path: Path):
    cache = MappingCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return RESULT, True

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("same", compute))) for _ in range(50)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sum(1 for _, hit in results if not hit) == 1
    assert all(value == RESULT for value, _ in results)


def _worker(directory: str, counter: str) -> None:
    cache = MappingCache(Path(directory))

    def compute():
        with open(counter, "a") as handle:
            handle.write("x")
        time.sleep(0.5)
        return RESULT, True

    cache.get_or_compute("shared-key", compute)


def test_single_flight_across_processes(tmp_path: Path):
    counter = tmp_path / "calls.txt"
    counter.write_text("")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(counter))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert counter.read_text() == "x"
