"""The knowledge base's built-in training rows: the catalog's own procedure examples and analytics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mitre.catalog import Catalog, load_catalog
from mitre.config import MapperSettings
from mitre.indicators import IndicatorSet
from mitre.knowledge import Example, KnowledgeBase, catalog_examples, load_examples
from mitre.mappers.local import LocalMapper


def _ref(eid: str) -> list[dict[str, str]]:
    return [{"source_name": "mitre-attack", "external_id": eid}]


def _technique(n: int, eid: str, name: str, *phases: str) -> dict[str, Any]:
    return {
        "type": "attack-pattern",
        "id": f"attack-pattern--{n}",
        "name": name,
        "description": f"{name}.",
        "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": p} for p in phases],
        "external_references": _ref(eid),
    }


def _uses(n: int, target: int, text: str) -> dict[str, Any]:
    return {
        "type": "relationship",
        "id": f"relationship--{n}",
        "relationship_type": "uses",
        "source_ref": "malware--1",
        "target_ref": f"attack-pattern--{target}",
        "description": text,
    }


def _bundle(tmp_path: Path) -> Catalog:
    objects: list[dict[str, Any]] = [
        {
            "type": "x-mitre-matrix",
            "id": "x-mitre-matrix--1",
            "tactic_refs": ["x-mitre-tactic--1", "x-mitre-tactic--2"],
        },
        {
            "type": "x-mitre-tactic",
            "id": "x-mitre-tactic--1",
            "name": "Execution",
            "x_mitre_shortname": "execution",
            "external_references": _ref("TA0002"),
        },
        {
            "type": "x-mitre-tactic",
            "id": "x-mitre-tactic--2",
            "name": "Impact",
            "x_mitre_shortname": "impact",
            "external_references": _ref("TA0040"),
        },
        _technique(1, "T1059", "Command and Scripting Interpreter", "execution"),
        _technique(2, "T1059.001", "PowerShell", "execution"),
        _technique(3, "T1490", "Inhibit System Recovery", "impact"),
        {"type": "malware", "id": "malware--1", "name": "Example"},
        _uses(1, 2, "[Example](https://attack.mitre.org/software/S9999) ran `powershell -enc`.(Citation: Report)"),
        _uses(2, 2, "[Example](https://attack.mitre.org/software/S9999) used <code>Invoke-Expression</code>."),
        _uses(3, 3, "[Example](https://attack.mitre.org/software/S9999) ran vssadmin delete shadows /all /quiet."),
        {
            "type": "x-mitre-detection-strategy",
            "id": "x-mitre-detection-strategy--1",
            "name": "Detection of Shadow Copy Deletion",
            "x_mitre_analytic_refs": ["x-mitre-analytic--1"],
        },
        {
            "type": "x-mitre-analytic",
            "id": "x-mitre-analytic--1",
            "description": "Monitor vssadmin, wmic shadowcopy and bcdedit recoveryenabled no.",
            "x_mitre_log_source_references": [{"name": "WinEventLog:Security", "channel": "EventCode=4688"}],
            "x_mitre_mutable_elements": [{"field": "TimeWindow", "description": "Correlation window"}],
        },
        {
            "type": "relationship",
            "id": "relationship--9",
            "relationship_type": "detects",
            "source_ref": "x-mitre-detection-strategy--1",
            "target_ref": "attack-pattern--3",
        },
    ]
    path = tmp_path / "enterprise-attack.json"
    path.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "spec_version": "2.1", "objects": objects}))
    return load_catalog(path)


def test_bundle_procedures_and_analytics_become_labelled_rows(tmp_path: Path) -> None:
    catalog = _bundle(tmp_path)
    kinds = {(e.technique, e.kind) for e in catalog.data.examples}
    assert kinds == {("T1059.001", "procedure"), ("T1490", "procedure"), ("T1490", "analytic")}
    # Citations, actor names (links) and markup are stripped: they say nothing about the technique.
    texts = " ".join(e.text for e in catalog.data.examples)
    assert "Citation" not in texts and "Example" not in texts and "<code>" not in texts
    rows = catalog_examples(catalog)
    # One description row per technique; both PowerShell procedures fit in one row; the analytic keeps
    # its strategy name and log source.
    assert sum("description" in r.id for r in rows) == len(catalog.techniques)
    powershell = [r for r in rows if r.techniques == ("T1059.001",) and "procedure" in r.id]
    assert len(powershell) == 1 and "powershell -enc" in powershell[0].text
    assert "Invoke-Expression" in powershell[0].text
    analytic = next(r for r in rows if "analytic" in r.id)
    assert "Shadow Copy Deletion" in analytic.text and "EventCode=4688" in analytic.text
    assert analytic.tactics == ("TA0040",)


def test_the_offline_package_has_no_built_in_rows() -> None:
    assert catalog_examples(load_catalog(None)) == []


def test_knowledge_bases_learn_from_the_catalog_once(tmp_path: Path) -> None:
    catalog = _bundle(tmp_path)
    rules = tmp_path / "rules.jsonl"
    rules.write_text(
        json.dumps({"name": "Encoded PowerShell", "description": "powershell -enc", "techniques": ["T1059.001"]})
    )
    loaded, report = load_examples([rules], catalog)
    assert report.examples == 1 and len(loaded) == 1 + len(catalog_examples(catalog))
    kb = KnowledgeBase(loaded)
    assert kb.with_catalog(catalog) is kb
    own = KnowledgeBase([Example(id="1", text="powershell -enc", techniques=("T1059.001",), tactics=("TA0002",))])
    extended = own.with_catalog(catalog)
    assert len(extended) == len(loaded)
    # Shadow-copy deletion is learnt from the catalog alone: no rule of the knowledge base shows it.
    assert extended.classify_many(["vssadmin.exe delete shadows /all /quiet"], k=1)[0][0][0] == "T1490"


def test_the_local_mapper_extends_a_knowledge_base_built_without_the_catalog(tmp_path: Path) -> None:
    catalog = _bundle(tmp_path)
    own = KnowledgeBase([Example(id="1", text="powershell -enc", techniques=("T1059.001",), tactics=("TA0002",))])
    mapper = LocalMapper(catalog, IndicatorSet([], catalog), MapperSettings(), knowledge=own)
    assert mapper.knowledge is not None and len(mapper.knowledge) > len(own)
    assert LocalMapper(catalog, IndicatorSet([], catalog), MapperSettings()).knowledge is None
