"""Dataset converters, label normalisation and grouping on small synthetic inputs and the real corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets import Case, atomic_case, load_dataset, select_split, sigma_case
from evals.grouping import fold_assignment, group_cases
from evals.labels import normalise_cases
from mitre.catalog import Catalog, load_catalog
from mitre.corpora import atomic_alert, mask_technique_ids, sigma_alert
from mitre.features import extract_features
from tests.helpers import ART_ROW, SIGMA_ROW


def test_sigma_case_carries_labels_and_attribution_beside_the_alert() -> None:
    case = sigma_case(SIGMA_ROW)
    assert case.alert == sigma_alert(SIGMA_ROW)
    assert case.techniques == ("T1027",) and case.tactics == ("stealth",)
    assert case.author == "Jane Doe"  # DRL 1.1 attribution travels with the case
    assert case.reference and case.reference.endswith("proc_creation_win_certutil_decode.yml")
    assert case.platform == "windows"
    assert case.dedup_text == case.alert["kibana.alert.rule.query"]


def test_atomic_case_carries_the_label_beside_the_alert() -> None:
    case = atomic_case(ART_ROW)
    assert case is not None
    assert case.alert == atomic_alert(ART_ROW)
    assert case.id == ART_ROW["guid"] and case.techniques == ("T1003.001",)
    assert case.platform == "windows"
    assert case.family == "atomics/T1003.001/T1003.001.yaml"
    assert case.dedup_text == case.alert["process"]["command_line"]
    assert atomic_case({**ART_ROW, "executor": "manual"}) is None


def test_manual_atomic_tests_are_counted_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "tests.jsonl"
    manual = {**ART_ROW, "guid": "g2", "executor": "manual"}
    path.write_text(json.dumps(ART_ROW) + "\n" + json.dumps(manual) + "\n")
    kind, cases, report = load_dataset(f"atomic:{path}")
    assert kind == "atomic" and len(cases) == 1
    assert report.skipped["manual_executor"] == 1


def test_elastic_toml_and_generic_rules(tmp_path: Path) -> None:
    toml = tmp_path / "rule.toml"
    toml.write_text(
        """
[metadata]
creation_date = "2020/01/01"

[rule]
author = ["Elastic"]
name = "Encoded PowerShell"
description = "PowerShell started with an encoded command"
rule_id = "abc-123"
language = "eql"
type = "eql"
query = 'process where process.name == "powershell.exe" and process.args : "-enc*"'

