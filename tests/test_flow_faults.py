"""Faults in the flows, with a real Prefect server and a real Elasticsearch node, local mapper:

- the event worker killed with SIGKILL in the middle of a burst, then restarted;
- the warm executor killed with SIGKILL in the middle of a run: another executor sweeps the run back
  (and a run left Pending by a claim that never started), and runs it;
- a run cancelled while the warm executor runs it stops at a batch boundary and ends Cancelled;
- the Prefect server restarted while runs are queued, and again while the executor is up.

"Enriched exactly once" is read from Elasticsearch: every document's _version is 2 (indexed, then
one enrichment), each with one provenance hash. Recovery times are printed (README, Robustness).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.test_flows_e2e import REPO, index_alerts, make_alert, start, stop, wait_for

pytestmark = [pytest.mark.elasticsearch, pytest.mark.prefect]

FAST_EXECUTOR = ["--heartbeat-seconds", "1", "--sweep-seconds", "1", "--stale-seconds", "6", "--query-seconds", "0.5"]


@pytest.fixture
def wf_file(tmp_path: Path, es_index: str) -> Path:
    doc = {
        "version": 1,
        "cache": {"directory": str(tmp_path / "cache")},
        "workflows": [
            {
                "name": "faults",
                "trigger": {"index_pattern": es_index, "batch_size": 25},
                "mapper": {"provider": "local", "knowledge_base": []},
                "outputs": {"elasticsearch_write_back": True},
            }
        ],
    }
    path = tmp_path / "workflows.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env_for(api_url: str, es_url: str, wf_file: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ATTACKMAP_ES_URL=es_url,
        ATTACKMAP_WORKFLOWS=str(wf_file),
        ATTACKMAP_HOME=str(tmp_path / "home"),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def enriched_count(es: Any, index: str) -> int:
    es.indices.refresh(index=index)
    return int(es.count(index=index, query={"exists": {"field": "attackmap.provenance_hash"}})["count"])


def assert_each_enriched_once(es: Any, index: str, ids: list[str]) -> None:
    docs = es.mget(index=index, ids=ids)["docs"]
    versions = sorted({d["_version"] for d in docs})
    assert versions == [2], f"versions {versions}: 1 = never enriched, 3+ = written more than once"
    assert all(len(d["_source"]["attackmap"]["provenance_hash"]) == 64 for d in docs)


def wait_all_enriched(es: Any, index: str, n: int, timeout: float, log: Path | None = None) -> float:
    started = time.monotonic()
    wait_for(lambda: enriched_count(es, index) >= n, timeout, f"{n} alerts enriched", log)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the event worker


def test_worker_killed_with_sigkill_mid_burst_enriches_every_alert_once_after_restart(
    prefect_api_url: str, es_url: str, es_client: Any, es_index: str, wf_file: Path, tmp_path: Path
) -> None:
    from mitre.io.events import AlertRef, alert_event, post_events

    n = 400
    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(n)])
    env = env_for(prefect_api_url, es_url, wf_file, tmp_path)
    args = ["-m", "flows.worker", "--lookback-seconds", "600", "--max-batch", "20", "--reconcile-seconds", "2"]
    first = start(args, env, tmp_path / "worker-1.log")
    try:
        subscribed = lambda: "subscribed" in (tmp_path / "worker-1.log").read_text(errors="replace")  # noqa: E731
        wait_for(subscribed, 90, "worker", tmp_path / "worker-1.log")
        post_events(prefect_api_url, [alert_event("security.alert.high-risk", AlertRef(es_index, i)) for i in ids])
        under_way = lambda: enriched_count(es_client, es_index) >= 40  # noqa: E731
        wait_for(under_way, 120, "the burst under way", tmp_path / "worker-1.log")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = enriched_count(es_client, es_index)
    assert 0 < at_kill < n, f"{at_kill} of {n} enriched when the worker was killed: not mid-burst"
    second = start(args, env, tmp_path / "worker-2.log")
    try:
        recovery = wait_all_enriched(es_client, es_index, n, 180, tmp_path / "worker-2.log")
    finally:
        stop(second)
    assert_each_enriched_once(es_client, es_index, ids)
    print(f"\nworker SIGKILL: {n} alerts, {at_kill} enriched before the kill, all once {recovery:.1f} s after restart")


# --------------------------------------------------------------------------- the warm executor


def call(api: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """A Prefect API call, retried while SQLite is locked (503), as Prefect's own client does."""
    for attempt in range(10):
        resp = api.request(method, url, **kwargs)
        if resp.status_code != 503:
            resp.raise_for_status()
            return resp
        time.sleep(0.5 * (attempt + 1))
    resp.raise_for_status()
    return resp


