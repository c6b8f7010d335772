"""The authenticated enrichment API over a real uvicorn: roles, the tenant bound to the key, synchronous
enrichment (ECS and the common event), feedback that applies at once, the queue for the flows, the
audit trail; and the feedback CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from devtools.asgi import ThreadedServer
from mitre.api.app import EnrichmentApi
from mitre.api.audit import AuditLog
from mitre.api.keys import ApiKeys
from mitre.api.queue import FlowQueue, queue_index
from mitre.api.server import server_app
from mitre.assemble import EngineOptions, build_engine
from mitre.cli import app as cli
from mitre.config import Environment, WorkflowsFile
from tests.helpers import LSASS_COMMAND, kibana_alert


@dataclass
class Api:
    url: str
    home: Path
    keys: dict[str, str]
    api: EnrichmentApi

    def call(self, method: str, path: str, who: str | None, body: Any = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=30)


def _event(command: str = LSASS_COMMAND) -> dict[str, Any]:
    alert = kibana_alert(rule_name="Dump", command_line=command, process_name="rundll32.exe")
    del alert["kibana.alert.uuid"]
    alert["event"] = {"id": "e-1"}
    return alert


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("api-home")
    env = Environment(home=home)
    engine = build_engine(WorkflowsFile(), env, EngineOptions(knowledge_base=(), cache_dir=home / "cache"))
    keys = ApiKeys(home / "api-keys.json")
    secrets = {
        "service": keys.create("ids", "service", "acme")[1],
        "analyst": keys.create("ana", "analyst", "acme")[1],
        "admin": keys.create("boss", "admin", "acme")[1],
        "other": keys.create("eve", "analyst", "globex")[1],
        "revoked": (revoked := keys.create("old", "service", "acme"))[1],
    }
    keys.revoke(revoked[0].id)
    enrichment = EnrichmentApi(engine=engine, keys=keys, audit=AuditLog(home / "audit.ndjson"), env=env)
    server = ThreadedServer(server_app(api=enrichment, inbound=None))
    server.start()
    try:
        yield Api(server.url, home, secrets, enrichment)
    finally:
        server.stop()


def test_enrich_returns_ecs_and_the_common_event_under_the_keys_tenant(api: Api) -> None:
    response = api.call("POST", "/v1/enrich", "service", _event())
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == "enriched"
    ecs, event = result["ecs"], result["event"]
    assert ecs["attackmap"]["tenant"] == "acme" and "T1003.001" in ecs["threat"]["technique"]["subtechnique"]["id"]
    assert event["tenant"] == "acme" and event["id"] == "e-1" and "T1003.001" in event["technique_ids"]
    assert "AC-2" in event["nist_800_53_controls"] or ecs["attackmap"]["compliance"]["nist_800_53_controls"] == []
    assert event["execution_fingerprint"] == ecs["attackmap"]["execution_fingerprint"]
    batch = api.call("POST", "/v1/enrich", "service", {"events": [_event(), {"event_type": "nmap_scan_completed"}]})
    assert [r["status"] for r in batch.json()["results"]] == ["enriched", "enriched"]


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "code"),
    [
        (None, "POST", "/v1/enrich", {"process": {"name": "x"}}, 401, "unauthenticated"),
        ("revoked", "POST", "/v1/enrich", {"process": {"name": "x"}}, 401, "unauthenticated"),
        ("service", "GET", "/v1/review", None, 403, "forbidden"),
        ("service", "POST", "/v1/feedback", {}, 403, "forbidden"),
        ("analyst", "PUT", "/v1/opt-outs", {"rule_id": "r"}, 403, "forbidden"),
        ("analyst", "GET", "/v1/budget", None, 403, "forbidden"),
        ("service", "POST", "/v1/enrich", {"tenant_id": "globex", "process": {"name": "x"}}, 403, "wrong_tenant"),
        (
            "service",
            "POST",
            "/v1/enrich",
            {"kibana.space_ids": ["globex"], "process": {"name": "x"}},
            403,
            "wrong_tenant",
        ),
        ("service", "POST", "/v1/queue", {"process": {"name": "x"}}, 503, "no_queue"),
    ],
)
def test_refusals_are_refused_and_audited(
    api: Api, who: str | None, method: str, path: str, body: Any, status: int, code: str
) -> None:
    response = api.call(method, path, who, body)
    assert (response.status_code, response.json()["error"]) == (status, code)
    last = AuditLog(api.home / "audit.ndjson").read()[-1]
    assert (last["path"], last["status"], last["outcome"]) == (path, status, code)
    assert not any(secret in json.dumps(last) for secret in api.keys.values()), "no secret in the audit trail"


def test_feedback_applies_to_the_next_enrichment_and_stays_in_its_tenant(api: Api) -> None:
    weak = _event("rundll32.exe C:\\Users\\x\\a.dll,Start")
    weak["event"] = {"id": "e-weak"}
    first = api.call("POST", "/v1/enrich", "service", weak).json()["results"][0]["ecs"]
    review = api.call("GET", "/v1/review", "analyst").json()["items"]
    key = first["attackmap"]["mapping_key"]
    assert key in [i["mapping_key"] for i in review]
    assert api.call("GET", "/v1/review", "other").json()["items"] == [], "another tenant sees nothing"
    stolen = api.call(
        "POST", "/v1/feedback", "other", {"mapping_key": key, "verdict": "correct", "techniques": ["T1055"]}
    )
    assert stolen.status_code == 404
    bad = api.call(
        "POST", "/v1/feedback", "analyst", {"mapping_key": key, "verdict": "correct", "techniques": ["T9999"]}
    )
    assert bad.status_code == 422 and bad.json()["error"] == "unknown_technique"
    stored = api.call(
        "POST", "/v1/feedback", "analyst", {"mapping_key": key, "verdict": "correct", "techniques": ["T1218.011"]}
    )
    assert stored.status_code == 201 and stored.json()["stored"]["analyst"] == "ana"
    again = api.call("POST", "/v1/enrich", "service", weak).json()["results"][0]["ecs"]
    assert [t["id"] for t in again["attackmap"]["techniques"]] == ["T1218.011"]
    assert again["attackmap"]["mapper"] == "analyst"
    telemetry = api.call("GET", "/v1/telemetry", "analyst").json()
    dump = next(r for r in telemetry["rules"] if r["rule"] == "rule-dump")
    assert dump["corrected"] == 1 and dump["precision"] == 0.0 and telemetry["totals"]["map"] >= 2
    assert [
        i["verdict"] for i in api.call("GET", "/v1/review", "analyst").json()["items"] if i["mapping_key"] == key
    ] == ["correct"]


def test_admin_opts_a_rule_out_and_reads_the_budget(api: Api) -> None:
    assert api.call("PUT", "/v1/opt-outs", "admin", {"rule_id": "rule-dump", "opted_out": True}).status_code == 200
    skipped = api.call("POST", "/v1/enrich", "service", _event()).json()["results"][0]
    assert (skipped["status"], skipped["reason"]) == ("skipped", "opted_out")
    assert api.call("PUT", "/v1/opt-outs", "admin", {"rule_id": "rule-dump", "opted_out": False}).status_code == 200
    assert api.call("POST", "/v1/enrich", "service", _event()).json()["results"][0]["status"] == "enriched"
    budget = api.call("GET", "/v1/budget", "admin")
    assert budget.status_code == 200 and budget.json()["workflow"] == "default"


def test_review_page_is_served(api: Api) -> None:
    page = httpx.get(api.url + "/review")
    assert page.status_code == 200 and "mappings to review" in page.text


@pytest.mark.elasticsearch
def test_queue_stores_the_events_for_the_flows_and_announces_them(api: Api, es_client: Any) -> None:
    announced: list[dict[str, Any]] = []

    async def emit(events: Sequence[dict[str, Any]]) -> None:
        announced.extend(events)

    tenant = f"queue-{__import__('uuid').uuid4().hex[:8]}"
    index = queue_index(tenant)
    try:
        queue = FlowQueue(es_client, emit, "security.alert.high-risk", "default")
        import asyncio

        ids = asyncio.run(queue.put(tenant, [_event(), _event()]))
        assert len(ids) == 2 and ids[0] == ids[1], "the same event is queued once (same document, same event id)"
        assert es_client.count(index=index)["count"] == 1
        assert announced[0]["resource"]["attackmap.index"] == index
        assert announced[0]["resource"]["attackmap.tenant"] == tenant
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)


def test_feedback_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path))
    env = Environment(home=tmp_path)
    engine = build_engine(WorkflowsFile(), env, EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    enriched = engine.process(_event()).alert
    alert_file = tmp_path / "alert.json"
    alert_file.write_text(json.dumps(enriched))
    runner = CliRunner()
    result = runner.invoke(cli, ["feedback", "correct", str(alert_file), "-t", "T1218.011", "--analyst", "cli"])
    assert result.exit_code == 0, result.output
    fresh = build_engine(WorkflowsFile(), env, EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    assert [t["id"] for t in (fresh.process(_event()).alert or {})["attackmap"]["techniques"]] == ["T1218.011"]
    result = runner.invoke(cli, ["feedback", "telemetry", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rules"]
    assert [(r["rule"], r["corrected"]) for r in rows] == [("rule-dump", 1)]
    assert runner.invoke(cli, ["feedback", "correct", str(alert_file), "-t", "T9999"]).exit_code == 2


def test_api_key_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(cli, ["api-key", "create", "--name", "sensor", "--role", "service", "--tenant", "acme"])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    keys = ApiKeys(tmp_path / "api-keys.json")
    key = keys.authenticate(secret)
    assert key is not None and (key.role, key.tenant) == ("service", "acme")
    assert secret not in (tmp_path / "api-keys.json").read_text(), "only a digest is stored"
    assert runner.invoke(cli, ["api-key", "revoke", key.id]).exit_code == 0
    assert keys.authenticate(secret) is None
    assert runner.invoke(cli, ["api-key", "create", "--name", "x", "--role", "root", "--tenant", "a"]).exit_code == 2
