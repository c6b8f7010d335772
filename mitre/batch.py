"""Batch enrichment of NDJSON, serially or on several cores.

Workers are forked after the engine is built, so each inherits the loaded catalog, indicators
and knowledge base for free. A file is cut into byte ranges at line ends and each worker reads
its own ranges, so the parent never parses or ships input; a stream (stdin) is fed to workers
in chunks. Either way results come back in input order.
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

from mitre.chunks import chunked
from mitre.engine import Engine
from mitre.io.ndjson import alert_record, read_lines, unwritable
from mitre.models import Outcome, OutcomeStatus, RawAlert, RunSummary

CHUNK = 1024
RANGE_BYTES = 4 * 2**20


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


def split_ranges(path: Path, size: int = RANGE_BYTES) -> list[tuple[int, int]]:
    """Byte ranges of about `size` covering the file, each ending at a line end."""
    total = path.stat().st_size
    ranges = []
    with path.open("rb") as handle:
        start = 0
        while start < total:
            handle.seek(min(start + size, total))
            handle.readline()
            end = min(handle.tell(), total)
            ranges.append((start, end))
            start = end
    return ranges


def process_range(engine: Engine, path: Path, span: tuple[int, int], keep_skipped: bool) -> ChunkResult:
    """Enrich the lines in one byte range of a file, numbering them from 1."""
    start, end = span
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the range's final newline
    items = [RawAlert(line=n, raw=line.rstrip(b"\r")) for n, line in enumerate(lines, start=1) if line.strip()]
    result = ChunkResult(b"", RunSummary(), end - start, lines=len(lines))
    outputs = []
    for batch in chunked(items, CHUNK):
        part = process_chunk(engine, batch, keep_skipped)
        outputs.append(part.output)
        result.summary.merge(part.summary)
        result.dead.extend(part.dead)
    result.output = b"".join(outputs)
    return result


@dataclass(frozen=True)
class _Job:
    engine: Engine
    path: Path
    keep_skipped: bool
    spool: Path | None = None


# Set in the parent just before forking; read only by the forked workers.
_FORKED: _Job | None = None


def _work_chunk(items: list[RawAlert]) -> ChunkResult:
    assert _FORKED is not None
    return process_chunk(_FORKED.engine, items, _FORKED.keep_skipped)


def _work_range(span: tuple[int, int]) -> ChunkResult:
    assert _FORKED is not None and _FORKED.spool is not None
    result = process_range(_FORKED.engine, _FORKED.path, span, _FORKED.keep_skipped)
    result.spooled = _FORKED.spool / f"{span[0]:016d}.ndjson"
    result.spooled.write_bytes(result.output)
    result.output = b""
    return result


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@contextmanager
def _long_lived() -> Iterator[None]:
    """The engine (catalog, indicators, knowledge base) lives for the whole run: keep its objects
    out of every garbage collection (a third of the time per alert otherwise), and out of the
    pages forked workers would copy."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _forked(job: _Job, workers: int) -> Iterator[multiprocessing.pool.Pool]:
    global _FORKED
    if job.engine.cache is not None:
        job.engine.cache.close()  # SQLite connections must not cross a fork; each side reopens lazily
    _FORKED = job
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield pool
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
) -> None:
    """Feed a file's results to `on_result` in input order, dead letters numbered by file line.
    Workers spool their lines under `spool_dir` (default: the system's temporary directory)."""
    with _long_lived():
        if not _can_fork(workers):
            with path.open("rb") as handle:
                for batch in chunked(read_lines(handle), CHUNK):
                    on_result(process_chunk(engine, batch, keep_skipped))
            return
        with (
            tempfile.TemporaryDirectory(prefix="attackmap-spool-", dir=spool_dir) as spool,
            _forked(_Job(engine, path, keep_skipped, Path(spool)), workers) as pool,
        ):
            before = 0
            for result in pool.imap(_work_range, split_ranges(path, range_bytes or RANGE_BYTES), chunksize=1):
                if before:
                    result.dead = [o.model_copy(update={"line": (o.line or 0) + before}) for o in result.dead]
                before += result.lines
                on_result(result)


def run_chunks(
    engine: Engine,
    items: Iterable[RawAlert],
    keep_skipped: bool,
    workers: int,
    on_result: Callable[[ChunkResult], None],
) -> None:
    """Feed a stream's results to `on_result` in input order, using `workers` processes (1: in-process)."""
    with _long_lived():
        if not _can_fork(workers):
            for batch in chunked(items, CHUNK):
                on_result(process_chunk(engine, batch, keep_skipped))
            return
        with _forked(_Job(engine, Path(), keep_skipped), workers) as pool:
            for result in pool.imap(_work_chunk, chunked(items, CHUNK), chunksize=1):
                on_result(result)
