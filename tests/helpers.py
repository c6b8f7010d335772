"""Small builders shared by the engine tests."""

from __future__ import annotations

from typing import Any


def kibana_alert(
    *,
    rule_name: str = "Custom rule",
    risk: float = 73,
    threat: list[dict[str, Any]] | None = None,
    command_line: str = "cmd.exe /c whoami",
    process_name: str = "cmd.exe",
    parent_name: str = "explorer.exe",
    os_type: str = "windows",
    flat: bool = False,
) -> dict[str, Any]:
    """A Kibana security alert: kibana.alert.* as flat dotted keys beside nested (or flat) ECS."""
    alert: dict[str, Any] = {
        "@timestamp": "2026-10-03T08:14:22.511Z",
        "kibana.alert.uuid": "5b1c0d9e-2f44-4a8c-9d2e-7b0f3e1a2c44",
        "kibana.alert.rule.name": rule_name,
        "kibana.alert.rule.rule_id": "rule-" + rule_name.lower().replace(" ", "-"),
        "kibana.alert.rule.type": "query",
        "kibana.alert.risk_score": risk,
        "kibana.alert.severity": "high",
        "kibana.alert.rule.threat": threat or [],
        "host": {"name": "wks-0142", "os": {"type": os_type}},
        "user": {"name": "jdoe"},
    }
    if flat:
        alert.update(
            {
                "process.name": process_name,
                "process.command_line": command_line,
                "process.parent.name": parent_name,
            }
        )
    else:
        alert["process"] = {"name": process_name, "command_line": command_line, "parent": {"name": parent_name}}
    return alert


def threat_entry(
    tactic_id: str, tactic_name: str, technique: str | None = None, sub: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"framework": "MITRE ATT&CK", "tactic": {"id": tactic_id, "name": tactic_name}}
    if technique:
        tech: dict[str, Any] = {"id": technique, "name": technique}
        if sub:
            tech["subtechnique"] = [{"id": sub, "name": sub}]
        entry["technique"] = [tech]
    return entry


LSASS_COMMAND = (
    r"C:\Windows\System32\rundll32.exe C:\Windows\System32\comsvcs.dll, MiniDump 624 "
    r"C:\Users\jdoe\AppData\Local\Temp\lsass.dmp full"
)

# A SigmaHQ rules.jsonl row and an Atomic Red Team tests.jsonl row, as in ../shared/data.
SIGMA_ROW = {
    "id": "11111111-0000-0000-0000-000000000001",
    "title": "Suspicious Certutil Decode",
    "description": "Detects certutil decoding a base64 file",
    "logsource": {"category": "process_creation", "product": "windows"},
    "detection": {
        "selection": {"Image|endswith": "\\certutil.exe", "CommandLine|contains": ["-decode", "-decodehex"]},
        "condition": "selection",
    },
    "techniques": ["T1027"],
    "tactics": ["stealth"],
    "author": "Jane Doe",
    "related": [],
    "path": "rules/windows/process_creation/proc_creation_win_certutil_decode.yml",
}
ART_ROW = {
    "technique": "T1003.001",
    "technique_name": "OS Credential Dumping: LSASS Memory",
    "test_name": "Dump LSASS with procdump",
    "description": "Secret description that must not leak",
    "guid": "22222222-0000-0000-0000-000000000002",
    "platforms": ["windows"],
    "executor": "command_prompt",
    "command": "PathToAtomicsFolder\\T1003.001\\bin\\procdump.exe -accepteula -ma lsass.exe lsass_dump.dmp",
    "path": "atomics/T1003.001/T1003.001.yaml",
}
