"""Redaction: stable HMAC pseudonyms for users, hosts, IPs, e-mails and secrets."""

from __future__ import annotations

import pytest

from mitre.models import AlertFeatures
from mitre.redact import Redactor, installation_salt


def alert() -> AlertFeatures:
    return AlertFeatures(
        rule_name="Credential in command line",
        rule_query='process.command_line : "*password*"',
        fields={
            "user.name": "jdoe",
            "user.domain": "CORP",
            "host.name": "wks-0142.corp.example",
            "source.ip": "10.1.2.3",
            "process.command_line": (
                r"net use \\fs01\share /user:CORP\jdoe password=Hunter2! && curl -H 'Authorization: Bearer "
                r"abcdefghijklmnop123456' http://203.0.113.9/x -d mail=jdoe@example.com "
                r"&& type C:\Users\jdoe\Desktop\notes.txt && ping wks-0142 && mysql -p S3cretPw -u root "
                r"AKIAIOSFODNN7EXAMPLE"
            ),
        },
    )


def test_identities_and_secrets_become_stable_pseudonyms():
    r = Redactor(b"salt-one")
    out = r.redact_features(alert())
    cmd = out.fields["process.command_line"]
    for secret in (
        "jdoe",
        "Hunter2!",
        "abcdefghijklmnop123456",
        "203.0.113.9",
        "jdoe@example.com",
        "S3cretPw",
        "AKIAIOSFODNN7EXAMPLE",
        "wks-0142",
    ):
        assert secret not in cmd, secret
    assert out.fields["user.name"] == r.pseudonym("user", "jdoe")
    assert out.fields["host.name"] == r.pseudonym("host", "wks-0142.corp.example")
    assert out.fields["source.ip"] == r.pseudonym("ip", "10.1.2.3")
    # What the mapping needs survives: tools, flags, paths.
    for kept in ("net use", "/user:", "curl", "Authorization: Bearer", r"C:\Users", r"\Desktop\notes.txt", "mysql -p"):
        assert kept in cmd, kept
    # Stable: same input, same pseudonyms; the same user is one pseudonym everywhere.
    assert r.redact_features(alert()) == out
    assert r.pseudonym("user", "jdoe") in cmd


def test_salt_changes_pseudonyms_and_is_never_shown(tmp_path, monkeypatch):
    a, b = Redactor(b"salt-one"), Redactor(b"salt-two")
    assert a.pseudonym("user", "jdoe") != b.pseudonym("user", "jdoe")
    assert "salt" not in repr(a).replace("salt=***", "")
    monkeypatch.delenv("ATTACKMAP_REDACT_SALT", raising=False)
    first = installation_salt(tmp_path)
    assert installation_salt(tmp_path) == first and len(first) == 32
    assert oct((tmp_path / "redact.salt").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("ATTACKMAP_REDACT_SALT", "from-env")
    assert installation_salt(tmp_path) == b"from-env"
    with pytest.raises(ValueError):
        Redactor(b"")


def test_llm_prompt_is_redacted_when_the_workflow_says_so():
    import json

    import httpx
    import respx

    from mitre.catalog import load_catalog
    from mitre.config import MapperSettings
    from mitre.indicators import load_indicators
    from mitre.mappers.base import MapperContext
    from mitre.mappers.llm.anthropic import create_anthropic_mapper
    from mitre.mappers.local import LocalMapper
    from mitre.models import Decision, DecisionKind

    catalog = load_catalog(None)
    settings = MapperSettings(provider="anthropic", redact=True, cascade_confidence=None)
    local = LocalMapper(catalog, load_indicators(catalog), settings)
    mapper = create_anthropic_mapper(
        MapperContext(catalog=catalog, settings=settings, local=local),
        env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000"},
        redactor=Redactor(b"salt"),
    )
    with respx.mock:
        route = respx.post("https://api.anthropic.com/v1/messages").mock(
            return_value=httpx.Response(
                400, json={"type": "error", "error": {"type": "invalid_request_error", "message": "x"}}
            )
        )
        mapper.map(alert(), Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail=""))
    text = json.dumps(json.loads(route.calls[0].request.content))
    assert "jdoe" not in text and "Hunter2" not in text and "203.0.113.9" not in text
    assert Redactor(b"salt").pseudonym("user", "jdoe") in text
