"""The engine's outcome memo: replaying a remembered outcome must give exactly what the full
pipeline gives, for every alert shape, and must never replay what it may not."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mitre.assemble import EngineOptions, build_engine
from mitre.config import WorkflowsFile
from mitre.features import (
    EVENT_TYPE_INPUTS,
    FEATURE_INPUTS,
    PLATFORM_INPUTS,
    detect_platform,
    event_type,
    features_from_flat,
    flatten,
    flatten_alert,
)
from mitre.models import OutcomeStatus, RawAlert
from tests.helpers import LSASS_COMMAND, kibana_alert, threat_entry

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = [json.loads(line) for line in (REPO / "examples" / "alerts.ndjson").read_text().splitlines() if line]


def _engine(tmp_path: Path, cache: bool = True):
    options = EngineOptions(knowledge_base=(), cache=cache, cache_dir=tmp_path / "cache")
    return build_engine(WorkflowsFile(), options=options)


def _variant(alert: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same attack from another alert: new id, time, host, user, pid."""
    doc = copy.deepcopy(alert)
    doc["@timestamp"] = f"2026-11-{rng.randrange(1, 28):02d}T10:00:00Z"
    if "kibana.alert.uuid" in doc:
        doc["kibana.alert.uuid"] = f"{rng.getrandbits(64):016x}"
    if isinstance(doc.get("host"), dict):
        doc["host"]["name"] = f"wks-{rng.randrange(1000)}"
    if isinstance(doc.get("user"), dict):
        doc["user"]["name"] = rng.choice(["alice", "bob", "svc_backup"])
    if isinstance(doc.get("process"), dict):
        doc["process"]["pid"] = rng.randrange(100, 60000)
    return doc


def _twin(alert: dict[str, Any], n: int) -> dict[str, Any]:
    """The same alert with one observable or rule input changed: must not share its outcome."""
    doc = copy.deepcopy(alert)
    if n % 3 == 0 and isinstance(doc.get("process"), dict):
        doc["process"]["command_line"] = "notepad.exe C:\\reports\\q3.txt"
    elif n % 3 == 1 and doc.get("kibana.alert.rule.threat"):
        doc["kibana.alert.rule.threat"] = []
    else:
        doc["kibana.alert.risk_score"] = 21
    return doc


def _comparable(outcome: Any) -> tuple[Any, ...]:
    alert = copy.deepcopy(outcome.alert)
    if alert is not None and "attackmap" in alert:
        alert["attackmap"].pop("enriched_at", None)
        alert["attackmap"].pop("cache_hit", None)
    mapping = outcome.mapping.model_dump() if outcome.mapping else None
    decision = outcome.decision.model_dump() if outcome.decision else None
    return outcome.status, outcome.reason, alert, decision, mapping, outcome.line


def test_replayed_outcomes_equal_the_full_pipeline(tmp_path: Path):
    rng = random.Random(3)
    alerts = [_variant(EXAMPLES[i % len(EXAMPLES)], rng) for i in range(4 * len(EXAMPLES))]
    alerts += [_twin(alert, n) for n, alert in enumerate(alerts[: len(EXAMPLES)])]
    rng.shuffle(alerts)
    items = [RawAlert(line=n, raw=json.dumps(a).encode()) for n, a in enumerate(alerts, start=1)]
    memo = _engine(tmp_path)
    first, second = memo.process_batch(items), memo.process_batch(items)
    enriched = [o for o in second if o.status is OutcomeStatus.ENRICHED]
    assert enriched and all(o.cache_hit for o in enriched)
    assert len(memo._outcomes) < len(items)  # variants share signatures
    replayed = first + second
    # Reference: the full pipeline (the memo emptied before each alert) on the same warm cache.
    reference = _engine(tmp_path)
    for item, outcome in zip(items + items, replayed, strict=True):
        reference._outcomes.clear()
        (expected,) = reference.process_batch([item])
        assert _comparable(outcome) == _comparable(expected), item.line


def test_identity_fields_change_nothing_but_presence_still_counts(tmp_path: Path):
    engine = _engine(tmp_path)
    only_host = {"host": {"name": "wks-1"}, "event": {"category": "process"}}
    assert engine.process(only_host).status is not OutcomeStatus.DEAD_LETTER
    # Same signature except that no identity field is present: not an alert, however warm the memo.
    assert engine.process({"host": {"id": "x"}}).status is OutcomeStatus.DEAD_LETTER
    other = engine.process({"host": {"name": "wks-2"}, "event": {"category": "process"}})
    assert other.status is not OutcomeStatus.DEAD_LETTER


