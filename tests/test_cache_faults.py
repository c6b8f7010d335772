"""Faults: the mapping cache's directory unwritable or full. Mapping goes on uncached, every alert is
enriched, and one warning says so — not one per alert. The faults are real file systems (a tmpfs
mounted read-only, a tmpfs filled to its last byte); the tests skip where mounting is not allowed."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.config import WorkflowsFile
from mitre.models import OutcomeStatus
from tests.helpers import LSASS_COMMAND, kibana_alert


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (root only; skipped with the reason otherwise)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(fs: Path) -> Path:
    """Write a file until the file system is full; the file."""
    filler = fs / "filler"
    try:
        with filler.open("wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError:
        pass
    return filler


def _alerts(n: int) -> list[dict]:
    """Distinct mappings (a rule name each), so every alert needs a cache write."""
    return [kibana_alert(rule_name=f"Rule {i}", command_line=f"{LSASS_COMMAND} #{i}") for i in range(n)]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "attackmap.cache" and r.levelno == logging.WARNING]


def test_cache_directory_unwritable_maps_uncached_with_one_warning(tmpfs, caplog):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with caplog.at_level(logging.WARNING, logger="attackmap.cache"):
        engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmpfs / "cache"))
        outcomes = engine.process_batch([_as_raw(a) for a in _alerts(40)])
    assert [o.status for o in outcomes] == [OutcomeStatus.ENRICHED] * 40
    assert not any(o.cache_hit for o in outcomes)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "unusable" in warnings[0] and "Read-only file system" in warnings[0]


def test_cache_directory_full_mid_run_maps_uncached_with_one_warning_then_recovers(tmpfs, caplog):
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmpfs / "cache"))
    assert engine.process(_alerts(1)[0]).status is OutcomeStatus.ENRICHED  # the cache works
    filler = _fill(tmpfs)
    with caplog.at_level(logging.WARNING, logger="attackmap.cache"):
        outcomes = engine.process_batch([_as_raw(a) for a in _alerts(300)[1:]])
    assert [o.status for o in outcomes] == [OutcomeStatus.ENRICHED] * 299
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "full" in warnings[0], warnings
    # Space again: after its cool-down the cache is used again.
    filler.unlink()
    engine.cache.retry_seconds = 0.0  # type: ignore[union-attr]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attackmap.cache"):
        fresh = kibana_alert(rule_name="After the clean-up", command_line=LSASS_COMMAND)
        assert not engine.process(fresh).cache_hit
    assert _warnings(caplog) == [f"mapping cache {tmpfs / 'cache'} usable again"]
    assert engine.cache.get_or_compute  # type: ignore[union-attr]
    assert engine.cache.problem is None  # type: ignore[union-attr]


def test_cli_warns_once_about_a_full_cache(tmpfs, tmp_path, monkeypatch):
    from mitre.cli import app

    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    (tmpfs / "cache").mkdir()
    _fill(tmpfs)
    src = tmp_path / "alerts.ndjson"
    src.write_text("\n".join(json.dumps(a) for a in _alerts(200)) + "\n")
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text("version: 1\nworkflows: [{name: t}]\n")
    out = tmp_path / "out.ndjson"
    args = ["enrich", str(src), "-o", str(out), "-j", "1", "--workflows", str(workflows)]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmpfs / "cache")])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 200
    assert result.output.count("mapping cache") == 1, result.output


def _as_raw(alert: dict):
    from mitre.models import RawAlert

    return RawAlert(line=None, alert=alert)
