"""NDJSON source and sinks: a file or stdin in, enriched alerts and dead letters out."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import orjson

from mitre.models import Outcome, OutcomeStatus, RawAlert

DEFAULT_MAX_LINE_BYTES = 16 * 2**20
# What a dead letter keeps of a line past the limit: enough to recognise it, never the whole line.
TOO_LONG_PREVIEW = 1024
_SKIP_STEP = 2**20


class LineReader:
    """Each non-blank line of a stream with its 1-based line number, in memory no larger than the
    limit: a line longer than `max_line_bytes` is skipped in 1 MiB steps, never held whole, and
    comes out rejected (``line_too_long``) with its first bytes. Parsing happens in the engine.

    `stop` ends the reading at that many bytes (a byte range of a file); `lines` and `consumed`
    count what was read so far, blank lines included."""

    def __init__(self, stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, stop: int | None = None):
        self.stream = stream
        self.max_line_bytes = max_line_bytes
        self.stop = stop
        self.lines = 0
        self.consumed = 0

    def __iter__(self) -> Iterator[RawAlert]:
        limit = self.max_line_bytes
        while self.stop is None or self.consumed < self.stop:
            line = self.stream.readline(limit + 1)
            if not line:
                return
            self.lines += 1
            self.consumed += len(line)
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line) + self._skip_rest()
                reason = f"line_too_long: {size} bytes, over the limit of {limit} (max_line_bytes)"
                yield RawAlert(line=self.lines, raw=line[:TOO_LONG_PREVIEW], rejected=reason)
            elif line.strip():
                yield RawAlert(line=self.lines, raw=line.rstrip(b"\r\n"))

    def _skip_rest(self) -> int:
        """Read past the rest of the current line; its length."""
        skipped = 0
        while True:
            part = self.stream.readline(_SKIP_STEP)
            skipped += len(part)
            if not part or part.endswith(b"\n"):
                self.consumed += skipped
                return skipped


def read_lines(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawAlert]:
    """Each non-blank line with its 1-based line number (see LineReader)."""
    return iter(LineReader(stream, max_line_bytes))


@contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
    else:
        with Path(path).open("rb") as handle:
            yield handle


@contextmanager
def open_output(path: str | None) -> Iterator[BinaryIO | None]:
    if path is None:
        yield None
    elif path == "-":
        yield sys.stdout.buffer
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with Path(path).open("wb") as handle:
            yield handle


def dead_letter_record(outcome: Outcome, source: str) -> bytes:
    """A dead letter keeps the raw input, where it came from, and why it was rejected; a line that is
    not UTF-8 also keeps its exact bytes (`raw_b64`) beside a readable, lossy `raw`; an internal
    error keeps the error id under which its traceback was logged."""
    record: dict[str, object] = {"source": source, "line": outcome.line, "reason": outcome.reason, "raw": outcome.raw}
    if outcome.raw_b64 is not None:
        record["raw_b64"] = outcome.raw_b64
    if outcome.error_id is not None:
        record["error_id"] = outcome.error_id
    return orjson.dumps(record) + b"\n"


def unwritable(item: RawAlert, exc: Exception) -> Outcome:
    """The dead letter for an alert whose output JSON cannot hold (nested past what encoders write, or
    NaN); the input line is kept as it was."""
    reason = f"unwritable_output: {exc}"
    return Outcome(status=OutcomeStatus.DEAD_LETTER, reason=reason, line=item.line, raw=item.text())


def alert_record(outcome: Outcome) -> bytes:
    """One output line. orjson first (fast); what it refuses — nesting past 255 levels, integers
    past 64 bits, lone surrogates (written escaped, as they came) — goes through the standard
    encoder, which raises only for what JSON cannot hold at all (NaN, nesting past the stack)."""
    try:
        return orjson.dumps(outcome.alert) + b"\n"
    except TypeError:
        pass
    try:
        return json.dumps(outcome.alert, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode() + b"\n"
    except RecursionError as exc:
        raise ValueError("nested too deep to write") from exc
