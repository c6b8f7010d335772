"""`attackmap export` end to end, and `outputs.exports` in a workflow: the flows' service functions
hand enriched alerts to the exports, which reach a real receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from devtools.receivers import HEC_TOKEN, Receiver, many_alerts, read_ndjson, write_ndjson
from mitre.assemble import EngineOptions, build_engine
from mitre.cli import app
from mitre.config import load_workflows
from mitre.io.elastic import SourceAlert
from tests.helpers import kibana_alert


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATTACKMAP_HEC_TOKEN", HEC_TOKEN)
    monkeypatch.delenv("ATTACKMAP_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _export(*args: str) -> Any:
    return CliRunner().invoke(app, ["export", *args], catch_exceptions=False)


def test_file_formats_and_dead_letters(env: Path, enriched_examples: list[dict[str, Any]]) -> None:
    source = write_ndjson(env / "enriched.ndjson", enriched_examples)
    with source.open("ab") as handle:
        handle.write(b"{not json\n" + orjson.dumps(kibana_alert()) + b"\n")
    for fmt, name in (("event", "events.ndjson"), ("stix", "bundle.json"), ("navigator", "layer.json"),
                      ("matrix", "matrix.html")):  # fmt: skip
        result = _export(str(source), "--format", fmt, "-o", str(env / name))
        assert result.exit_code == 3, result.output  # the two bad lines
        assert "2 dead-lettered" in " ".join(result.output.split())
    events = read_ndjson(env / "events.ndjson")
    assert len(events) == len(enriched_examples)
    letters = read_ndjson(env / "export-dead-letter.ndjson")
    assert [r["line"] for r in letters[:2]] == [len(enriched_examples) + 1, len(enriched_examples) + 2]
    assert str(letters[0]["reason"]).startswith("not JSON") and "provenance" in str(letters[1]["reason"])
    assert orjson.loads((env / "bundle.json").read_bytes())["type"] == "bundle"
    assert orjson.loads((env / "layer.json").read_bytes())["versions"]["layer"] == "4.5"
    assert (env / "matrix.html").read_text().startswith("<!DOCTYPE html>")


def test_hec_export_spools_while_down_and_the_next_run_delivers(
    env: Path, hec: tuple[Receiver, str, Path], enriched_examples: list[dict[str, Any]]
) -> None:
    receiver, base, received = hec
    alerts = many_alerts(enriched_examples, 60)
    source = write_ndjson(env / "enriched.ndjson", alerts)
    common = ["--format", "hec", "--url", base, "--index", "attackmap", "--ack"]
    assert _export(str(source), *common).exit_code == 0
    assert len(read_ndjson(received)) == 60

    receiver.stop()
    more = write_ndjson(env / "more.ndjson", many_alerts(enriched_examples, 20, run="later"))
    down = _export(str(more), *common, "--retry-for", "1")
    assert down.exit_code == 4 and "20 event(s) stay spooled" in " ".join(down.output.split())
    receiver.start()
    empty = write_ndjson(env / "empty.ndjson", [])
    assert _export(str(empty), *common).exit_code == 0  # sends what the last run left
    ids = [r["event"]["id"] for r in read_ndjson(received)]  # type: ignore[index]
    assert len(ids) == 80 and len(set(ids)) == 80


def test_workflow_outputs_export_what_the_flows_enrich(env: Path, hec: tuple[Receiver, str, Path]) -> None:
    from mitre.service import enrich_sources, make_runtime

    _, base, received = hec
    workflows = env / "workflows.yaml"
    workflows.write_text(yaml.safe_dump({"version": 1, "workflows": [{
        "name": "exporting",
        "mapper": {"knowledge_base": []},
        "outputs": {"elasticsearch_write_back": False, "exports": [
            {"type": "hec", "url": base, "index": "attackmap", "ack": True},
            {"type": "events", "path": str(env / "events.ndjson")},
        ]},
    }]}))  # fmt: skip
    engine = build_engine(load_workflows(workflows), options=EngineOptions(cache_dir=env / "cache"))
    runtime = make_runtime(engine, es=None)
    assert runtime.exports is not None and len(runtime.exports.deliveries) == 2
    alerts = [kibana_alert(command_line="rundll32 comsvcs.dll, MiniDump 624 lsass.dmp full"), kibana_alert(risk=5)]
    sources = [SourceAlert(doc_id=f"d{i}", index="i", seq_no=0, primary_term=1, source=a) for i, a in enumerate(alerts)]
    result = enrich_sources(runtime, sources)
    assert result.summary.enriched == 1
    assert runtime.exports.close(timeout=30)
    hec_events = read_ndjson(received)
    assert len(hec_events) == 1 and "T1003.001" in hec_events[0]["fields"]["technique_ids"]  # type: ignore[index]
    assert read_ndjson(env / "events.ndjson")[0]["id"] == alerts[0]["kibana.alert.uuid"]
