"""Property-based tests over the whole alert surface, with alerts of any JSON shape grown from the
real examples (tests/alert_strategies.py): features, decision and indicators, cache key, validation,
enrichment, the outcome memo and its signature, the NDJSON sink and the ES sink's documents.

The property everywhere: no exception escapes, and every input ends as exactly one outcome —
enriched, skipped or dead-lettered with a reason that is not an internal error (an internal error is a
crash the engine caught: it counts as one here). Example counts per test are the `ci` profile's
(tests/conftest.py: derandomized, so a CI failure reproduces); the `dev` profile runs a tenth.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mitre.assemble import EngineOptions, build_engine
from mitre.batch import process_chunk
from mitre.cachekey import cache_key
from mitre.config import DecisionSettings, WorkflowsFile
from mitre.decision import decide
from mitre.engine import Engine
from mitre.enrich import apply_enrichment, build_enrichment, skip_provenance, timestamp
from mitre.failures import INTERNAL_REASONS
from mitre.features import extract_features, flatten_alert
from mitre.io.elastic import _engine_doc
from mitre.models import (
    Decision,
    DecisionKind,
    Evidence,
    MappingResult,
    OutcomeStatus,
    RawAlert,
    TechniqueScore,
)
from mitre.validate import validate_mapping
from tests.alert_strategies import as_line, json_values, mutated_alerts

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")


def examples(ci_count: int) -> int:
    """Examples for one test: `ci_count` under the ci profile, a tenth of it under dev."""
    return max(10, ci_count * settings.default.max_examples // 1000)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    cache = tmp_path_factory.mktemp("fuzz-cache")
    return build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=cache))


@pytest.fixture(scope="module")
def es_serializer() -> Any:
    """The serializer the Elasticsearch client sends a bulk body with (no node needed)."""
    from elasticsearch import Elasticsearch

    return Elasticsearch("http://127.0.0.1:9").transport.serializers


def _no_crash(outcomes: list[Any], n: int) -> None:
    assert len(outcomes) == n
    for outcome in outcomes:
        assert outcome.status in OutcomeStatus
        if outcome.status is OutcomeStatus.DEAD_LETTER:
            assert outcome.reason.split(":")[0] not in INTERNAL_REASONS, outcome.reason
            assert outcome.raw is not None


@settings(max_examples=examples(2500))
@given(st.lists(mutated_alerts(), min_size=1, max_size=2))
def test_ndjson_lines_of_any_shape_end_enriched_skipped_or_dead_lettered(engine, alerts):
    """The CLI's path: raw lines → engine → NDJSON records; every line once, none crashes."""
    items = [RawAlert(line=i, raw=as_line(a)) for i, a in enumerate(alerts, start=1)]
    result = process_chunk(engine, items, keep_skipped=True)
    assert result.summary.total == len(items)
    written = result.output.splitlines()
    assert len(written) + len(result.dead) == len(items)
    for record in written:
        orjson.loads(record)
    for outcome in result.dead:
        assert outcome.reason.split(":")[0] not in INTERNAL_REASONS, outcome.reason


@settings(max_examples=examples(2000))
@given(st.lists(mutated_alerts(), min_size=1, max_size=2))
def test_parsed_alerts_of_any_shape_get_one_outcome_each(engine, alerts):
    """The flows' path: documents already parsed (big integers, NaN, surrogates, deep nesting survive)."""
    outcomes = engine.process_batch([RawAlert(line=None, alert=a) for a in alerts])
    _no_crash(outcomes, len(alerts))


@settings(max_examples=examples(2000))
@given(mutated_alerts())
def test_features_decision_and_cache_key_take_any_shape(engine, alert):
    """features raise only ValueError (not an alert); decision, indicators and the key never raise,
    and the key and the memo signature are deterministic."""
    if not isinstance(alert, dict):
        with pytest.raises(ValueError):
            flatten_alert(alert)
        return
    try:
        features = extract_features(alert)
    except ValueError:
        return
    for mode in ("hybrid", "gap-fill", "always"):
        settings_ = DecisionSettings(mode=mode)
        decision = decide(features, engine.indicators.evaluate(features), settings_, engine.catalog)
        assert decision.kind in DecisionKind and decision.reason
    key = cache_key(features, catalog_version="v", mapper="local", model=None, prompt_hash="")
    assert key == cache_key(extract_features(alert), catalog_version="v", mapper="local", model=None, prompt_hash="")
    assert engine._signature(flatten_alert(alert)) == engine._signature(flatten_alert(alert))


