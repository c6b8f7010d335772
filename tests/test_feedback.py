"""The analyst feedback loop through the engine: corrections override the next mapping of the same
cache key at once (in this process and in another one sharing the store), stay within their tenant,
opt rules out, fill the review queue and the telemetry, and join the knowledge base's next build."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from mitre.assemble import EngineOptions, build_engine
from mitre.config import Environment, FeedbackSettings, WorkflowsFile
from mitre.engine import Engine
from mitre.feedback.loop import FeedbackLoop, open_feedback
from mitre.feedback.models import Feedback, OptOut
from mitre.feedback.store import ElasticCorrections, FeedbackLog, telemetry
from mitre.models import OutcomeStatus, RawAlert
from tests.helpers import LSASS_COMMAND, kibana_alert


def _config(**feedback: Any) -> WorkflowsFile:
    return WorkflowsFile(feedback=FeedbackSettings(**feedback))


def _engine(home: Path, config: WorkflowsFile | None = None, **options: Any) -> Engine:
    env = Environment(home=home)
    return build_engine(config or _config(), env, EngineOptions(cache_dir=home / "cache", **options))


def _alert(space: str = "red", command: str = LSASS_COMMAND) -> dict[str, Any]:
    alert = kibana_alert(rule_name="Dump", command_line=command, process_name="rundll32.exe")
    alert["kibana.space_ids"] = [space]
    return alert


def _techniques(outcome: Any) -> list[str]:
    return [t["id"] for t in (outcome.alert or {})["attackmap"].get("techniques", [])]


def _correct(engine: Engine, enriched: dict[str, Any], techniques: list[str], verdict: str = "correct") -> None:
    assert engine.feedback is not None
    provenance = enriched["attackmap"]
    engine.feedback.corrections.add(
        Feedback(
            mapping_key=provenance["mapping_key"],
            tenant=provenance.get("tenant"),
            verdict=verdict,  # type: ignore[arg-type]
            techniques=tuple(techniques),
            analyst="ana",
            rule_id=enriched.get("kibana.alert.rule.rule_id"),
            alert=enriched,
        )
    )


def test_a_correction_overrides_the_next_mapping_of_its_key_here_and_in_another_engine(tmp_path: Path) -> None:
    engine = _engine(tmp_path, knowledge_base=())
    other = _engine(tmp_path, knowledge_base=())  # another process with the same home and store
    first = engine.process(_alert())
    assert "T1003.001" in _techniques(first)
    assert other.process(_alert()).cache_hit
    _correct(engine, first.alert or {}, ["T1218.011"])
    for e in (engine, other):
        again = e.process(_alert())
        assert _techniques(again) == ["T1218.011"]
        assert (again.alert or {})["attackmap"]["mapper"] == "analyst"
        assert (again.alert or {})["threat"]["technique"]["subtechnique"]["id"] == ["T1218.011"]
    # Another tenant's identical alert is untouched.
    blue = engine.process(_alert("blue"))
    assert "T1003.001" in _techniques(blue) and (blue.alert or {})["attackmap"]["mapper"] == "local"
    # A rejection leaves the alert without techniques; an accept restores the mapper's answer.
    _correct(engine, first.alert or {}, [], verdict="reject")
    assert _techniques(engine.process(_alert())) == []
    _correct(engine, first.alert or {}, ["T1003.001"], verdict="accept")
    assert "T1003.001" in _techniques(engine.process(_alert()))


def test_rule_opt_out_from_the_page_applies_to_its_tenant_only(tmp_path: Path) -> None:
    engine = _engine(tmp_path, knowledge_base=())
    assert engine.process(_alert()).status is OutcomeStatus.ENRICHED
    assert engine.feedback is not None
    engine.feedback.corrections.set_opt_out(OptOut(tenant="red", rule_id="rule-dump", opted_out=True, by="ana"))
    red = engine.process(_alert())
    assert red.status is OutcomeStatus.SKIPPED and red.reason == "opted_out"
    assert engine.process(_alert("blue")).status is OutcomeStatus.ENRICHED
    engine.feedback.corrections.set_opt_out(OptOut(tenant="red", rule_id="rule-dump", opted_out=False, by="ana"))
    assert engine.process(_alert()).status is OutcomeStatus.ENRICHED


def test_review_queue_and_decision_telemetry(tmp_path: Path) -> None:
    engine = _engine(tmp_path, knowledge_base=())
    weak = _alert(command="rundll32.exe C:\\Users\\x\\a.dll,Start")
    outcomes = engine.process_batch([RawAlert(line=None, alert=a) for a in (_alert(), weak)])
    assert all(o.status is OutcomeStatus.ENRICHED for o in outcomes)
    feedback = engine.feedback
    assert feedback is not None and feedback.log is not None
    queue = feedback.log.review("red")
    # The confident LSASS mapping needs no look; the alert nothing was found for does.
    assert [i.mapping_key for i in queue] == [(outcomes[1].alert or {})["attackmap"]["mapping_key"]]
    assert queue[0].confidence == 0 and queue[0].rule_id == "rule-dump" and queue[0].tenant == "red"
    assert feedback.log.review("blue") == []
    _correct(engine, outcomes[0].alert or {}, ["T1003.001"], verdict="accept")
    _correct(engine, outcomes[1].alert or {}, ["T1218.011"])
    rows, totals = telemetry(feedback.log, feedback.corrections, "red")
    assert totals == {"skip": 0, "map": 2, "extend": 0}
    (dump,) = rows
    assert (dump.rule, dump.map, dump.accepted, dump.corrected, dump.precision) == ("rule-dump", 2, 1, 1, 0.5)


def test_corrections_join_the_knowledge_base_on_its_next_build(tmp_path: Path) -> None:
    config = _config(knowledge_tenants=["red"])
    engine = _engine(tmp_path, config)
    before = engine._settings_hash
    first = engine.process(_alert())
    _correct(engine, first.alert or {}, ["T1218.011"])
    blue = engine.process(_alert("blue"))
    _correct(engine, blue.alert or {}, ["T1055"])  # blue is not a knowledge tenant: stays its own
    rebuilt = _engine(tmp_path, config)
    assert rebuilt._settings_hash != before, "the knowledge base changed, so every cache key did"
    rows = [orjson.loads(line) for line in (tmp_path / "feedback" / "knowledge.jsonl").read_bytes().splitlines()]
    assert [r["expected"]["techniques"] for r in rows] == [["T1218.011"]]
    assert "attackmap" not in rows[0]["alert"] and "threat" not in rows[0]["alert"]


@pytest.mark.elasticsearch
def test_corrections_in_elasticsearch_are_seen_by_every_engine(es_url: str, es_index_name: str, tmp_path: Path) -> None:
    settings = FeedbackSettings(store="elasticsearch", es_url=es_url, index=es_index_name)
    config = WorkflowsFile(feedback=settings)
    engine = _engine(tmp_path / "a", config, knowledge_base=())
    other = _engine(tmp_path / "b", config, knowledge_base=())
    assert isinstance(engine.feedback, FeedbackLoop)
    assert isinstance(engine.feedback.corrections, ElasticCorrections)
    first = engine.process(_alert())
    _correct(engine, first.alert or {}, ["T1218.011"])
    engine.feedback.corrections.set_opt_out(OptOut(tenant="blue", rule_id="rule-dump", opted_out=True, by="ana"))
    time.sleep(0.3)  # the index's count is polled at most every 0.25 s
    assert _techniques(other.process(copy.deepcopy(_alert()))) == ["T1218.011"]
    assert other.process(_alert("blue")).reason == "opted_out"
    reopened = open_feedback(settings, Environment(home=tmp_path / "c"))
    assert [f.techniques for f in reopened.corrections.history("red")] == [("T1218.011",)]
    assert isinstance(reopened.log, FeedbackLog)