def test_alert_ids_do_not_split_signatures_but_observables_do(tmp_path: Path):
    engine = _engine(tmp_path)
    first = engine.process(kibana_alert(command_line=LSASS_COMMAND))
    again = kibana_alert(command_line=LSASS_COMMAND)
    again["kibana.alert.uuid"] = "another-alert"
    assert engine.process(again).cache_hit and not first.cache_hit
    tagged = kibana_alert(command_line=LSASS_COMMAND, threat=[threat_entry("TA0002", "Execution", "T1059")])
    extended = engine.process(tagged)
    assert extended.decision is not None and extended.decision.kind.value == "extend"
    assert "T1059" in extended.alert["threat"]["technique"]["id"]


def test_remembered_outcomes_are_forgotten_after_their_time(tmp_path: Path):
    engine = _engine(tmp_path)
    engine.process(kibana_alert(command_line=LSASS_COMMAND))
    assert engine._outcomes
    engine.outcome_memo_seconds = 0.0
    engine.process(kibana_alert(command_line="whoami /all"))
    assert len(engine._outcomes) == 1  # only the alert just seen


def test_without_a_cache_nothing_is_remembered(tmp_path: Path):
    engine = _engine(tmp_path, cache=False)
    engine.process(kibana_alert(command_line=LSASS_COMMAND))
    assert not engine.process(kibana_alert(command_line=LSASS_COMMAND)).cache_hit


class _Recording(Mapping[str, Any]):
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.data.get(key, default)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_features_read_only_declared_inputs_and_the_input_view_matches_a_full_flatten(index: int):
    alert = EXAMPLES[index]
    full = flatten(alert)
    recording = _Recording(full)
    features_from_flat(recording)
    assert recording.read <= set(FEATURE_INPUTS)
    inputs = flatten_alert(alert)
    assert inputs == {k: v for k, v in full.items() if k in set(FEATURE_INPUTS)}
    assert features_from_flat(inputs) == features_from_flat(full)


ODD_SHAPES = [
    {"kibana": {"alert.rule": {"name": "Dotted mid-level", "threat": []}}, "process.parent": {"name": "winword.exe"}},
    {"process": {"command_line": "", "parent.name": "a"}, "process.command_line": "whoami /all"},
    {"process.command_line": "first", "process": {"command_line": "second"}},
    {"process": {"command_line": {}}, "event": {"category": ["process", "start"]}, "threat": {}},
    {"signal": {"rule": {"name": "Legacy", "risk_score": 80}}, "host.os": {"type": "linux"}},
    {"kibana.alert.rule": {"parameters": {"threat": [{"tactic": {"id": "TA0002"}}]}}, "message": None},
    {"user": {"name": ["alice", ""]}, "dns": {"question": {"name": "x.example"}}, "other": {"process": {"name": "x"}}},
]


@pytest.mark.parametrize("alert", ODD_SHAPES)
def test_input_view_matches_a_full_flatten_on_odd_shapes(alert: dict[str, Any]):
    full = flatten(alert)
    assert flatten_alert(alert) == {k: v for k, v in full.items() if k in set(FEATURE_INPUTS)}


def _written(outcome: Any) -> tuple[Any, ...]:
    """What a run writes for an alert, less the time it ran."""
    alert = copy.deepcopy(outcome.alert)
    if alert is not None and isinstance(alert.get("attackmap"), dict):
        alert["attackmap"].pop("enriched_at", None)
    mapping = outcome.mapping.model_dump() if outcome.mapping else None
    return outcome.status, outcome.reason, outcome.cache_hit, alert, mapping, outcome.line


