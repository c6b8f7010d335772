"""NDJSON source and sinks: a file or stdin in, enriched alerts and dead letters out."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import orjson

from mitre.models import Outcome, RawAlert


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
    """A dead letter keeps the raw input, where it came from, and why it was rejected; a line that is
    not UTF-8 also keeps its exact bytes (`raw_b64`) beside a readable, lossy `raw`."""
    record = {"source": source, "line": outcome.line, "reason": outcome.reason, "raw": outcome.raw}
    if outcome.raw_b64 is not None:
        record["raw_b64"] = outcome.raw_b64
    return orjson.dumps(record) + b"\n"


def alert_record(outcome: Outcome) -> bytes:
    return orjson.dumps(outcome.alert) + b"\n"
