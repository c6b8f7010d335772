"""No alert can kill a run: an alert whose processing raises is dead-lettered with an error id, its
traceback logged under that id, and every other alert of the batch, file or run goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.config import WorkflowsFile
from mitre.engine import Engine
from mitre.features import extract_features, parse_rule_threat
from mitre.models import OutcomeStatus, RawAlert
from tests.helpers import LSASS_COMMAND, kibana_alert

MARKER = "crash-me-please"


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    return build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))


def _explode_on_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug no one foresaw: the decision stage raises for alerts whose command line has the marker."""
    import mitre.engine

    real = mitre.engine.decide

    def decide(features: Any, *args: Any) -> Any:
        if MARKER in features.fields.get("process.command_line", ""):
            raise KeyError("a bug that only this alert reaches")
        return real(features, *args)

    monkeypatch.setattr(mitre.engine, "decide", decide)


def test_rule_threat_entries_of_any_json_type_are_read_not_trusted():
    """The crash the issue measured: technique/subtechnique a boolean or a number (166 of 10,000 mutants)."""
    entries = [
        {"tactic": {"id": "TA0006", "name": "Credential Access"}, "technique": True},
        {"tactic": {"id": "TA0002"}, "technique": [{"id": "T1059", "subtechnique": 7}]},
        {"tactic": {"id": "TA0005"}, "technique": [{"id": 1.5, "subtechnique": "T1218.011"}, False]},
        {"tactic": ["TA0003"], "technique": {"id": "T1053", "subtechnique": [{"id": "T1053.005"}, None]}},
        {"tactic": {"id": {"nested": 1}}, "technique": [{"id": ["T1003"]}]},
        True,
        12,
    ]
    refs = parse_rule_threat(entries)
    assert {r.technique_id for r in refs} == {None, "T1059", "1.5", "T1053", "T1053.005"}
    assert parse_rule_threat(True) == parse_rule_threat(3.0) == parse_rule_threat("T1059") == ()
    features = extract_features({**kibana_alert(), "kibana.alert.rule.threat": entries})
    assert features.rule_threat == refs


def test_an_alert_that_raises_is_dead_lettered_and_its_batch_goes_on(engine, monkeypatch, caplog):
    _explode_on_marker(monkeypatch)
    items = []
    for n in range(1, 41):
        command = f"{LSASS_COMMAND} {MARKER}" if n in (3, 17, 40) else f"{LSASS_COMMAND} #{n}"
        items.append(RawAlert(line=n, raw=json.dumps(kibana_alert(command_line=command)).encode()))
    with caplog.at_level(logging.ERROR, logger="attackmap.errors"):
        outcomes = engine.process_batch(items)
    assert [o.line for o in outcomes] == list(range(1, 41))
    dead = [o for o in outcomes if o.status is OutcomeStatus.DEAD_LETTER]
    assert [o.line for o in dead] == [3, 17, 40]
    assert all(o.status is OutcomeStatus.ENRICHED for o in outcomes if o.line not in (3, 17, 40))
    for outcome in dead:
        assert outcome.error_id and outcome.reason.startswith("internal_error: KeyError")
        assert outcome.error_id in outcome.reason and MARKER in (outcome.raw or "")
    # One traceback for the bug, the other two failures point at it by id.
    records = [r for r in caplog.records if r.name == "attackmap.errors"]
    assert len(records) == 3 and sum(1 for r in records if r.exc_info) == 1
    assert {o.error_id for o in dead} == {r.getMessage().split("[error ")[1].split("]")[0] for r in records}


def test_a_failing_observer_costs_no_outcome(engine):
    def broken(outcomes: Any) -> None:
        raise RuntimeError("ledger is locked")

    engine.observers.append(broken)
    outcome = engine.process(kibana_alert(command_line=LSASS_COMMAND))
    assert outcome.status is OutcomeStatus.ENRICHED


def test_alerts_python_callers_hand_in_that_json_cannot_hold_still_get_an_outcome(engine):
    """Flows hand the engine parsed documents: integers past 64 bits, lone surrogates, deep nesting."""
    deep: Any = "bottom"
    for _ in range(400):
        deep = {"d": deep}
    odd = [
        {**kibana_alert(command_line=LSASS_COMMAND), "event": {"sequence": 10**40}},
        {**kibana_alert(command_line="cmd.exe /c whoami \ud800"), "x": deep},
        {"process": {"command_line": ["a", 10**40, None, {"k": "\x00"}]}, "kibana.alert.rule.name": 12},
    ]
    outcomes = engine.process_batch([RawAlert(line=None, alert=a) for a in odd])
    assert len(outcomes) == 3
    assert all(o.status is not OutcomeStatus.DEAD_LETTER or o.raw for o in outcomes)


