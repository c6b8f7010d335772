"""Batch enrichment of NDJSON, serially or on several cores.

Workers are forked after the engine is built, so each inherits the loaded catalog, indicators
and knowledge base for free; they return serialised lines plus their counts, in input order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mitre.io.ndjson import alert_record, dead_letter_record
from mitre.models import OutcomeStatus
from mitre.pipeline import Engine, RawAlert, RunSummary

CHUNK = 1024


@dataclass
class ChunkResult:
    output: bytes
    dead: bytes
    summary: RunSummary
    consumed: int


def process_chunk(engine: Engine, items: list[RawAlert], source: str, keep_skipped: bool) -> ChunkResult:
    summary = RunSummary()
    out: list[bytes] = []
    dead: list[bytes] = []
    for outcome in engine.process_batch(items):
        summary.add(outcome)
        if outcome.status is OutcomeStatus.DEAD_LETTER:
            dead.append(dead_letter_record(outcome, source))
        elif keep_skipped or outcome.status is OutcomeStatus.ENRICHED:
            out.append(alert_record(outcome))
    consumed = sum(len(i.raw or b"") + 1 for i in items)
    return ChunkResult(b"".join(out), b"".join(dead), summary, consumed)


def merge(total: RunSummary, part: RunSummary) -> None:
    total.enriched += part.enriched
    total.skipped.update(part.skipped)
    total.dead_letter.update(part.dead_letter)
    total.decisions.update(part.decisions)
    total.tactics.update(part.tactics)
    total.techniques.update(part.techniques)
    total.cache_hits += part.cache_hits
    total.cache_misses += part.cache_misses


def chunks(items: Iterable[RawAlert], size: int = CHUNK) -> Iterator[list[RawAlert]]:
    batch: list[RawAlert] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# Set in the parent just before forking; read only by the forked workers.
_FORKED: tuple[Engine, str, bool] | None = None


def _work(items: list[RawAlert]) -> ChunkResult:
    assert _FORKED is not None
    engine, source, keep_skipped = _FORKED
    return process_chunk(engine, items, source, keep_skipped)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def run_chunks(
    engine: Engine,
    items: Iterable[RawAlert],
    source: str,
    keep_skipped: bool,
    workers: int,
    on_result: Callable[[ChunkResult], None],
) -> None:
    """Feed chunks to `on_result` in input order, using `workers` processes (1: in-process)."""
    global _FORKED
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for batch in chunks(items):
            on_result(process_chunk(engine, batch, source, keep_skipped))
        return
    if engine.cache is not None:
        engine.cache.close()  # SQLite connections must not cross a fork; each side reopens lazily
    _FORKED = (engine, source, keep_skipped)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for result in pool.imap(_work, chunks(items), chunksize=1):
                on_result(result)
    finally:
        _FORKED = None