def test_memo_on_and_off_write_the_same_on_a_realistic_stream(tmp_path: Path):
    """Hosts, agents, users (in profile paths and SIDs too), ids, PIDs, temp names and new command lines
    all vary: the memo still answers most alerts, and what it answers is what the full pipeline writes."""
    from devtools.alertgen import RealisticAlerts

    stream = RealisticAlerts(EXAMPLES, hosts=400, users=60, distinct_commands=0.05, seed=5)
    alerts = list(stream.stream(2_400))
    items = [RawAlert(line=n, raw=json.dumps(a).encode()) for n, a in enumerate(alerts, start=1)]
    batches = [items[i : i + 600] for i in range(0, len(items), 600)]
    options = EngineOptions(knowledge_base=(), cache=True, cache_dir=tmp_path / "on")
    on = build_engine(WorkflowsFile(), options=options)
    off = build_engine(WorkflowsFile(), options=dataclasses.replace(options, cache_dir=tmp_path / "off"))
    off._sign = lambda flat: None  # type: ignore[method-assign]  # no outcome memo: every alert through features, decision, cache and enrichment
    with_memo = [o for batch in batches for o in on.process_batch(batch)]
    without = [o for batch in batches for o in off.process_batch(batch)]
    assert [_written(o) for o in with_memo] == [_written(o) for o in without]
    remembered = sum(o.remembered for o in with_memo)
    assert not any(o.remembered for o in without)
    assert remembered / len(items) > 0.8, remembered


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_platform_detection_reads_only_the_platform_inputs(index: int):
    """The signature keeps these raw (a list and its text differ there): they must be all it reads."""
    recording = _Recording({**{name: "x" for name in FEATURE_INPUTS}, **flatten(EXAMPLES[index])})
    for name in ("host.os.type", "host.os.platform", "host.os.family", "host.os.name", "agent.os"):
        recording.data[name] = ""  # read past every platform field
    detect_platform(recording)
    assert recording.read <= set(PLATFORM_INPUTS)


def test_what_normalising_hides_from_an_indicator_still_splits_key_and_signature(tmp_path: Path):
    """An IP and a port normalise to <ip>:<n>, but tor-proxy fires on 127.0.0.1:9050 only: those alerts
    must not share a mapping or an outcome; another host and PID with the same reading must."""
    engine = _engine(tmp_path)

    def alert(proxy: str, host: str, pid: int) -> dict[str, Any]:
        return {
            "kibana.alert.rule.name": "Unusual Network Client",
            "kibana.alert.risk_score": 73,
            "host": {"name": host, "os": {"type": "linux"}},
            "process": {"pid": pid, "command_line": f"curl --socks5-hostname {proxy} http://files.example.org/a.sh"},
        }

    def techniques(outcome: Any) -> set[str]:
        return {t["id"] for t in outcome.alert["attackmap"]["techniques"]}

    other = engine.process(alert("10.20.30.40:9050", "web-1", 4242))
    tor = engine.process(alert("127.0.0.1:9050", "web-1", 4242))
    again = engine.process(alert("127.0.0.1:9050", "web-2", 5151))
    assert "T1090.003" not in techniques(other) and not tor.remembered and not tor.cache_hit
    assert "T1090.003" in techniques(tor)
    assert again.remembered and techniques(again) == techniques(tor)
    keys = [o.alert["attackmap"]["mapping_key"] for o in (other, tor, again)]
    assert keys[0] != keys[1] == keys[2]  # the indicators' hits are in the key, the host and PID are not


def test_an_identity_field_an_indicator_requires_enters_as_what_it_decides(catalog):
    """A `requires` on user.name (not a machine account): users the pattern accepts share a signature,
    a machine account does not; with no such indicator, the user is only present or absent."""
    from mitre.indicators import Indicator, IndicatorSet
    from mitre.signature import OutcomeSignature

    replication = Indicator(
        id="replication-by-a-person",
        name="test",
        techniques=("T1003.006",),
        fields=("message",),
        pattern="1131f6ad-9c07-11d1-f79f-00c04fb984f2",
        requires={"user.name": r"[^$\s]\s*$"},
        confidence=0.85,
    )
    sign = OutcomeSignature(IndicatorSet([replication], catalog))
    message = "Properties: {1131f6ad-9c07-11d1-f79f-00c04fb984f2} Control Access"

    def flat(user: str, guid_message: str = message) -> dict[str, Any]:
        return flatten_alert({"kibana.alert.rule.name": "r", "user": {"name": user}, "message": guid_message})

    assert sign(flat("alice")) == sign(flat("bob")) != sign(flat("DC01$"))
    other_guid = message.replace("1131f6ad", "2222f6ad")
    assert sign(flat("alice", other_guid)) != sign(flat("alice"))  # normalised alike, read differently
    plain = OutcomeSignature(IndicatorSet([], catalog))
    assert plain(flat("alice")) == plain(flat("DC01$"))


def test_the_event_type_reads_only_its_inputs():
    """The signature keeps these raw: they must be all event_type reads."""
    recording = _Recording({name: "security" for name in FEATURE_INPUTS} | {"winlog.event_id": "4662"})
    assert event_type(recording) == "security:4662"
    empty = _Recording({"event.code": "4688"})
    event_type(empty)
    assert recording.read <= set(EVENT_TYPE_INPUTS) and empty.read <= set(EVENT_TYPE_INPUTS)
