"""Past one machine: two workers from deploy/Procfile (started by deploy/supervise.py) share one Prefect
work pool and one alert event stream, on Prefect over PostgreSQL, a shared Redis cache and a PostgreSQL
budget ledger. 20,000 alerts: half announced as events, half in batch flow runs on the pool.

None is lost (every one enriched), none is enriched twice (every document written exactly once: ES
version 2), both workers work, and the budget's kill switch trips once for all of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devtools.alertgen import RealisticAlerts
from devtools.datastores import prefect_database_url
from devtools.servers import free_port, prefect_healthy
from mitre.io.events import AlertRef, alert_event, post_events
from tests.llm_standin import StandIn, realistic

pytestmark = [pytest.mark.elasticsearch, pytest.mark.prefect]

REPO = Path(__file__).resolve().parents[1]
ALERTS = 20_000
BY_EVENT = 10_000
RUN_SIZE = 1_000
DAILY_USD = 0.02  # a few calls' worth: the hard limit is crossed early in the run
EXAMPLES = [json.loads(line) for line in (REPO / "examples" / "alerts.ndjson").read_text().splitlines() if line]


def _index(es: Any, index: str) -> list[str]:
    """20,000 realistic alerts (risk past the threshold), indexed; their ids."""
    stream = RealisticAlerts(EXAMPLES, hosts=2_000, users=300, seed=16)
    ids: list[str] = []
    ops: list[dict[str, Any]] = []
    for i in range(ALERTS):
        alert = stream.alert(i)
        alert["kibana.alert.uuid"] = doc_id = f"scale-{i:05d}"
        alert["kibana.alert.risk_score"] = 99
        ops += [{"index": {"_index": index, "_id": doc_id}}, alert]
        ids.append(doc_id)
        if len(ops) >= 4_000:
            assert not es.bulk(operations=ops)["errors"]
            ops = []
    if ops:
        assert not es.bulk(operations=ops)["errors"]
    es.indices.refresh(index=index)
    return ids


def _versions(es: Any, index: str, ids: list[str]) -> dict[str, tuple[int, bool]]:
    """doc id → (version, enriched)."""
    out: dict[str, tuple[int, bool]] = {}
    for start in range(0, len(ids), 5_000):
        docs = es.mget(index=index, ids=ids[start : start + 5_000], source_includes=["attackmap.provenance_hash"])
        for doc in docs["docs"]:
            hash_ = ((doc.get("_source") or {}).get("attackmap") or {}).get("provenance_hash")
            out[doc["_id"]] = (doc.get("_version", 0), bool(hash_))
    return out


def _enriched(es: Any, index: str) -> int:
    es.indices.refresh(index=index)
    return int(es.count(index=index, query={"exists": {"field": "attackmap.provenance_hash"}})["count"])


def test_two_workers_share_the_pool_the_stream_the_cache_and_the_budget(
    tmp_path: Path, es_client: Any, es_url: str, es_index: str, redis_url: str, redis_client: Any, postgres_url: str
) -> None:
    import psycopg

    database = f"prefect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    ledger_table = f"ledger_{uuid.uuid4().hex[:8]}"
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "cache": {"shared": "redis"},
                "workflows": [
                    {
                        "name": "scale",
                        "trigger": {"index_pattern": es_index, "batch_size": 500},
                        "decision": {"mode": "always"},
                        "mapper": {"provider": "anthropic", "model": "claude-haiku-4-5", "knowledge_base": []},
                        # No soft limit before the hard one: under load, throttled spend could stall short of it.
                        "budget": {
                            "daily_usd": DAILY_USD,
                            "soft_limit_ratio": 1.0,
                            "ledger": "postgresql",
                            "ledger_table": ledger_table,
                        },
                        "outputs": {"elasticsearch_write_back": True},
                    }
                ],
            }
        )
    )
    ids = _index(es_client, es_index)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    from mitre.catalog import load_catalog

    tactics = {t.id: t.shortname for t in load_catalog(None).tactics}
    log_path = tmp_path / "supervise.log"
    with StandIn(realistic(tactics, hallucinate=False)) as standin:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "ATTACKMAP_HOME": str(tmp_path / "home"),
            "ATTACKMAP_WORKFLOWS": str(workflows),
            "ATTACKMAP_ES_URL": es_url,
            "ATTACKMAP_REDIS_URL": redis_url,
            "ATTACKMAP_POSTGRES_URL": postgres_url,
            "ATTACKMAP_WORK_POOL": pool,
            "PREFECT_API_URL": api,
            "PREFECT_PORT": str(port),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database_url(postgres_url).rsplit("/", 1)[0]
            + f"/{database}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "ANTHROPIC_API_KEY": "sk-ant-test-0000000000",
            "ANTHROPIC_BASE_URL": standin.url,
        }
        supervise = [sys.executable, str(REPO / "deploy" / "supervise.py"), str(REPO / "deploy" / "Procfile")]
        with log_path.open("wb") as log:
            control = subprocess.Popen([*supervise, "--only", "prefect"], env=env, cwd=REPO, stdout=log, stderr=log)
            workers = None
            try:
                _wait(lambda: prefect_healthy(api), 120, "Prefect on PostgreSQL", log_path)
                _deploy_batch(env, pool)
                workers = subprocess.Popen(
                    [*supervise, "--only", "worker", "--scale", "worker=2"], env=env, cwd=REPO, stdout=log, stderr=log
                )
                _wait(lambda: log_path.read_text(errors="replace").count("attackmap worker: subscribed") >= 2, 180,
                      "two subscribed workers", log_path)  # fmt: skip
                events = [
                    alert_event("security.alert.high-risk", AlertRef(es_index, i), workflow="scale")
                    for i in ids[:BY_EVENT]
                ]
                post_events(api, events, timeout=60)
                _run_batches(env, ids[BY_EVENT:], es_index)
                _wait(lambda: _enriched(es_client, es_index) >= ALERTS, 600, "20,000 enriched alerts", log_path)
                time.sleep(3)  # anything still in flight would show as a second write
            finally:
                for proc in (workers, control):
                    if proc is not None:
                        proc.terminate()
                        proc.wait(timeout=60)
        llm_calls = standin.count("/v1/messages")
    versions = _versions(es_client, es_index, ids)
    assert len(versions) == ALERTS
    assert all(enriched for _, enriched in versions.values()), "an alert was lost"
    twice = [doc_id for doc_id, (version, _) in versions.items() if version != 2]
    assert not twice, f"{len(twice)} alerts written more than once, e.g. {twice[:5]}"
    text = log_path.read_text(errors="replace")
    for worker in ("worker.1", "worker.2"):
        assert re.search(rf"^{worker} \| .*Task run 'enrich-batch-\w+' - Finished in state Completed", text, re.M), (
            f"{worker} enriched no event batch"
        )
    assert (
        len(re.findall(r"^worker\.\d \| .*enrich-alerts: 1000 requested", text, re.M))
        == (ALERTS - BY_EVENT) // RUN_SIZE
    )
    from mitre.budget.ledger_postgres import PostgresLedger

    ledger = PostgresLedger(postgres_url, ledger_table)
    trips = ledger.events(kinds=["trip"])
    assert len(trips) == 1, [t.reason for t in trips]
    calls = ledger.events(kinds=["llm_call"])
    assert 0 < len(calls) <= llm_calls
    # Every worker reads the trip within its budget's sync interval (5 s) and calls no more.
    assert not [c for c in calls if c.ts > trips[0].ts + 6], "LLM calls long after the kill switch tripped"
    assert redis_client.dbsize() > 0  # the shared cache tier holds the mappings


def _wait(predicate: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}\n{log.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.5)


def _deploy_batch(env: dict[str, str], pool: str) -> None:
    """The batch deployment, on the work pool (no trigger: batches are asked for, not announced)."""
    script = (
        "import asyncio, os\n"
        "from flows.deploy import ensure_work_pool\n"
        "from flows.enrich import enrich_alerts\n"
        "asyncio.run(ensure_work_pool(os.environ['ATTACKMAP_WORK_POOL']))\n"
        "enrich_alerts.to_deployment(name='scale-batch', parameters={'workflow': 'scale'})"
        ".apply(work_pool_name=os.environ['ATTACKMAP_WORK_POOL'])\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True, capture_output=True, timeout=120)


def _run_batches(env: dict[str, str], ids: list[str], index: str) -> None:
    """Batch flow runs of 1,000 refs each, queued on the pool (``run_deployment`` without waiting)."""
    refs = [f"attackmap.alert/{index}/{i}" for i in ids]
    chunks = [refs[i : i + RUN_SIZE] for i in range(0, len(refs), RUN_SIZE)]
    script = (
        "import json, sys\n"
        "from prefect.deployments import run_deployment\n"
        "for refs in json.load(sys.stdin):\n"
        "    run_deployment('enrich-alerts/scale-batch', parameters={'refs': refs, 'workflow': 'scale'}, timeout=0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, check=True, input=json.dumps(chunks).encode(), timeout=120
    )
    httpx.get(env["PREFECT_API_URL"] + "/health", timeout=5).raise_for_status()