def create_run(api: httpx.Client, deployment: str, refs: list[str]) -> str:
    deployment_id = call(api, "GET", f"/deployments/name/{deployment}").json()["id"]
    resp = call(api, "POST", f"/deployments/{deployment_id}/create_flow_run", json={"parameters": {"refs": refs}})
    return str(resp.json()["id"])


def run_state(api: httpx.Client, run_id: str) -> tuple[str, str]:
    state = call(api, "GET", f"/flow_runs/{run_id}").json()["state"]
    return state["type"], state["name"]


def deploy(wf_file: Path) -> None:
    from typer.testing import CliRunner

    from mitre.cli import app

    deployed = CliRunner().invoke(app, ["workflows", "deploy", "--workflows", str(wf_file)])
    assert deployed.exit_code == 0, deployed.output


def test_executor_killed_mid_run_is_swept_back_and_rerun_by_another_each_alert_once(
    prefect_api_url: str, es_url: str, es_client: Any, es_index: str, wf_file: Path, tmp_path: Path
) -> None:
    from mitre.io.events import alert_resource_id
    from tests.test_flows_e2e import delete_deployment

    api = httpx.Client(base_url=prefect_api_url, timeout=30)
    n = 3000
    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(n)])
    extra = index_alerts(es_client, es_index, [make_alert(i) for i in range(n, n + 5)])
    env = env_for(prefect_api_url, es_url, wf_file, tmp_path)
    executor = ["-m", "flows.deploy", "--workflows", str(wf_file), "--in-process", *FAST_EXECUTOR]
    deploy(wf_file)
    try:
        first = start(executor, env, tmp_path / "executor-1.log")
        served = lambda log: lambda: "being served in-process" in log.read_text(errors="replace")  # noqa: E731
        wait_for(served(tmp_path / "executor-1.log"), 90, "executor", tmp_path / "executor-1.log")
        long_run = create_run(api, "enrich-alerts/faults", [alert_resource_id(es_index, i) for i in ids])
        under_way = lambda: enriched_count(es_client, es_index) >= 100  # noqa: E731
        wait_for(under_way, 120, "the run under way", tmp_path / "executor-1.log")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        at_kill = enriched_count(es_client, es_index)
        assert 0 < at_kill < n and run_state(api, long_run)[0] == "RUNNING", (at_kill, run_state(api, long_run))
        # A run another executor claimed (Pending) and never started: what a death between the two leaves.
        claimed = create_run(api, "enrich-alerts/faults", [alert_resource_id(es_index, i) for i in extra])
        call(api, "POST", f"/flow_runs/{claimed}/set_state", json={"state": {"type": "PENDING"}, "force": True})
        restarted = time.monotonic()
        second = start(executor, env, tmp_path / "executor-2.log")
        try:
            log = tmp_path / "executor-2.log"
            wait_for(lambda: run_state(api, long_run)[0] == "COMPLETED", 180, "the swept run", log)
            wait_for(lambda: run_state(api, claimed)[0] == "COMPLETED", 60, "the claimed run", log)
            recovery = time.monotonic() - restarted
        finally:
            stop(second)
        text = (tmp_path / "executor-2.log").read_text(errors="replace")
        assert f"flow run {long_run} (Running): no heartbeat" in text, text[-3000:]
        assert f"flow run {claimed} (Pending): no heartbeat" in text, text[-3000:]
    finally:
        delete_deployment(prefect_api_url, "enrich-alerts/faults")
    assert_each_enriched_once(es_client, es_index, ids + extra)
    print(f"\nexecutor SIGKILL: {n} alerts, {at_kill} written before the kill, done {recovery:.1f} s after restart")


