from __future__ import annotations

import pytest

from mitre.cachekey import cache_key, normalise_volatile
from mitre.features import MAX_FIELD_CHARS, MAX_SCRIPT_CHARS, extract_features
from tests.helpers import kibana_alert, threat_entry


def test_flat_and_nested_shapes_give_the_same_features():
    nested = extract_features(kibana_alert(command_line="whoami /all"))
    flat = extract_features(kibana_alert(command_line="whoami /all", flat=True))
    assert nested.fields == flat.fields
    assert nested.fields["process.command_line"] == "whoami /all"
    assert nested.platform == "windows"
    assert nested.risk_score == 73


def test_fully_nested_kibana_alert_and_mixed_keys():
    alert = {
        "kibana": {"alert": {"rule": {"name": "Nested rule", "threat": []}, "risk_score": 55}},
        "process": {"parent.name": "winword.exe", "name": "cmd.exe"},
    }
    features = extract_features(alert)
    assert features.rule_name == "Nested rule"
    assert features.risk_score == 55
    assert features.fields["process.parent.name"] == "winword.exe"


def test_cloud_api_parameters_are_observables():
    """A cloud alert's specifics (the command an SSM call runs, the pod a Kubernetes exec enters)
    live in the API request, not in process fields."""
    ssm = {
        "event": {"action": "SendCommand", "provider": "ssm.amazonaws.com"},
        "aws": {"cloudtrail": {"request_parameters": '{"documentName": "AWS-RunShellScript", "commands": ["id"]}'}},
    }
    k8s = {"kubernetes.audit.requestURI": "/api/v1/namespaces/prod/pods/api-0/exec?command=sh&command=-c"}
    assert "AWS-RunShellScript" in extract_features(ssm).fields["aws.cloudtrail.request_parameters"]
    assert extract_features(k8s).fields["kubernetes.audit.requestURI"].endswith("command=sh&command=-c")


def test_rule_threat_keeps_techniques_subtechniques_and_tactic_only_entries():
    threat = [
        threat_entry("TA0006", "Credential Access", "T1003", "T1003.001"),
        threat_entry("TA0007", "Discovery"),
    ]
    features = extract_features(kibana_alert(threat=threat))
    ids = [(r.tactic_id, r.technique_id) for r in features.rule_threat]
    assert ids == [("TA0006", "T1003"), ("TA0006", "T1003.001"), ("TA0007", None)]
    assert features.has_rule_mitre_tags


def test_legacy_signal_and_raw_ecs():
    legacy = {
        "signal": {"rule": {"name": "Old rule", "rule_id": "r1", "risk_score": 80, "threat": []}},
        "process": {"command_line": "net user"},
    }
    assert extract_features(legacy).rule_id == "r1"
    assert extract_features(legacy).risk_score == 80
    raw = {"event": {"category": ["network"]}, "dns": {"question": {"name": "x.example"}}}
    features = extract_features(raw)
    assert features.rule_name is None and features.platform == "network"


def test_existing_ecs_threat_is_read_from_both_shapes():
    alert = kibana_alert()
    alert["threat.technique.id"] = ["T1059"]
    alert["threat"] = {"tactic": {"id": ["TA0002"]}}
    refs = extract_features(alert).existing_threat
    assert {r.technique_id for r in refs if r.technique_id} == {"T1059"}
    assert {r.tactic_id for r in refs if r.tactic_id} == {"TA0002"}


def test_long_fields_are_truncated_with_a_marker():
    alert = kibana_alert(command_line="A" * (MAX_FIELD_CHARS + 500))
    alert["powershell"] = {"file": {"script_block_text": "B" * 20_000}}
    features = extract_features(alert)
    assert features.fields["process.command_line"].endswith("…[truncated 500 chars]")
    assert len(features.fields["powershell.file.script_block_text"]) < MAX_SCRIPT_CHARS + 40
    assert set(features.truncated_fields) == {"process.command_line", "powershell.file.script_block_text"}


@pytest.mark.parametrize("doc", [{}, {"foo": {"bar": 1}}])
def test_documents_without_rule_or_observables_are_rejected(doc):
    with pytest.raises(ValueError, match="not an alert"):
        extract_features(doc)


def test_cache_key_ignores_volatile_values_and_identity_but_not_the_command():
    def key(cmd: str, host: str = "wks-1", user: str = "jdoe") -> str:
        alert = kibana_alert(command_line=cmd)
        alert["host"]["name"] = host
        alert["user"]["name"] = user
        alert["@timestamp"] = "2026-01-01T00:00:00Z"
        return cache_key(extract_features(alert), catalog_version="c", mapper="local", model=None, prompt_hash="")

    a = key(r"procdump -ma 612 C:\Users\alice\AppData\Local\Temp\tmpA81F.tmp {1B4E28BA-2FA1-11D2-883F-0016D3CCA427}")
    b = key(
        r"procdump -ma 612 C:\Users\bob\AppData\Local\Temp\tmp99QZ.tmp {00000000-2FA1-11D2-883F-0016D3CCA427}", "srv"
    )
    assert a == b
    assert a != key("procdump -ma lsass.exe")
    assert len(a) == 64
    features = extract_features(kibana_alert())
    base = dict(catalog_version="c", mapper="local", model=None, prompt_hash="")
    assert cache_key(features, **base) != cache_key(features, **{**base, "prompt_hash": "p2"})
    assert cache_key(features, **base) != cache_key(features, **{**base, "catalog_version": "other"})


def test_normalise_volatile_examples():
    assert normalise_volatile("/home/alice/.ssh/id_rsa") == "/home/<user>/.ssh/id_rsa"
    assert normalise_volatile("at 2026-10-03T08:14:22.511Z from 10.1.2.3") == "at <ts> from <ip>"
    assert normalise_volatile("blob deadbeefdeadbeefdeadbeef") == "blob <hex>"
