"""NDJSON source and sinks: a file or stdin in, enriched alerts and dead letters out."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import orjson

from mitre.models import Outcome, OutcomeStatus, RawAlert


def read_lines(stream: BinaryIO) -> Iterator[RawAlert]:
    """Each non-blank line with its 1-based line number; parsing happens in the engine."""
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield RawAlert(line=number, raw=line.rstrip(b"\r\n"))


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
    """A dead letter keeps the raw input, where it came from, and why it was rejected (with the
    error id of an internal error, under which the traceback was logged)."""
    record: dict[str, object] = {"source": source, "line": outcome.line, "reason": outcome.reason, "raw": outcome.raw}
    if outcome.error_id is not None:
        record["error_id"] = outcome.error_id
    return orjson.dumps(record) + b"\n"


def unwritable(item: RawAlert, exc: Exception) -> Outcome:
    """The dead letter for an alert whose output JSON cannot hold (orjson: nested deeper than 255
    levels, integers past 64 bits, strings with lone surrogates); the input line is kept as it was."""
    reason = f"unwritable_output: {exc}"
    return Outcome(status=OutcomeStatus.DEAD_LETTER, reason=reason, line=item.line, raw=item.text())


def alert_record(outcome: Outcome) -> bytes:
    return orjson.dumps(outcome.alert) + b"\n"
