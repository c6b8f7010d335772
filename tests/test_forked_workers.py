"""Fault: a forked `attackmap enrich` worker killed with SIGKILL mid-run. Its byte range (or stream
chunk) is taken over by a fresh worker; an input that kills every worker that reads it is found by
bisection and dead-lettered alone (worker_died), with its file line; the exit code says so."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.batch import ChunkResult, run_chunks, run_file
from mitre.config import WorkflowsFile
from mitre.io.ndjson import read_lines
from mitre.models import RunSummary
from tests.helpers import LSASS_COMMAND, kibana_alert

KILL_ONCE = "kill-the-worker-once"
KILL_ALWAYS = "kill-every-worker"


def _kill_workers_on_markers(monkeypatch: pytest.MonkeyPatch, once_flag: Path) -> None:
    """SIGKILL the worker process (never the test's own) that reaches a marked alert: the first
    time only for KILL_ONCE (an operator, the OOM killer), every time for KILL_ALWAYS."""
    import mitre.engine

    parent = os.getpid()
    real = mitre.engine.decide

    def decide(features: Any, *args: Any) -> Any:
        command = features.fields.get("process.command_line", "")
        if os.getpid() != parent:
            if KILL_ALWAYS in command:
                os.kill(os.getpid(), signal.SIGKILL)
            if KILL_ONCE in command:
                try:
                    os.close(os.open(once_flag, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
        return real(features, *args)

    monkeypatch.setattr(mitre.engine, "decide", decide)


def _alerts(n: int, marks: dict[int, str]) -> list[bytes]:
    return [
        json.dumps(kibana_alert(command_line=f"{LSASS_COMMAND} {marks.get(i, '')} #{i}")).encode()
        for i in range(1, n + 1)
    ]


class _Collect:
    """on_result for run_file/run_chunks: a worker's spooled lines must be read while the run lasts."""

    def __init__(self) -> None:
        self.summary = RunSummary()
        self.out = io.BytesIO()
        self.dead: list[tuple[int | None, str]] = []

    def __call__(self, result: ChunkResult) -> None:
        result.write_output(self.out)
        self.summary.merge(result.summary)
        self.dead.extend((o.line, o.reason) for o in result.dead)

    @property
    def written(self) -> list[int]:
        """The alert numbers (#n in the command line) of the lines written, in order."""
        docs = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [int(doc["process"]["command_line"].rsplit("#", 1)[1]) for doc in docs]


def test_a_killed_worker_range_is_taken_over_and_a_killer_line_dead_lettered_alone(tmp_path, monkeypatch):
    _kill_workers_on_markers(monkeypatch, tmp_path / "killed-once")
    n = 600
    src = tmp_path / "alerts.ndjson"
    src.write_bytes(b"\n".join(_alerts(n, {150: KILL_ONCE, 437: KILL_ALWAYS})) + b"\n")
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    got = _Collect()
    deaths = run_file(engine, src, True, 2, got, range_bytes=64 * 1024)
    assert (tmp_path / "killed-once").exists()
    assert got.summary.total == n and got.summary.enriched == n - 1
    assert [line for line, _ in got.dead] == [437]
    assert got.dead[0][1].startswith("worker_died: the worker process enriching it was killed by SIGKILL")
    assert got.written == [i for i in range(1, n + 1) if i != 437], "each line written once, in input order"
    assert deaths.abandoned == 1 and deaths.broken_pools >= 3
    assert -signal.SIGKILL in deaths.exit_codes


def test_a_killed_worker_stream_chunk_is_taken_over(tmp_path, monkeypatch):
    _kill_workers_on_markers(monkeypatch, tmp_path / "killed-once")
    lines = _alerts(3000, {1800: KILL_ONCE})
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    got = _Collect()
    deaths = run_chunks(engine, read_lines(io.BytesIO(b"\n".join(lines))), True, 2, got)
    assert got.summary.enriched == 3000 and not got.dead
    assert got.written == list(range(1, 3001))
    assert deaths.broken_pools == 1 and deaths.abandoned == 0


def test_cli_reports_a_worker_death_and_exits_4_for_the_line_given_up_on(tmp_path, monkeypatch):
    from mitre.cli import app

    _kill_workers_on_markers(monkeypatch, tmp_path / "killed-once")
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("mitre.batch.RANGE_BYTES", 16 * 1024)
    src = tmp_path / "alerts.ndjson"
    src.write_bytes(b"\n".join(_alerts(60, {33: KILL_ALWAYS})) + b"\n")
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text("version: 1\nworkflows: [{name: t}]\n")
    out, dead = tmp_path / "out.ndjson", tmp_path / "dead.ndjson"
    args = ["enrich", str(src), "-o", str(out), "--dead-letter", str(dead), "-j", "2", "--workflows", str(workflows)]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 4, result.output
    assert "worker processes died" in result.output and "forked.py" not in result.output
    assert len(out.read_bytes().splitlines()) == 59
    letter = json.loads(dead.read_text())
    assert letter["line"] == 33 and letter["reason"].startswith("worker_died") and KILL_ALWAYS in letter["raw"]