@settings(max_examples=examples(1000))
@given(mutated_alerts())
def test_the_outcome_memo_replays_what_the_full_pipeline_computes(engine, alert):
    """The second copy of an alert (a memo or cache hit) ends as the first one did."""
    if not isinstance(alert, dict):
        return
    first, second = engine.process_batch([RawAlert(line=None, alert=alert), RawAlert(line=None, alert=alert)])
    again = engine.process(alert)
    for outcome in (second, again):
        assert outcome.status is first.status and outcome.reason == first.reason
        if first.status is OutcomeStatus.ENRICHED:
            assert outcome.alert is not None and first.alert is not None
            assert outcome.alert["threat"] == first.alert["threat"]
            assert outcome.alert["attackmap"]["provenance_hash"] == first.alert["attackmap"]["provenance_hash"]


technique_ids = st.one_of(
    st.sampled_from(("T1059", "T1059.001", "T1562.001", "T1086", "T9999", "t1059", " T1003 ", "T1003.999", "TA0002")),
    st.text(max_size=12),
)
tactic_ids = st.one_of(
    st.sampled_from(("TA0002", "TA0005", "TA0112", "execution", "Stealth", "TA9999")), st.text(max_size=10)
)


@settings(max_examples=examples(1000))
@given(
    st.lists(st.tuples(technique_ids, st.floats(0, 1), st.lists(tactic_ids, max_size=3)), max_size=5),
    st.lists(tactic_ids, max_size=3),
)
def test_validation_keeps_only_active_catalog_ids_whatever_a_mapper_says(engine, techniques, tactics):
    result = MappingResult(
        mapper="fuzz",
        techniques=tuple(
            TechniqueScore(
                technique_id=t,
                confidence=c,
                tactic_ids=tuple(ta),
                evidence=(Evidence(source="llm", detail=t, score=c),),
            )
            for t, c, ta in techniques
        ),
        tactic_ids=tuple(tactics),
    )
    validated = validate_mapping(result, engine.catalog)
    for technique in validated.result.techniques:
        assert technique.technique_id in engine.catalog.techniques
        assert all(engine.catalog.tactic(t) is not None for t in technique.tactic_ids)


@settings(max_examples=examples(1500))
@given(mutated_alerts(), json_values, st.one_of(st.none(), json_values), st.sampled_from(list(DecisionKind)))
def test_enrichment_and_the_es_document_take_any_existing_threat(engine, es_serializer, alert, threat, stored, kind):
    """An alert's own threat.* (analyst tags, flat or nested, of any shape) is merged, not trusted;
    the partial-update document for ES serializes to valid UTF-8 JSON whatever was stored before."""
    if not isinstance(alert, dict):
        return
    alert = {**alert, "threat": threat, "threat.technique.id": threat}
    try:
        features = extract_features(alert)
    except ValueError:
        return
    decision = Decision(kind=kind, reason="fuzz", detail="fuzz")
    mapping = validate_mapping(engine.mapper.map(features, decision), engine.catalog)
    enrichment = build_enrichment(alert, features, decision, mapping, engine.catalog, settings_hash="s")
    enriched = apply_enrichment(alert, enrichment, cache_hit=False, now=timestamp())
    assert enriched["attackmap"]["provenance_hash"]
    assert skip_provenance(decision, engine.catalog)["decision"] == kind.value
    stored_source = {"threat": stored, "attackmap": stored, "threat.tactic.id": stored}
    doc = _engine_doc(stored_source, enriched)
    body = es_serializer.dumps(
        [{"update": {"_index": "i", "_id": "x"}}, {"doc": doc}], mimetype="application/vnd.elasticsearch+x-ndjson"
    )
    for line in body.splitlines():
        json.loads(line.decode("utf-8"))  # strict UTF-8: a lone surrogate would not pass


def test_the_strategies_reach_the_shapes_the_issue_names():
    """A guard on the generator itself: its examples do contain what they claim to."""
    from hypothesis import Phase

    def shapes(value: Any, depth: int = 0) -> set[str]:
        found: set[str] = set()
        if depth > 256:
            return {"nested past 256 levels"}
        if isinstance(value, dict):
            found |= {"flat and nested"} if any("." in k and k.split(".")[0] in value for k in value) else set()
            for item in value.values():
                found |= shapes(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                found |= shapes(item, depth + 1)
        elif isinstance(value, str):
            found |= {"NUL"} if "\x00" in value else set()
            found |= {"lone surrogate"} if any("\ud800" <= c <= "\udfff" for c in value) else set()
        elif isinstance(value, bool):
            found.add("boolean")
        elif isinstance(value, int) and abs(value) >= 2**64:
            found.add("integer past 64 bits")
        elif isinstance(value, float) and value != value:
            found.add("NaN")
        return found

    seen: set[str] = set()

    @settings(max_examples=800, phases=[Phase.generate], database=None)
    @given(mutated_alerts())
    def observe(alert: Any) -> None:
        seen.update(shapes(alert))

    observe()
    assert seen >= {
        "nested past 256 levels",
        "flat and nested",
        "NUL",
        "lone surrogate",
        "boolean",
        "integer past 64 bits",
        "NaN",
    }, seen
