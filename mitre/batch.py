"""Batch enrichment of NDJSON, serially or on several cores.

Workers are forked after the engine is built, so each inherits the loaded catalog, indicators
and knowledge base for free. A file is cut into byte ranges at line ends and each worker reads
its own ranges, so the parent never parses or ships input; a stream (stdin) is fed to workers
in chunks. Either way results come back in input order, and a range or chunk whose worker process
died is taken over by a fresh one (mitre.forked). Lines are read in memory bounded by the line limit
(`max_line_bytes`): a longer line is dead-lettered without being read whole.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mitre.engine import Engine
from mitre.failures import WORKER_DIED
from mitre.forked import ForkedRunner, Lane, WorkerDeaths
from mitre.io.ndjson import DEFAULT_MAX_LINE_BYTES, LineReader, alert_record, unwritable
from mitre.models import Outcome, OutcomeStatus, RawAlert, RunSummary

CHUNK = 1024
# A batch also closes at this much input, so memory follows the line limit, not the batch size.
CHUNK_BYTES = 8 * 2**20
RANGE_BYTES = 4 * 2**20
SCAN_BYTES = 64 * 2**10


@dataclass
class ChunkResult:
    """One chunk's enriched lines, dead letters and counts. From a byte range, `lines` counts its
    input lines and dead letters are numbered from the range's first line (run_file shifts them);
    a worker leaves its lines in a spool file rather than shipping them through a pipe."""

    output: bytes
    summary: RunSummary
    consumed: int
    lines: int = 0
    dead: list[Outcome] = field(default_factory=list)
    spooled: Path | None = None

    def write_output(self, out: BinaryIO | None) -> None:
        """Append the enriched lines to `out` (None: discard them)."""
        if self.spooled is None:
            if out is not None:
                out.write(self.output)
            return
        try:
            if out is not None:
                out.flush()
                with self.spooled.open("rb") as src:
                    _copy(src, out)
        finally:
            self.spooled.unlink(missing_ok=True)


def _copy(src: BinaryIO, out: BinaryIO) -> None:
    """File to file (or pipe) inside the kernel when it can; through Python when it cannot."""
    size = os.fstat(src.fileno()).st_size
    sent = 0
    try:
        while sent < size:
            step = os.sendfile(out.fileno(), src.fileno(), sent, size - sent)
            if step == 0:
                break
            sent += step
    except OSError:
        src.seek(sent)
        shutil.copyfileobj(src, out)


def process_chunk(engine: Engine, items: list[RawAlert], keep_skipped: bool) -> ChunkResult:
    summary = RunSummary()
    out: list[bytes] = []
    dead: list[Outcome] = []
    for item, outcome in zip(items, engine.process_batch(items), strict=True):
        written = outcome.status is OutcomeStatus.ENRICHED or (keep_skipped and outcome.status is OutcomeStatus.SKIPPED)
        if written:
            try:
                out.append(alert_record(outcome))
            except (TypeError, ValueError) as exc:  # nested too deep, or values JSON cannot hold
                outcome = unwritable(item, exc)
        summary.add(outcome)
        if outcome.status is OutcomeStatus.DEAD_LETTER:
            dead.append(outcome)
    consumed = sum(len(i.raw or b"") + 1 for i in items)
    return ChunkResult(b"".join(out), summary, consumed, dead=dead)


def _line_end(handle: BinaryIO, position: int, total: int) -> int:
    """The offset just past the first newline at or after `position` (or the end of the file),
    found in 64 KiB steps: a gigabyte line is scanned, never read whole."""
    handle.seek(position)
    while position < total:
        block = handle.read(min(SCAN_BYTES, total - position))
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
    return total


def split_ranges(path: Path, size: int = RANGE_BYTES) -> list[tuple[int, int]]:
    """Byte ranges of about `size` covering the file, each ending at a line end."""
    total = path.stat().st_size
    ranges = []
    with path.open("rb") as handle:
        start = 0
        while start < total:
            end = _line_end(handle, min(start + size, total) - 1, total) if start + size < total else total
            ranges.append((start, end))
            start = end
    return ranges


def halve_range(path: Path, span: tuple[int, int]) -> list[tuple[int, int]]:
    """A range cut in two at a line end near its middle; [] when it holds a single line."""
    start, end = span
    with path.open("rb") as handle:
        middle = _line_end(handle, start + (end - start) // 2, end)
        if middle >= end:
            middle = _line_end(handle, start, end)
    return [(start, middle), (middle, end)] if start < middle < end else []


def process_range(
    engine: Engine,
    path: Path,
    span: tuple[int, int],
    keep_skipped: bool,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ChunkResult:
    """Enrich the lines in one byte range of a file, numbering them from 1."""
    start, end = span
    result = ChunkResult(b"", RunSummary(), end - start)
    outputs = []
    with path.open("rb") as handle:
        handle.seek(start)
        reader = LineReader(handle, max_line_bytes, stop=end - start)
        for batch in batches(reader, CHUNK, CHUNK_BYTES):
            part = process_chunk(engine, batch, keep_skipped)
            outputs.append(part.output)
            result.summary.merge(part.summary)
            result.dead.extend(part.dead)
        result.lines = reader.lines
    result.output = b"".join(outputs)
    return result


def batches(items: Iterable[RawAlert], count: int, size: int) -> Iterator[list[RawAlert]]:
    """Consecutive batches of at most `count` alerts and about `size` bytes of input (one long line
    is a batch of its own), so memory follows the limit on a line, not the batch size."""
    batch: list[RawAlert] = []
    held = 0
    for item in items:
        batch.append(item)
        held += len(item.raw or b"")
        if len(batch) >= count or held >= size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


@dataclass(frozen=True)
class _Job:
    engine: Engine
    path: Path
    keep_skipped: bool
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    spool: Path | None = None


# Set in the parent just before forking; read only by the forked workers.
_FORKED: _Job | None = None


def _work_chunk(chunk: _Chunk) -> ChunkResult:
    assert _FORKED is not None
    return process_chunk(_FORKED.engine, list(chunk.items), _FORKED.keep_skipped)


def _work_range(span: tuple[int, int]) -> ChunkResult:
    assert _FORKED is not None and _FORKED.spool is not None
    result = process_range(_FORKED.engine, _FORKED.path, span, _FORKED.keep_skipped, _FORKED.max_line_bytes)
    result.spooled = _FORKED.spool / f"{span[0]:016d}.ndjson"
    result.spooled.write_bytes(result.output)
    result.output = b""
    return result


@dataclass(frozen=True)
class _Chunk:
    """A batch of a stream (stdin) on its way to a worker."""

    items: tuple[RawAlert, ...]


def _halve_chunk(chunk: _Chunk) -> list[_Chunk]:
    middle = len(chunk.items) // 2
    return [_Chunk(chunk.items[:middle]), _Chunk(chunk.items[middle:])] if middle else []


def _abandoned(items: Iterable[RawAlert], why: str, consumed: int = 0, lines: int = 0) -> ChunkResult:
    """Dead letters for inputs whose worker process kept dying on them."""
    summary = RunSummary()
    dead = []
    for item in items:
        reason = f"{WORKER_DIED}: {why}"
        outcome = Outcome(status=OutcomeStatus.DEAD_LETTER, reason=reason, line=item.line, raw=item.text())
        summary.add(outcome)
        dead.append(outcome)
    return ChunkResult(b"", summary, consumed, lines=lines, dead=dead)


def _abandon_chunk(chunk: _Chunk, why: str) -> ChunkResult:
    return _abandoned(chunk.items, why, sum(len(i.raw or b"") + 1 for i in chunk.items))


YOUNG_COLLECTION_ALLOCATIONS = 50_000


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@contextmanager
def _long_lived() -> Iterator[None]:
    """The engine (catalog, indicators, knowledge base) lives for the whole run: keep its objects
    out of every garbage collection (a third of the time per alert otherwise), and out of the
    pages forked workers would copy."""
    gc.collect()
    gc.freeze()
    # A chunk's alerts stay alive until it is written (tens of thousands of young objects, no cycles):
    # collecting every 700 allocations would scan them over and over (a sixth of a warm alert's time).
    thresholds = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@contextmanager
def _forked(job: _Job) -> Iterator[None]:
    global _FORKED
    if job.engine.cache is not None:
        job.engine.cache.close()  # SQLite connections must not cross a fork; each side reopens lazily
    _FORKED = job
    try:
        yield
    finally:
        _FORKED = None


def _can_fork(workers: int) -> bool:
    return workers > 1 and "fork" in multiprocessing.get_all_start_methods()


def run_file(
    engine: Engine,
    path: Path,
    keep_skipped: bool,
    workers: int,
    on_result: Callable[[ChunkResult], None],
    range_bytes: int | None = None,
    spool_dir: Path | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> WorkerDeaths:
    """Feed a file's results to `on_result` in input order, dead letters numbered by file line.
    Workers spool their lines under `spool_dir` (default: the system's temporary directory); a
    range whose worker died is taken over (see mitre.forked). Returns what the workers survived."""
    with _long_lived():
        if not _can_fork(workers):
            with path.open("rb") as handle:
                for batch in batches(LineReader(handle, max_line_bytes), CHUNK, CHUNK_BYTES):
                    on_result(process_chunk(engine, batch, keep_skipped))
            return WorkerDeaths()

        def abandon(span: tuple[int, int], why: str) -> ChunkResult:
            with path.open("rb") as handle:
                handle.seek(span[0])
                raw = handle.read(min(span[1] - span[0], max_line_bytes)).rstrip(b"\r\n")
            return _abandoned([RawAlert(line=1, raw=raw)], why, span[1] - span[0], lines=1)

        lane = Lane(work=_work_range, split=lambda span: halve_range(path, span), abandon=abandon)
        runner = ForkedRunner(lane, workers)
        with (
            tempfile.TemporaryDirectory(prefix="attackmap-spool-", dir=spool_dir) as spool,
            _forked(_Job(engine, path, keep_skipped, max_line_bytes, Path(spool))),
        ):
            before = 0
            for result in runner.run(split_ranges(path, range_bytes or RANGE_BYTES)):
                if before:
                    result.dead = [o.model_copy(update={"line": (o.line or 0) + before}) for o in result.dead]
                before += result.lines
                on_result(result)
        return runner.deaths


def run_chunks(
    engine: Engine,
    items: Iterable[RawAlert],
    keep_skipped: bool,
    workers: int,
    on_result: Callable[[ChunkResult], None],
) -> WorkerDeaths:
    """Feed a stream's results to `on_result` in input order, using `workers` processes (1: in-process);
    a chunk whose worker died is taken over (see mitre.forked). Returns what the workers survived."""
    with _long_lived():
        if not _can_fork(workers):
            for batch in batches(items, CHUNK, CHUNK_BYTES):
                on_result(process_chunk(engine, batch, keep_skipped))
            return WorkerDeaths()
        runner = ForkedRunner(Lane(work=_work_chunk, split=_halve_chunk, abandon=_abandon_chunk), workers)
        with _forked(_Job(engine, Path(), keep_skipped)):
            for result in runner.run(_Chunk(tuple(batch)) for batch in batches(items, CHUNK, CHUNK_BYTES)):
                on_result(result)
        return runner.deaths
