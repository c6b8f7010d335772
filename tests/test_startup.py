"""Start-up stays cheap: a stored knowledge base is unpickled (and scikit-learn imported) only
when an alert actually needs mapping, never for a run the cache answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mitre.catalog import load_catalog
from mitre.knowledge_store import defer_knowledge, load_knowledge

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from pathlib import Path
from mitre.config import WorkflowsFile
from mitre.assemble import EngineOptions, build_engine
engine = build_engine(WorkflowsFile(), options=EngineOptions(
    knowledge_base=(Path(sys.argv[1]),), cache_dir=Path(sys.argv[2])))
before = "sklearn" in sys.modules
engine.process(json.loads(sys.argv[3]))
print(json.dumps({"before": before, "after": "sklearn" in sys.modules, "warnings": engine.warnings}))
"""


def _rules(path: Path) -> Path:
    rows = [
        {"name": "LSASS dump", "description": "rundll32 comsvcs MiniDump lsass", "techniques": ["T1003.001"]},
        {"name": "Encoded PowerShell", "description": "powershell -enc base64", "techniques": ["T1059.001"]},
        {"name": "Unknown tag", "description": "label from the future", "techniques": ["T9999"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _probe(tmp_path: Path, rules: Path, alert: dict) -> dict:
    env = {**os.environ, "ATTACKMAP_HOME": str(tmp_path / "home")}
    args = [sys.executable, "-c", PROBE, str(rules), str(tmp_path / "cache"), json.dumps(alert)]
    result = subprocess.run(args, capture_output=True, cwd=REPO, env=env, timeout=120, check=True)
    return json.loads(result.stdout.decode().splitlines()[-1])


def test_stored_knowledge_loads_only_when_an_alert_needs_mapping(tmp_path: Path):
    rules = _rules(tmp_path / "rules.jsonl")
    alert = {"process": {"command_line": "rundll32.exe comsvcs.dll MiniDump 624 lsass.dmp"}}
    first = _probe(tmp_path, rules, alert)  # trains and stores the knowledge base
    assert first["before"] and any("T9999" in w for w in first["warnings"])
    warm = _probe(tmp_path, rules, alert)  # the cache answers: nothing to load
    assert warm == {"before": False, "after": False, "warnings": first["warnings"]}
    other = _probe(tmp_path, rules, {"process": {"command_line": "powershell -enc SQBFAFgA"}})
    assert other["before"] is False and other["after"] is True


def test_deferred_knowledge_matches_the_loaded_one(tmp_path: Path):
    catalog = load_catalog(None)
    rules = _rules(tmp_path / "rules.jsonl")
    store = tmp_path / "store"
    loaded, fingerprint, warnings = load_knowledge([rules], catalog, store)
    deferred, deferred_fingerprint, deferred_warnings = defer_knowledge([rules], catalog, store)
    assert callable(deferred) and (deferred_fingerprint, deferred_warnings) == (fingerprint, warnings)
    assert loaded is not None
    text = ["rundll32.exe comsvcs.dll MiniDump lsass"]
    assert deferred().classify_many(text, 1) == loaded.classify_many(text, 1)


def test_a_full_catalog_alone_makes_a_knowledge_base(tmp_path: Path, shared_data: Path):
    """Without any knowledge-base file, a full ATT&CK bundle's procedure examples and analytics
    still train one; the offline package (no relationships) gives none."""
    from mitre.catalog import load_catalog as load

    full = load(shared_data / "attack" / "enterprise-attack.json")
    knowledge, fingerprint, warnings = load_knowledge([tmp_path / "missing.jsonl"], full, tmp_path / "store")
    assert knowledge is not None and fingerprint
    assert warnings == [
        f"knowledge base {tmp_path / 'missing.jsonl'} not found: mapping with the ATT&CK catalog's own examples only"
    ]
    text = ["rundll32.exe C:\\windows\\system32\\comsvcs.dll, MiniDump 624 C:\\temp\\lsass.dmp full"]
    assert knowledge.classify_many(text, 3)[0][0][0].startswith("T1003")
    assert load_knowledge([], load_catalog(None), tmp_path / "store2")[0] is None
