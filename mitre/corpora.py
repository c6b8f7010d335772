"""Public corpus rows (SigmaHQ rules.jsonl, Atomic Red Team tests.jsonl) as the alerts the mapper receives.

One conversion, shared by the knowledge base (`mitre.knowledge`) and the evals (`evals.datasets`), so
that the knowledge base an eval measures learns from exactly the text of the one that ships.

- A Sigma rule → a Kibana-shaped alert of an untagged rule: title, description, and a readable
  rendering of logsource + detection as `rule.query`.
- An Atomic Red Team test → only what an EDR process alert shows: the command line, the executor's
  process name/executable, the host OS. Never the test name or description. Technique IDs that
  appear literally in a command (`PathToAtomicsFolder\\T1003.001\\...`) are masked, since a real
  alert would not carry the label in the path of an attack tool.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

_TECHNIQUE_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])T\d{4}(?:[._]?\d{3})?(?![0-9])", re.IGNORECASE)
_OS_PLATFORMS = {"windows": "windows", "linux": "linux", "macos": "macos"}
_EXECUTORS: dict[str, tuple[str, str]] = {
    "powershell": ("powershell.exe", r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"),
    "command_prompt": ("cmd.exe", r"C:\Windows\System32\cmd.exe"),
    "sh": ("sh", "/bin/sh"),
    "bash": ("bash", "/bin/bash"),
}


def row_kind(row: Mapping[str, Any]) -> str | None:
    """The shape of a labelled row, told by its keys: "cases" (an eval case), "sigma" (a SigmaHQ rule),
    "atomic" (an Atomic Red Team test), "lolbas" (a LOLBAS command), "rules" (generic rules JSONL); None
    for anything else (an alert)."""
    if "alert" in row and "expected" in row:
        return "cases"
    if "detection" in row and "title" in row:
        return "sigma"
    if "command" in row and "technique" in row:
        return "atomic"
    if "command" in row and "mitre_id" in row:
        return "lolbas"
    if "techniques" in row and ("name" in row or "description" in row):
        return "rules"
    return None


def uuid_like(text: str) -> str:
    """A UUID-shaped id that is stable for the same text (alerts need ids; corpus rows may have none)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def kibana_alert(
    *,
    rule_id: str,
    name: str,
    description: str,
    query: str,
    language: str,
    rule_type: str = "query",
    extra: Mapping[str, Any] | None = None,
    author: str | None = None,
) -> dict[str, Any]:
    """A Kibana security alert of an UNTAGGED rule (no threat, no tactic tags)."""
    alert: dict[str, Any] = {
        "@timestamp": "2026-01-01T00:00:00.000Z",
        "kibana.alert.uuid": uuid_like(rule_id + name),
        "kibana.alert.status": "active",
        "kibana.alert.workflow_status": "open",
        "kibana.alert.rule.rule_id": rule_id,
        "kibana.alert.rule.uuid": uuid_like(rule_id),
        "kibana.alert.rule.name": name,
        "kibana.alert.rule.description": description,
        "kibana.alert.rule.type": rule_type,
        "kibana.alert.rule.language": language,
        "kibana.alert.rule.query": query,
        "kibana.alert.rule.threat": [],
        "kibana.alert.risk_score": 73,
        "kibana.alert.severity": "high",
    }
    if author:
        alert["kibana.alert.rule.author"] = [author]
    if extra:
        alert.update(extra)
    return alert


def rules_alert(row: Mapping[str, Any], rule_id: str) -> dict[str, Any]:
    """The alert an untagged copy of a generic-rules row (Chronicle, Panther, Elastic-shaped JSONL) raises;
    technique IDs written into its name or query (a YARA-L rule named `mitre_attack_T1021_002_…`) masked."""
    return kibana_alert(
        rule_id=mask_technique_ids(rule_id),
        name=mask_technique_ids(str(row.get("name") or "")),
        description=mask_technique_ids(str(row.get("description") or "")),
        query=mask_technique_ids(str(row.get("query") or "")),
        language=str(row.get("language") or "kuery"),
        author=row.get("author") if isinstance(row.get("author"), str) else None,
    )


# ---------------------------------------------------------------- Sigma


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _render_selection(value: Any) -> str:
    """A Sigma search identifier as one readable boolean expression."""
    if isinstance(value, Mapping):
        parts = []
        for key, inner in value.items():
            if isinstance(inner, list | tuple):
                if not inner:
                    parts.append(f"{key}: ()")
                    continue
                joiner = " AND " if "|all" in str(key) else " OR "
                items = joiner.join(_scalar(v) for v in inner)
                parts.append(f"{key}: ({items})" if len(inner) > 1 else f"{key}: {items}")
            else:
                parts.append(f"{key}: {_scalar(inner)}")
        return " AND ".join(parts)
    if isinstance(value, list | tuple):
        rendered = [_render_selection(v) for v in value]
        if all(not isinstance(v, Mapping) for v in value):
            return "keywords: (" + " OR ".join(rendered) + ")"
        return " OR ".join(f"({r})" for r in rendered)
    return _scalar(value)