def test_a_field_holding_nesting_hundreds_of_levels_deep_is_read_not_printed(engine):
    """Found by bench/fuzz_file.py: process.args = ["x", [[[...700 levels...]]]] made str() recurse
    until the stack ran out (4 of 10,000 fuzzed alerts were internal errors)."""
    deep: Any = "bottom"
    for _ in range(700):
        deep = [deep]
    line = json.dumps({**kibana_alert(command_line=LSASS_COMMAND), "process.args": ["rundll32.exe", deep]})
    outcome = engine.process_batch([RawAlert(line=1, raw=line.encode())])[0]
    assert outcome.status is OutcomeStatus.ENRICHED
    assert outcome.mapping is not None


def _write_alerts(path: Path, n: int, bad: set[int]) -> None:
    lines = []
    for i in range(1, n + 1):
        command = f"{LSASS_COMMAND} {MARKER} {i}" if i in bad else f"{LSASS_COMMAND} #{i}"
        lines.append(json.dumps(kibana_alert(command_line=command)))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("workers", [1, 2])
def test_enrich_dead_letters_crashing_alerts_with_line_and_error_id_and_exits_4(
    tmp_path, monkeypatch, workers: int
) -> None:
    """Through the CLI, serially and with forked workers: every other line is written, the failing
    ones are dead-lettered by file line, the terminal shows no traceback, the log file has it."""
    from mitre.cli import app

    _explode_on_marker(monkeypatch)
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("mitre.batch.RANGE_BYTES", 4096)  # several byte ranges, so workers share the file
    src = tmp_path / "alerts.ndjson"
    bad = {2, 31, 77}
    _write_alerts(src, 90, bad)
    out, dead = tmp_path / "out.ndjson", tmp_path / "dead.ndjson"
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text("version: 1\nworkflows: [{name: t}]\n")  # no knowledge base: quick to start
    args = ["enrich", str(src), "-o", str(out), "--dead-letter", str(dead), "-j", str(workers)]
    result = CliRunner().invoke(app, [*args, "--workflows", str(workflows), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 4, result.output
    assert "a bug that only this alert reaches" not in result.output, "no traceback on the terminal"
    assert len(out.read_text().splitlines()) == 90 - len(bad)
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [d["line"] for d in letters] == sorted(bad)
    assert all(d["reason"].startswith("internal_error: KeyError") and d["error_id"] for d in letters)
    log = (tmp_path / "home" / "logs" / "attackmap.log").read_text()
    assert "Traceback" in log
    assert all(d["error_id"] in log for d in letters)


@pytest.mark.elasticsearch
def test_an_alert_that_fails_in_an_es_batch_is_recorded_with_its_reason_and_the_batch_is_written(
    engine, monkeypatch, es_client, es_index
):
    """The flows' service: read → map → write back, with one alert reaching a bug."""
    from mitre.io.elastic import ElasticSource
    from mitre.service import make_runtime, process_located_and_refs

    _explode_on_marker(monkeypatch)
    ops: list[dict[str, Any]] = []
    for i in range(30):
        command = f"{LSASS_COMMAND} {MARKER}" if i == 11 else f"{LSASS_COMMAND} #{i}"
        alert = {**kibana_alert(command_line=command), "kibana.alert.uuid": f"a-{i:03d}"}
        ops += [{"index": {"_index": es_index, "_id": f"a-{i:03d}"}}, alert]
    es_client.bulk(operations=ops, refresh=True)
    runtime = make_runtime(engine, es_client, write_back=True, batch_size=10)
    located = list(ElasticSource(es_client, es_index).read())
    result = process_located_and_refs(runtime, [], located, None).as_dict()
    assert result["enriched"] == 29 and result["written"] == 29
    assert result["dead_letter"] == {"internal_error": 1}
    [letter] = result["dead_letters"]
    assert letter["id"] == "a-011" and letter["index"] == es_index and letter["error_id"]
    assert letter["reason"].startswith("internal_error: KeyError")
    assert "attackmap" not in es_client.get(index=es_index, id="a-011")["_source"]