[[rule.threat]]
framework = "MITRE ATT&CK"
[rule.threat.tactic]
id = "TA0002"
name = "Execution"
[[rule.threat.technique]]
id = "T1059"
name = "Command and Scripting Interpreter"
[[rule.threat.technique.subtechnique]]
id = "T1059.001"
name = "PowerShell"
"""
    )
    kind, cases, _ = load_dataset(str(toml))
    assert kind == "elastic"
    (case,) = cases
    assert case.techniques == ("T1059.001",) and case.tactics == ("TA0002",)
    assert extract_features(case.alert).rule_threat == ()
    rules = tmp_path / "rules.jsonl"
    rules.write_text(json.dumps({"name": "n", "description": "d", "query": "q", "techniques": ["T1105"]}) + "\n")
    kind, cases, _ = load_dataset(f"rules:{rules}")
    assert kind == "rules" and cases[0].techniques == ("T1105",)


def test_labels_normalised_and_unmappable_cases_reported(catalog: Catalog) -> None:
    good = sigma_case(SIGMA_ROW)
    v19 = sigma_case({**SIGMA_ROW, "id": "x2", "techniques": ["T1685"], "tactics": ["defense-impairment"]})
    bogus = sigma_case({**SIGMA_ROW, "id": "x3", "techniques": ["T9999"]})
    untagged = sigma_case({**SIGMA_ROW, "id": "x4", "techniques": []})
    cases, stats = normalise_cases([good, v19, bogus, untagged], catalog)
    assert [c.id for c in cases] == [good.id, "x2"]
    assert cases[0].tactics == ("TA0005",)  # v19 'stealth' → Defense Evasion
    assert cases[1].techniques[0].startswith("T1562")  # v19 T1685 back to Impair Defenses
    assert stats.excluded == {"no_mappable_technique": 1, "no_technique_labels": 1}
    assert stats.unmapped_techniques["T9999"] == 1


def test_grouping_keeps_near_duplicates_in_one_fold() -> None:
    script = (
        "$ps = (Get-NetTCPConnection -State Listen | Select-Object -ExpandProperty OwningProcess);"
        " foreach ($p in $ps) { Get-Process -Id $p | Format-List Name, Path, Company, StartTime }"
        " ; Write-Host 'collected process list for review' -ForegroundColor Green ; Out-File -FilePath {out}"
    )
    base = atomic_case({**ART_ROW, "command": script.replace("{out}", "C:\\temp\\a.txt")})
    near = atomic_case({**ART_ROW, "guid": "g-near", "command": script.replace("{out}", "C:\\temp\\b.txt")})
    assert base is not None
    other_rows = [
        {**ART_ROW, "guid": f"g{i}", "technique": "T1082", "path": "atomics/T1082/T1082.yaml", "command": cmd}
        for i, cmd in enumerate(["systeminfo", "hostname", "whoami /all", "ver", "set", "ipconfig /all", "net view"])
    ]
    others = [c for r in other_rows if (c := atomic_case(r)) is not None]
    related_a = sigma_case({**SIGMA_ROW, "id": "ra", "detection": {"s": {"Image": "a.exe"}, "condition": "s"}})
    related_b = sigma_case(
        {**SIGMA_ROW, "id": "rb", "related": [{"id": "ra", "type": "derived"}], "detection": {"x": {"Y": "zz"}}}
    )
    assert near is not None
    cases = [base, near, *others, related_a, related_b]
    groups = group_cases(cases)
    assert groups[0] == groups[1]
    assert groups[-1] == groups[-2]
    assert len(set(groups[2:-2])) == len(others)
    folds = fold_assignment(groups, 3)
    assert folds[0] == folds[1] and folds[-1] == folds[-2]
    assert sorted(set(folds)) == [0, 1, 2]


@pytest.mark.shared_data
def test_real_corpora_convert(shared_data: Path) -> None:
    catalog = load_catalog(
        shared_data / "attack" / "enterprise-attack.json", [shared_data / "attack" / "v18_to_v19_crosswalk.jsonl"]
    )
    _, sigma, sigma_report = load_dataset(f"sigma:{shared_data / 'sigma' / 'rules.jsonl'}")
    assert sigma_report.rows == len(sigma) == 3780
    assert all(c.alert["kibana.alert.rule.threat"] == [] for c in sigma)
    scored, stats = normalise_cases(sigma, catalog)
    assert len(scored) + sum(stats.excluded.values()) == 3780
    assert stats.excluded.get("no_mappable_technique", 0) == 0
    _, atomic, atomic_report = load_dataset(f"atomic:{shared_data / 'atomic-red-team' / 'tests.jsonl'}")
    assert len(atomic) + sum(atomic_report.skipped.values()) == 1819
    commands = [c.alert["process"]["command_line"] for c in atomic]
    assert [c for c in commands if mask_technique_ids(c) != c] == []  # no technique ID left in a command
    scored_art, art_stats = normalise_cases(atomic, catalog)
    assert art_stats.excluded == {}
    assert all(c.tactics for c in scored_art)


def _telemetry_row(case_id: str, split: str, techniques: list[str], tactics: list[str], v19: dict | None) -> dict:
    row = {
        "id": case_id,
        "alert": {"winlog": {"channel": "Security", "event_id": 4719, "event_data": {"SubjectUserName": "x"}}},
        "expected": {"techniques": techniques, "tactics": tactics},
        "source": "evtx-to-mitre:E2M-1",
        "group": f"E2M-{case_id}",
        "split": split,
        "notes": "never read by the mapper",
    }
    if v19 is not None:
        row["expected_v19"] = v19
    return row


def test_telemetry_cases_keep_their_split_v19_labels_and_benign_events(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    rows = [
        _telemetry_row("dev-1", "dev", ["T1562.002"], ["TA0005"], {"techniques": ["T1685.001"], "tactics": ["TA0112"]}),
        _telemetry_row("dev-2", "check", [], [], {"techniques": [], "tactics": []}),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kind, cases, report = load_dataset(f"telemetry:{path}")
    assert kind == "telemetry" and report.cases == 2
    attack, benign = cases
    assert attack.split == "dev" and attack.techniques_v19 == ("T1685.001",) and not attack.hard_negative
    assert benign.split == "check" and benign.hard_negative  # an empty label list marks a benign event
    assert "notes" not in json.dumps(attack.alert)
    assert [c.id for c in select_split(cases, "check")] == ["dev-2"]


def test_an_empty_telemetry_file_loads_no_cases(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(b"")
    assert load_dataset(f"telemetry:{path}")[1] == []


def test_rule_names_and_queries_lose_technique_ids(tmp_path: Path) -> None:
    """A YARA-L rule named after its technique must not hand the mapper its label."""
    path = tmp_path / "rules.jsonl"
    row = {
        "name": "mitre_attack_T1021_002_windows_admin_share_basic",
        "description": "admin share",
        "query": "rule mitre_attack_T1021_002_windows_admin_share_basic { events: $e.target.file.full_path = /C\\$/ }",
        "techniques": ["T1021.002"],
    }
    path.write_text(json.dumps(row) + "\n")
    _, (case,), _ = load_dataset(f"rules:{path}")
    assert "T1021" not in json.dumps(case.alert)


@pytest.mark.shared_data
def test_tactics_follow_their_techniques_into_a_newer_attack(shared_data: Path) -> None:
    """Under v19.1, a v18 label T1562.001 + Defense Evasion becomes T1685 + Defense Impairment."""
    v19 = load_catalog(shared_data / "attack-v19" / "enterprise-attack.json")
    case = Case(id="c", alert={}, techniques=("T1562.001", "T1059.001"), tactics=("TA0005", "TA0002"))
    (scored,), stats = normalise_cases([case], v19)
    assert scored.techniques == ("T1685", "T1059.001")
    assert scored.tactics == ("TA0002", "TA0112")
    assert stats.tactics_followed_techniques == 1
    v18 = load_catalog(shared_data / "attack" / "enterprise-attack.json")
    (same,), _ = normalise_cases([case], v18)
    assert same.tactics == ("TA0005", "TA0002")


@pytest.mark.shared_data
def test_real_telemetry_converts(shared_data: Path) -> None:
    """telemetry-dev as its README describes it: 456 cases, 308 dev / 148 check, 20 benign."""
    path = shared_data / "telemetry-dev" / "cases.jsonl"
    if not path.is_file() or not path.stat().st_size:
        pytest.skip(f"{path} is empty on this machine (its README describes 456 cases)")
    _, cases, _ = load_dataset(f"telemetry:{path}")
    assert len(cases) == 456
    assert len(select_split(cases, "dev")) == 308 and len(select_split(cases, "check")) == 148
    assert sum(c.hard_negative for c in cases) == 20
    assert all(c.techniques_v19 is not None for c in cases)
