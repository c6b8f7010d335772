"""Resource limits: a line past `max_line_bytes` is dead-lettered without ever being held whole, in
serial and forked runs; the limit comes from workflows.yaml or --max-line-bytes, with clear errors.
(The mechanism is tested with small limits; the README measures a 1 GB line and 10 million alerts.)"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.batch import ChunkResult, run_file, split_ranges
from mitre.config import Limits, WorkflowsFile
from mitre.io.ndjson import TOO_LONG_PREVIEW, LineReader
from mitre.models import OutcomeStatus
from tests.helpers import LSASS_COMMAND, kibana_alert

LIMIT = 4096


class Recording(io.BytesIO):
    """A stream that remembers the largest read asked of it."""

    largest = 0

    def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        assert size is not None and size > 0, "an unbounded readline"
        self.largest = max(self.largest, size)
        return super().readline(size)

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and size > 0, "an unbounded read"
        self.largest = max(self.largest, size)
        return super().read(size)


def _line(i: int, pad: int = 0) -> bytes:
    return json.dumps({**kibana_alert(command_line=f"{LSASS_COMMAND} #{i}"), "pad": "x" * pad}).encode()


def test_a_long_line_is_skipped_in_bounded_reads_and_dead_lettered_with_its_beginning():
    huge = _line(2, pad=5 * 2**20)
    stream = Recording(b"\n".join([_line(1), huge, b"", _line(4)]) + b"\n")
    items = list(LineReader(stream, LIMIT))
    assert [i.line for i in items] == [1, 2, 4]
    assert stream.largest <= 2**20
    rejected = items[1]
    assert rejected.rejected == f"line_too_long: {len(huge) + 1} bytes, over the limit of {LIMIT} (max_line_bytes)"
    assert rejected.raw == huge[:TOO_LONG_PREVIEW]
    assert items[0].rejected is None and items[2].raw == _line(4)


def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not():
    exact = b"{" + b" " * (LIMIT - 2) + b"}"
    assert len(exact) == LIMIT
    items = list(LineReader(io.BytesIO(exact + b"\n" + exact + b" \n" + exact), LIMIT))
    assert [i.rejected is None for i in items] == [True, False, True]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_long_line_across_range_boundaries_is_dead_lettered_by_its_file_line(tmp_path, workers: int):
    lines = [_line(i) for i in range(1, 200)]
    lines[120] = _line(121, pad=3 * 2**20)  # spans dozens of 64 KiB ranges
    src = tmp_path / "alerts.ndjson"
    src.write_bytes(b"\n".join(lines) + b"\n")
    ranges = split_ranges(src, 64 * 1024)
    assert any(end - start > 2**20 for start, end in ranges), "the long line is one range, not cut"
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    results: list[tuple[int | None, str]] = []
    enriched = 0

    def collect(result: ChunkResult) -> None:
        nonlocal enriched
        result.write_output(None)
        enriched += result.summary.enriched
        results.extend((o.line, o.reason) for o in result.dead)

    run_file(engine, src, True, workers, collect, range_bytes=64 * 1024, max_line_bytes=LIMIT)
    assert enriched == 198
    assert [line for line, _ in results] == [121]
    assert results[0][1].startswith("line_too_long: ")


def _cli(tmp_path: Path, *args: str, workflows: str = "version: 1\nworkflows: [{name: t}]\n") -> Any:
    from mitre.cli import app

    src = tmp_path / "alerts.ndjson"
    src.write_bytes(b"\n".join([_line(1), _line(2, pad=8000), _line(3)]) + b"\n")
    path = tmp_path / "workflows.yaml"
    path.write_text(workflows)
    command = ["enrich", str(src), "-o", str(tmp_path / "out.ndjson"), "--dead-letter", str(tmp_path / "dead.ndjson")]
    return CliRunner().invoke(app, [*command, "-j", "1", "--workflows", str(path), "--no-cache", *args])


def test_the_limit_comes_from_workflows_yaml_or_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    assert _cli(tmp_path).exit_code == 0  # default 16 MiB
    limited = _cli(tmp_path, workflows="version: 1\nlimits: {max_line_bytes: 4096}\nworkflows: [{name: t}]\n")
    assert limited.exit_code == 3, limited.output
    letter = json.loads((tmp_path / "dead.ndjson").read_text())
    assert letter["line"] == 2 and letter["reason"].startswith("line_too_long")
    assert _cli(tmp_path, "--max-line-bytes", "4096").exit_code == 3
    assert _cli(tmp_path, "--max-line-bytes", "100000").exit_code == 0


def test_a_limit_out_of_range_is_a_clear_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    flag = _cli(tmp_path, "--max-line-bytes", "10")
    assert flag.exit_code == 2 and "--max-line-bytes" in flag.output and "1024" in flag.output
    file = _cli(tmp_path, workflows="version: 1\nlimits: {max_line_bytes: 10}\nworkflows: [{name: t}]\n")
    assert file.exit_code == 2 and "max_line_bytes" in file.output
    assert Limits().max_line_bytes == 16 * 2**20


def test_a_rejected_line_is_a_dead_letter_of_the_engine(tmp_path):
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache=False))
    items = list(LineReader(io.BytesIO(_line(1, pad=LIMIT) + b"\n"), LIMIT))
    outcome = engine.process_batch(items)[0]
    assert outcome.status is OutcomeStatus.DEAD_LETTER and outcome.reason.startswith("line_too_long")
    assert outcome.raw is not None and len(outcome.raw) == TOO_LONG_PREVIEW
