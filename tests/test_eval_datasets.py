"""Dataset converters, label normalisation and grouping on small synthetic inputs and the real corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets import atomic_case, load_dataset, sigma_case
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
