"""Corpus rows → alerts (mitre.corpora), and the knowledge base and the evals making the same text of a row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from evals.datasets import atomic_case, load_dataset, sigma_case
from evals.runner import case_examples, case_features
from mitre.catalog import Catalog
from mitre.corpora import atomic_alert, atomic_prose, mask_technique_ids, row_kind, sigma_alert
from mitre.features import extract_features
from mitre.knowledge import example_from_row, load_examples
from mitre.text import alert_text
from tests.helpers import ART_ROW, SIGMA_ROW


def test_row_kind_tells_every_labelled_shape_from_an_alert() -> None:
    case = {"id": "c", "alert": {}, "expected": {"techniques": ["T1059"]}}
    rules = {"name": "Encoded PowerShell", "query": "process.args:-enc", "techniques": ["T1059.001"]}
    assert [row_kind(r) for r in (case, SIGMA_ROW, ART_ROW, rules)] == ["cases", "sigma", "atomic", "rules"]
    # A tagged Kibana alert is read as an alert (its rule's threat), not as a corpus row.
    assert row_kind(sigma_alert(SIGMA_ROW)) is None


def test_sigma_alert_is_an_untagged_kibana_alert() -> None:
    alert = sigma_alert(SIGMA_ROW)
    features = extract_features(alert)
    assert features.rule_name == "Suspicious Certutil Decode"
    assert features.rule_threat == ()
    assert "CommandLine|contains: ('-decode' OR '-decodehex')" in (features.rule_query or "")
    assert "logsource: category=process_creation product=windows" in (features.rule_query or "")
    assert "T1027" not in json.dumps(alert)
    assert alert["host.os.type"] == "windows"
    assert alert["kibana.alert.rule.author"] == ["Jane Doe"]


def test_atomic_alert_shows_only_what_an_edr_sees() -> None:
    alert = atomic_alert(ART_ROW)
    assert alert is not None
    text = json.dumps(alert)
    assert "procdump.exe -accepteula -ma lsass.exe" in text
    assert "Dump LSASS" not in text and "Secret description" not in text
    assert "T1003" not in text  # the label in PathToAtomicsFolder paths is masked
    assert alert["process"]["name"] == "cmd.exe"
    assert alert["host"]["os"]["type"] == "windows"


def test_technique_ids_in_commands_are_masked() -> None:
    assert mask_technique_ids("x\\T1059.001\\y t1105_z T1222002") == "x\\Txxxx\\y Txxxx_z Txxxx"
    alert = atomic_alert({**ART_ROW, "command": "copy T1105.exe %TEMP%\\T1105\\"})
    assert alert is not None and alert["process"]["command_line"] == "copy Txxxx.exe %TEMP%\\Txxxx\\"


def test_tests_no_edr_would_see_make_no_alert() -> None:
    assert atomic_alert({**ART_ROW, "executor": "manual"}) is None
    assert atomic_alert({**ART_ROW, "executor": "go"}) is None
    assert atomic_alert({**ART_ROW, "command": "  \n"}) is None


def test_powershell_on_linux_or_macos_is_pwsh() -> None:
    for platform in ("linux", "macos"):
        alert = atomic_alert({**ART_ROW, "executor": "powershell", "platforms": [platform], "command": "Get-Process"})
        assert alert is not None
        assert alert["process"] == {"name": "pwsh", "executable": "/usr/bin/pwsh", "command_line": "Get-Process"}
        assert alert["host"]["os"]["type"] == platform
    windows = atomic_alert({**ART_ROW, "executor": "powershell", "command": "Get-Process"})
    assert windows is not None and windows["process"]["name"] == "powershell.exe"


def test_knowledge_base_learns_the_alert_text_and_counts_rows_without_one(tmp_path: Path, catalog: Catalog) -> None:
    tests = tmp_path / "tests.jsonl"
    manual = {**ART_ROW, "guid": "g-manual", "executor": "manual"}
    tests.write_bytes(orjson.dumps(ART_ROW) + b"\n" + orjson.dumps(manual) + b"\n")
    examples, report = load_examples([tests], catalog)
    example, prose = [e for e in examples if e.source == "tests.jsonl"]
    alert = atomic_alert(ART_ROW)
    assert alert is not None and example.text == alert_text(extract_features(alert))
    assert "Txxxx" in example.text and "cmd.exe" in example.text
    # The test's name and description teach as a second example with the same labels.
    assert prose.text == atomic_prose(ART_ROW) and prose.techniques == example.techniques
    assert ART_ROW["test_name"] in prose.text and prose.id == f"{example.id} prose"
    assert report.rows == 2 and report.examples == 2 and report.no_text == 1


def _sample(path: Path, size: int) -> list[dict[str, Any]]:
    """About `size` rows spread evenly over a corpus file."""
    if not path.is_file():
        pytest.skip(f"{path} not found: the corpus rows are loaded by path")
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return rows[:: max(1, len(rows) // size)]


@pytest.mark.shared_data
def test_knowledge_base_and_evals_make_the_same_text_of_a_sigma_rule(shared_data: Path) -> None:
    rows = [r for r in _sample(shared_data / "sigma" / "rules.jsonl", 300) if r.get("detection") and r.get("id")]
    assert len(rows) >= 300
    for row in rows:
        text, techniques, tactics, _ = example_from_row(row, 0, "rules.jsonl")
        case = sigma_case(row)
        assert text == alert_text(case_features(case)), row["id"]
        assert (tuple(techniques), tuple(tactics)) == (case.techniques, case.tactics)


@pytest.mark.shared_data
@pytest.mark.parametrize("corpus", ["chronicle", "panther"])
def test_knowledge_base_and_evals_make_the_same_text_of_other_vendors_rules(shared_data: Path, corpus: str) -> None:
    """Chronicle and Panther rules teach the shipped knowledge base the text the evals score: the same
    untagged alert, technique IDs in names and queries masked, field-semantics tokens included."""
    path = shared_data / corpus / "rules.jsonl"
    _, cases, _ = load_dataset(f"rules:{path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) == len(cases)
    for index, (row, case) in enumerate(zip(rows, cases, strict=True)):
        text, techniques, _, _ = example_from_row(row, index, path.name)
        assert text == alert_text(case_features(case)), row["name"]
        assert tuple(techniques) == case.techniques
        assert "T1021_002" not in text


@pytest.mark.shared_data
def test_knowledge_base_and_evals_make_the_same_text_of_an_atomic_test(shared_data: Path) -> None:
    rows = _sample(shared_data / "atomic-red-team" / "tests.jsonl", 300)
    assert len(rows) >= 300
    for row in rows:
        text, techniques, _, _ = example_from_row(row, 0, "tests.jsonl")
        case = atomic_case(row)
        if case is None:
            assert (text, techniques) == ("", []), row["guid"]
            continue
        assert text == alert_text(case_features(case)), row["guid"]
        assert tuple(techniques) == case.techniques


@pytest.mark.shared_data
def test_knowledge_base_and_evals_learn_the_same_examples_from_atomic_tests(
    shared_data: Path, tmp_path: Path, catalog: Catalog
) -> None:
    rows = _sample(shared_data / "atomic-red-team" / "tests.jsonl", 300)
    tests = tmp_path / "tests.jsonl"
    tests.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    shipped, _ = load_examples([tests], catalog)
    cases = [c for r in rows if (c := atomic_case(r)) is not None]
    evaluated = [e for _, e in case_examples(cases)]
    assert any(e.id.endswith(" prose") for e in evaluated)
    assert [(e.id, e.text) for e in shipped if e.source == "tests.jsonl"] == [(e.id, e.text) for e in evaluated]
