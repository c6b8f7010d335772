"""One vocabulary of field semantics across rule languages and event shapes (mitre.text)."""

from __future__ import annotations

from mitre.features import extract_features
from mitre.text import alert_text, field_tokens, query_tokens, tokenize

RUNDLL32 = "f_proc_rundll32_exe"


def test_the_same_program_is_the_same_evidence_in_every_rule_language():
    queries = {
        "sigma": "selection: Image|endswith: '\\rundll32.exe' AND CommandLine|contains: 'comsvcs'",
        "kql": 'process.name : "rundll32.exe" and process.command_line : *comsvcs*',
        "eql": 'process where process.name in ("rundll32.exe", "regsvr32.exe")',
        "esql": 'from logs-* | where process.name == "rundll32.exe"',
        "spl": "index=windows EventCode=4688 process_name=rundll32.exe",
        "yara-l": "events: $e.target.process.file.full_path = /rundll32\\.exe$/ nocase",
        "lucene": "process.executable:*\\\\rundll32.exe",
    }
    for language, query in queries.items():
        assert RUNDLL32 in set(query_tokens(query)), language


def test_an_event_shows_the_tokens_a_rule_tests():
    sysmon = {
        "winlog": {"channel": "Microsoft-Windows-Sysmon/Operational", "event_id": 1},
        "process": {"executable": "C:\\Windows\\System32\\rundll32.exe", "parent": {"name": "winword.exe"}},
    }
    tokens = field_tokens(extract_features(sysmon))
    assert {RUNDLL32, "f_parent_winword_exe", "f_cat_process_creation"} <= set(tokens)
    rule = "logsource: category=process_creation product=windows\nselection: ParentImage|endswith: '\\winword.exe'"
    assert {"f_parent_winword_exe", "f_cat_process_creation"} <= set(query_tokens(rule))


def test_python_detections_and_cloud_actions():
    python = 'def rule(event):\n    return event.get("eventName") == "ConsoleLogin" and event.get("x") in {"a"}'
    assert "f_action_consolelogin" in set(query_tokens(python))
    cloudtrail = {"event": {"action": "ConsoleLogin", "provider": "signin.amazonaws.com"}}
    assert "f_action_consolelogin" in field_tokens(extract_features(cloudtrail))


def test_event_ids_and_access_values_are_tokens_the_tokenizer_keeps():
    tokens = list(query_tokens("selection: EventID: 4769 AND TicketEncryptionType: '0x17'"))
    assert tokens == ["f_event_4769", "f_access_0x17"]
    text = alert_text(extract_features({"kibana.alert.rule.name": "x", "kibana.alert.rule.query": "EventID: 4769"}))
    assert "f_event_4769" in tokenize(text)