def render_sigma_detection(logsource: Mapping[str, Any], detection: Mapping[str, Any]) -> str:
    """Logsource + detection as readable text: one line per search identifier, then the condition."""
    lines = []
    if logsource:
        lines.append("logsource: " + " ".join(f"{k}={v}" for k, v in logsource.items() if k != "definition"))
    condition = detection.get("condition")
    for name, value in detection.items():
        if name in ("condition", "timeframe"):
            continue
        lines.append(f"{name}: {_render_selection(value)}")
    if condition:
        cond = " | ".join(str(c) for c in condition) if isinstance(condition, list) else str(condition)
        lines.append(f"condition: {cond}")
    if detection.get("timeframe"):
        lines.append(f"timeframe: {detection['timeframe']}")
    return "\n".join(lines)


def sigma_alert(row: Mapping[str, Any]) -> dict[str, Any]:
    """The alert an untagged copy of this Sigma rule would raise."""
    logsource = row.get("logsource") or {}
    extra: dict[str, Any] = {}
    product = str(logsource.get("product") or "").lower()
    if product in _OS_PLATFORMS:
        extra["host.os.type"] = _OS_PLATFORMS[product]
    return kibana_alert(
        rule_id=str(row.get("id") or ""),  # knowledge-base rows may have none
        name=str(row.get("title") or ""),
        description=str(row.get("description") or "").strip(),
        query=render_sigma_detection(logsource, row.get("detection") or {}),
        language="sigma",
        extra=extra,
        author=row.get("author") if isinstance(row.get("author"), str) else None,
    )


# ---------------------------------------------------------------- Atomic Red Team


def mask_technique_ids(text: str) -> str:
    """Replace literal technique IDs (a label leak in ART paths like PathToAtomicsFolder\\T1003\\)."""
    return _TECHNIQUE_IN_TEXT.sub("Txxxx", text)


def atomic_prose(row: Mapping[str, Any]) -> str:
    """An Atomic Red Team test's name and description: labelled prose a knowledge base can learn a
    technique's vocabulary from, beside the test's alert. Never part of an alert the mapper sees."""
    return "\n".join(str(row.get(key) or "").strip() for key in ("test_name", "description")).strip()


def atomic_alert(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The EDR process alert of running this Atomic Red Team test; None when no EDR would see it as one
    (a test run by hand, an executor not modelled here, an empty command)."""
    executor = str(row.get("executor") or "")
    if executor not in _EXECUTORS:
        return None
    command = mask_technique_ids(str(row.get("command") or "").strip())
    if not command:
        return None
    name, executable = _EXECUTORS[executor]
    platforms = [str(p) for p in row.get("platforms") or ()]
    os_type = next((_OS_PLATFORMS[p] for p in platforms if p in _OS_PLATFORMS), None)
    if os_type in ("linux", "macos") and executor == "powershell":
        name, executable = "pwsh", "/usr/bin/pwsh"
    alert: dict[str, Any] = {
        "@timestamp": "2026-01-01T00:00:00.000Z",
        "event": {"kind": "event", "category": ["process"], "type": ["start"]},
        "process": {"name": name, "executable": executable, "command_line": command},
    }
    if os_type:
        alert["host"] = {"os": {"type": os_type}}
    return alert


# ---------------------------------------------------------------- LOLBAS (GPL-3.0: read at run time only)

_LOLBAS_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")
_LOLBAS_VALUES = {
    "PATH": r"C:\Users\Public\file",
    "PATH_ABSOLUTE": r"C:\Users\Public\file",
    "PATH_SMB": r"\\fileserver\share\file",
    "REMOTEURL": "https://203.0.113.10/file",
    "CMD": "cmd.exe /c calc.exe",
    "PID": "4242",
}


def lolbas_alert(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The EDR process alert of running one LOLBAS command (placeholders filled with neutral values)."""
    command = str(row.get("command") or "").strip()
    if not command:
        return None

    def fill(match: re.Match[str]) -> str:
        value = _LOLBAS_VALUES.get(match.group(1), "file")
        return value + (match.group(2) or "") if match.group(2) and match.group(2).startswith(".") else value

    command = mask_technique_ids(_LOLBAS_PLACEHOLDER.sub(fill, command))
    name = str(row.get("name") or command.split()[0]).lower()
    return {
        "@timestamp": "2026-01-01T00:00:00.000Z",
        "event": {"kind": "event", "category": ["process"], "type": ["start"]},
        "process": {"name": name, "command_line": command},
        "host": {"os": {"type": "windows"}},
    }


def lolbas_prose(row: Mapping[str, Any]) -> str:
    """A LOLBAS command's description and use case: labelled prose beside its alert."""
    return "\n".join(str(row.get(key) or "").strip() for key in ("description", "usecase")).strip()
