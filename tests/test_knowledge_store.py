from __future__ import annotations

import json
from pathlib import Path

from mitre.catalog import load_catalog
from mitre.knowledge_store import load_knowledge


def _rules(path: Path) -> Path:
    rows = [
        {
            "name": "LSASS dump via comsvcs",
            "description": "rundll32 comsvcs MiniDump lsass",
            "techniques": ["T1003.001"],
        },
        {"name": "Encoded PowerShell", "description": "powershell -enc base64 command", "techniques": ["T1059.001"]},
        {"name": "Scheduled task", "description": "schtasks /create persistence", "techniques": ["T1053.005"]},
        {"name": "Old tag", "description": "revoked technique id", "techniques": ["T1086"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_trained_knowledge_base_is_stored_and_reloaded(tmp_path: Path):
    catalog = load_catalog(None)
    rules = _rules(tmp_path / "rules.jsonl")
    store = tmp_path / "store"
    first, fp1, _ = load_knowledge([rules], catalog, store)
    assert first is not None and len(list(store.glob("kb-*.pickle"))) == 1
    second, fp2, _ = load_knowledge([rules], catalog, store)
    assert second is not None and second is not first and fp1 == fp2
    text = ["rundll32.exe comsvcs.dll MiniDump 624 lsass.dmp"]
    assert first.classify_many(text, 1) == second.classify_many(text, 1)
    assert second.classify_many(text, 1)[0][0][0] == "T1003.001"
    # The revoked label was redirected while loading, not dropped.
    assert any("T1059.001" in e.techniques for e in second.examples if "revoked" in e.text)


def test_unreadable_store_is_rebuilt_and_changed_files_replace_the_old_entry(tmp_path: Path):
    catalog = load_catalog(None)
    rules = _rules(tmp_path / "rules.jsonl")
    store = tmp_path / "store"
    load_knowledge([rules], catalog, store)
    (entry,) = store.glob("kb-*.pickle")
    entry.write_bytes(b"not a pickle")
    rebuilt, _, _ = load_knowledge([rules], catalog, store)
    assert rebuilt is not None
    with rules.open("a") as handle:
        handle.write(json.dumps({"name": "x", "description": "whoami", "techniques": ["T1033"]}) + "\n")
    load_knowledge([rules], catalog, store)
    (newer,) = store.glob("kb-*.pickle")
    assert newer.name != entry.name


def test_changed_knowledge_base_code_changes_the_fingerprint_in_cache_keys(tmp_path: Path, monkeypatch):
    """The fingerprint goes into every mapping's cache key: mappings made by older knowledge-base
    code must not be served after an upgrade, even when the rule files are unchanged."""
    import mitre.knowledge_store as knowledge_store

    catalog = load_catalog(None)
    rules = _rules(tmp_path / "rules.jsonl")
    _, before, _ = load_knowledge([rules], catalog, tmp_path / "store")
    monkeypatch.setattr(knowledge_store, "code_version", lambda: "another version")
    _, after, _ = load_knowledge([rules], catalog, tmp_path / "store")
    assert before and after and before != after