def test_a_run_cancelled_in_the_warm_executor_stops_at_a_batch_boundary(
    prefect_api_url: str, es_url: str, es_client: Any, es_index: str, wf_file: Path, tmp_path: Path
) -> None:
    from mitre.io.events import alert_resource_id
    from tests.test_flows_e2e import delete_deployment

    api = httpx.Client(base_url=prefect_api_url, timeout=30)
    n = 3000
    ids = index_alerts(es_client, es_index, [make_alert(i) for i in range(n)])
    env = env_for(prefect_api_url, es_url, wf_file, tmp_path)
    log = tmp_path / "executor.log"
    deploy(wf_file)
    proc = start(["-m", "flows.deploy", "--workflows", str(wf_file), "--in-process", *FAST_EXECUTOR], env, log)
    try:
        wait_for(lambda: "being served in-process" in log.read_text(errors="replace"), 90, "executor", log)
        run = create_run(api, "enrich-alerts/faults", [alert_resource_id(es_index, i) for i in ids])
        wait_for(lambda: enriched_count(es_client, es_index) >= 100, 120, "the run under way", log)
        call(api, "POST", f"/flow_runs/{run}/set_state", json={"state": {"type": "CANCELLING"}})
        wait_for(lambda: run_state(api, run)[0] == "CANCELLED", 60, "the run cancelled", log)
        time.sleep(2.0)
        written = enriched_count(es_client, es_index)
        time.sleep(2.0)
        assert enriched_count(es_client, es_index) == written < n, "nothing written after the cancellation"
        assert "cancelled: stopping it at the next batch" in log.read_text(errors="replace")
    finally:
        stop(proc)
        delete_deployment(prefect_api_url, "enrich-alerts/faults")
    done = [d["_id"] for d in es_client.mget(index=es_index, ids=ids)["docs"] if "attackmap" in d["_source"]]
    assert_each_enriched_once(es_client, es_index, done)


# --------------------------------------------------------------------------- the Prefect server restarted


def test_prefect_server_restarted_while_runs_are_queued_the_durable_path_resumes(
    es_url: str, es_client: Any, es_index: str, wf_file: Path, tmp_path: Path
) -> None:
    """A Prefect server of this test's own (SQLite in a kept home), restarted twice: with runs queued
    and no executor, then with the executor up; nothing queued is lost, each alert enriched once."""
    from devtools.servers import ServerUnavailable, free_port, run_prefect_server
    from mitre.io.events import AlertRef, alert_event, post_events

    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    queued = index_alerts(es_client, es_index, [make_alert(i) for i in range(8)])
    later = index_alerts(es_client, es_index, [make_alert(i) for i in range(100, 104)])

    def send(api_url: str, ids: list[str]) -> None:
        post_events(api_url, [alert_event("security.alert.high-risk", AlertRef(es_index, i)) for i in ids])

    def runs(api_url: str) -> list[dict[str, Any]]:
        return list(call(httpx.Client(timeout=10), "POST", f"{api_url}/flow_runs/filter", json={}).json())

    try:
        with run_prefect_server(home, port) as api_url:
            env = env_for(api_url, es_url, wf_file, tmp_path)
            deployed = _deploy_to(api_url, wf_file, env)
            assert deployed.returncode == 0, deployed.stdout
            time.sleep(2.0)  # the triggers service loads the new automation
            send(api_url, queued)
            wait_for(lambda: len(runs(api_url)) == len(queued), 60, "queued flow runs")
    except ServerUnavailable as exc:
        pytest.skip(f"no Prefect server: {exc}")
    log = tmp_path / "executor.log"
    proc = None
    try:
        with run_prefect_server(home, port) as api_url:  # restarted: the same database
            assert {r["state_type"] for r in runs(api_url)} == {"SCHEDULED"}
            proc = start(["-m", "flows.deploy", "--workflows", str(wf_file), "--in-process", *FAST_EXECUTOR], env, log)
            wait_all_enriched(es_client, es_index, len(queued), 120, log)
        time.sleep(2.0)  # the server is down; the executor keeps polling (its client retries, then it does)
        with run_prefect_server(home, port) as api_url:  # restarted again, the executor still up
            send(api_url, later)
            recovery = wait_all_enriched(es_client, es_index, len(queued) + len(later), 120, log)
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    finally:
        if proc is not None:
            stop(proc)
    assert_each_enriched_once(es_client, es_index, queued + later)
    print(f"\nPrefect restart: queued runs kept; new alerts enriched {recovery:.1f} s after the server was back")


def _deploy_to(api_url: str, wf_file: Path, env: dict[str, str]) -> Any:
    import subprocess
    import sys

    cli = [sys.executable, "-c", "from mitre.cli import main; main()"]
    command = [*cli, "workflows", "deploy", "--workflows", str(wf_file)]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
