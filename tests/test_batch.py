"""Multi-core enrichment of a file: byte ranges read by workers, results in input order."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

from mitre.assemble import EngineOptions, build_engine
from mitre.batch import ChunkResult, run_file, split_ranges
from mitre.config import WorkflowsFile
from mitre.models import RunSummary
from tests.helpers import LSASS_COMMAND, kibana_alert


def _write(path: Path, n: int) -> list[bytes]:
    lines = []
    for i in range(n):
        if i % 97 == 5:
            lines.append(b"{broken " + str(i).encode())
        elif i % 89 == 7:
            lines.append(b"")
        else:
            alert = kibana_alert(command_line=f"{LSASS_COMMAND} #{i % 13}", risk=40 if i % 7 == 0 else 73)
            lines.append(json.dumps(alert).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def test_ranges_cover_the_file_and_end_at_line_ends(tmp_path: Path):
    src = tmp_path / "a.ndjson"
    _write(src, 300)
    data = src.read_bytes()
    ranges = split_ranges(src, size=4096)
    assert len(ranges) > 10
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(data[end - 1 : end] == b"\n" for _, end in ranges)


Dead = list[tuple[int | None, str]]


def _run(src: Path, tmp_path: Path, workers: int, range_bytes: int = 8192) -> tuple[bytes, Dead, RunSummary]:
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    out: list[bytes] = []
    dead: Dead = []
    summary = RunSummary()

    def collect(result: ChunkResult) -> None:
        handle = io.BytesIO()
        result.write_output(handle)
        out.append(handle.getvalue())
        dead.extend((o.line, o.raw or "") for o in result.dead)
        summary.merge(result.summary)

    run_file(engine, src, True, workers, collect, range_bytes)
    return b"".join(out), dead, summary


def _stable(output: bytes) -> list[dict]:
    docs = [json.loads(line) for line in output.splitlines()]
    for doc in docs:
        doc["attackmap"].pop("enriched_at", None)
        doc["attackmap"].pop("cache_hit", None)
    return docs


def test_two_workers_give_the_serial_result_with_file_line_numbers(tmp_path: Path):
    src = tmp_path / "a.ndjson"
    lines = _write(src, 400)
    serial_out, serial_dead, serial_summary = _run(src, tmp_path / "serial", 1)
    parallel_out, parallel_dead, parallel_summary = _run(src, tmp_path / "parallel", 2)
    expected_dead = [(n, line.decode()) for n, line in enumerate(lines, start=1) if line.startswith(b"{broken")]
    assert serial_dead == expected_dead == parallel_dead
    assert _stable(parallel_out) == _stable(serial_out)
    assert parallel_summary.as_dict()["skipped"] == serial_summary.as_dict()["skipped"]
    assert parallel_summary.total == serial_summary.total == sum(1 for line in lines if line.strip())


def test_cli_two_workers_to_a_file_and_to_stdout_match_one_worker(tmp_path: Path):
    """Workers' spooled lines reach a file and a pipe (stdout) intact and in order."""
    import os
    import subprocess
    import sys

    src = tmp_path / "a.ndjson"
    lines = _write(src, 3000)
    src.write_bytes(b"\n".join(lines * 6) + b"\n")  # more than two 4 MiB ranges
    assert src.stat().st_size > 2 * 4 * 2**20
    env = {**os.environ, "ATTACKMAP_HOME": str(tmp_path / "home")}

    def enrich(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "mitre", "enrich", str(src), "--cache-dir", str(tmp_path / "c"), *args]
        return subprocess.run(command, capture_output=True, cwd=tmp_path, env=env, timeout=300)

    one = enrich("-j", "1", "-o", "one.ndjson", "--dead-letter", "d1.ndjson")
    two = enrich("-j", "2", "-o", "two.ndjson", "--dead-letter", "d2.ndjson")
    piped = enrich("-j", "2", "-o", "-", "--dead-letter", "d3.ndjson")
    assert one.returncode == two.returncode == piped.returncode == 3
    expected = _stable((tmp_path / "one.ndjson").read_bytes())
    assert _stable((tmp_path / "two.ndjson").read_bytes()) == expected
    assert _stable(piped.stdout) == expected
    assert (tmp_path / "d1.ndjson").read_bytes() == (tmp_path / "d2.ndjson").read_bytes()
    assert not list(tmp_path.glob("attackmap-spool-*"))
