"""Checks on the handwritten eval set (evals/cases/*.jsonl) and the example alerts (examples/alerts.ndjson).

Structure checks run everywhere; checks against ATT&CK (active IDs, tactic membership, tactic coverage)
need the read-only reference data in ../shared/data/attack and skip with a reason when it is absent.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).parents[1]
CASES_DIR = ROOT / "evals" / "cases"
SCHEMA_PATH = ROOT / "evals" / "case.schema.json"
EXAMPLES_PATH = ROOT / "examples" / "alerts.ndjson"
ATTACK_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "attack"

MIN_CASES = 170
MIN_MULTI_TECHNIQUE = 20
MIN_HARD_NEGATIVES = 15
MIN_EXAMPLES = 36


def _read_jsonl(path: Path) -> list[tuple[int, object]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        rows.append((lineno, json.loads(line)))
    return rows


@pytest.fixture(scope="module")
def case_files() -> list[Path]:
    files = sorted(CASES_DIR.glob("*.jsonl"))
    assert files, f"no case files in {CASES_DIR}"
    return files


@pytest.fixture(scope="module")
def cases(case_files: list[Path]) -> list[tuple[str, dict]]:
    out = []
    for path in case_files:
        for lineno, obj in _read_jsonl(path):
            assert isinstance(obj, dict), f"{path.name}:{lineno} is not a JSON object"
            out.append((f"{path.name}:{lineno}", obj))
    return out


@pytest.fixture(scope="module")
def attack() -> dict:
    techniques = ATTACK_DIR / "techniques.jsonl"
    tactics = ATTACK_DIR / "tactics.jsonl"
    if not (techniques.is_file() and tactics.is_file()):
        pytest.skip(f"../shared/data not found: {ATTACK_DIR} (techniques.jsonl / tactics.jsonl are loaded by path)")
    tac_rows = [row for _, row in _read_jsonl(tactics)]
    short_to_id = {t["shortname"]: t["id"] for t in tac_rows}
    tech_tactics = {t["id"]: {short_to_id[s] for s in t["tactics"]} for _, t in _read_jsonl(techniques)}
    return {"tactics": {t["id"]: t["name"] for t in tac_rows}, "techniques": tech_tactics}


# --- structure -----------------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_case_matches_schema(cases: list[tuple[str, dict]]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for where, case in cases:
        for err in validator.iter_errors(case):
            path = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{where} ({case.get('id')}): {path}: {err.message}")
    assert not problems, "\n".join(problems[:50])


def test_case_ids_unique(cases: list[tuple[str, dict]]) -> None:
    seen: dict[str, str] = {}
    dupes = []
    for where, case in cases:
        cid = case["id"]
        if cid in seen:
            dupes.append(f"{cid}: {seen[cid]} and {where}")
        seen[cid] = where
    assert not dupes, "\n".join(dupes)


def test_case_counts(cases: list[tuple[str, dict]]) -> None:
    assert len(cases) >= MIN_CASES, f"{len(cases)} cases, need >= {MIN_CASES}"
    multi = [c for _, c in cases if len(c["expected"]["techniques"]) >= 2]
    assert len(multi) >= MIN_MULTI_TECHNIQUE, f"{len(multi)} multi-technique cases, need >= {MIN_MULTI_TECHNIQUE}"
    hard = [c for _, c in cases if c.get("hard_negative")]
    assert len(hard) >= MIN_HARD_NEGATIVES, f"{len(hard)} hard negatives, need >= {MIN_HARD_NEGATIVES}"


def test_hard_negatives_are_empty_and_flagged(cases: list[tuple[str, dict]]) -> None:
    bad = []
    for where, case in cases:
        empty = not case["expected"]["techniques"] and not case["expected"]["tactics"]
        if case.get("hard_negative") and not empty:
            bad.append(f"{where} ({case['id']}): hard_negative with non-empty expected")
        if empty and not case.get("hard_negative"):
            bad.append(f"{where} ({case['id']}): empty expected but not marked hard_negative")
    assert not bad, "\n".join(bad)


def test_alert_shapes_and_platforms_covered(cases: list[tuple[str, dict]]) -> None:
    shapes = Counter()
    tagged = Counter()
    for _, case in cases:
        alert = case["alert"]
        if "kibana.alert.rule.name" in alert:
            shapes["kibana"] += 1
            tagged["tagged" if alert.get("kibana.alert.rule.threat") else "untagged"] += 1
        elif isinstance(alert.get("signal"), dict):
            shapes["signal"] += 1
            tagged["tagged" if alert["signal"].get("rule", {}).get("threat") else "untagged"] += 1
        else:
            shapes["raw"] += 1
    assert set(shapes) == {"kibana", "signal", "raw"}, shapes
    assert tagged["tagged"] and tagged["untagged"], tagged
    platforms = {c.get("platform") for _, c in cases}
    for needed in ("windows", "linux", "macos", "network"):
        assert needed in platforms, f"no {needed} case"
    assert platforms & {"aws", "azure", "gcp", "okta", "m365"}, "no cloud/identity case"


def test_every_file_has_source_and_group(cases: list[tuple[str, dict]]) -> None:
    for where, case in cases:
        assert case["source"].strip(), where
        assert case["group"].strip(), where


# --- ATT&CK-aware checks --------------------------------------------------------------------------


def test_expected_ids_are_active(cases: list[tuple[str, dict]], attack: dict) -> None:
    bad = []
    for where, case in cases:
        for tid in case["expected"]["techniques"]:
            if tid not in attack["techniques"]:
                bad.append(f"{where} ({case['id']}): {tid} is not an active technique")
        for ta in case["expected"]["tactics"]:
            if ta not in attack["tactics"]:
                bad.append(f"{where} ({case['id']}): {ta} is not a tactic")
    assert not bad, "\n".join(bad)


def test_expected_tactics_belong_to_expected_techniques(cases: list[tuple[str, dict]], attack: dict) -> None:
    bad = []
    for where, case in cases:
        techs = [t for t in case["expected"]["techniques"] if t in attack["techniques"]]
        if not techs:
            continue
        allowed = set().union(*(attack["techniques"][t] for t in techs))
        for ta in case["expected"]["tactics"]:
            if ta not in allowed:
                bad.append(f"{where} ({case['id']}): tactic {ta} is not a tactic of any of {techs}")
    assert not bad, "\n".join(bad)


def test_all_tactics_covered(cases: list[tuple[str, dict]], attack: dict) -> None:
    covered = Counter(ta for _, c in cases for ta in c["expected"]["tactics"])
    missing = {ta: name for ta, name in attack["tactics"].items() if covered[ta] == 0}
    assert not missing, f"tactics with no case: {missing}"


# --- examples -------------------------------------------------------------------------------------


def test_examples_parse() -> None:
    assert EXAMPLES_PATH.is_file(), f"missing {EXAMPLES_PATH}"
    lines = [ln for ln in EXAMPLES_PATH.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert len(lines) >= MIN_EXAMPLES, f"{len(lines)} example alerts, need >= {MIN_EXAMPLES}"
    for i, line in enumerate(lines, start=1):
        obj = json.loads(line)
        assert isinstance(obj, dict), f"examples line {i} is not a JSON object"
        assert obj, f"examples line {i} is empty"
