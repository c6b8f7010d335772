#!/usr/bin/env python3
"""Past one machine: the batch path with 1 and 2 workers, and the durable path on SQLite and PostgreSQL.

    python bench/scale_out.py batch [--alerts 20000] [--run-size 1000] [--workers 1,2] [--repeat 2]
    python bench/scale_out.py durable [--events 300] [--databases sqlite,postgresql]

Everything is real and started here: Redis and PostgreSQL (devtools/datastores.py), Prefect servers (on
SQLite or on PostgreSQL), the shared Elasticsearch (``$ATTACKMAP_ES_URL``, else one from devtools), and
the workers from ``deploy/Procfile`` under ``deploy/supervise.py``, as a SOC would run them. Alerts come
from devtools/alertgen.py (realistic cardinality); the shipped workflow's knowledge base maps them
(``--no-knowledge-base`` for the bare local mapper).

``batch``: N alerts in batch flow runs of ``--run-size`` refs on one work pool, served by W workers
(``worker`` of the Procfile, scaled), cold (an empty Redis and empty cache directories: every distinct
alert mapped once) then warm; alerts/s from the first run's start to the last run's end (decision
mode ``always``: every alert is mapped and written back). Each worker
count is measured ``--repeat`` times; medians reported, with the ratio to one worker.

``durable``: ``--events`` alert events through the deployment's event trigger (one flow run per event,
queued in Prefect) served by two workers, on a Prefect server over SQLite and over PostgreSQL:
events/s from the first event to the last run finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.alertgen import RealisticAlerts  # noqa: E402
from devtools.datastores import postgres_server, prefect_database_url, redis_server  # noqa: E402
from devtools.servers import elasticsearch, start_prefect_server  # noqa: E402
from mitre.io.events import AlertRef, alert_event, post_events  # noqa: E402

EXAMPLES = [json.loads(line) for line in (REPO / "examples" / "alerts.ndjson").read_text().splitlines() if line]
SHIPPED = yaml.safe_load((REPO / "workflows.yaml").read_text())


def _shipped_paths(paths: list[str]) -> list[str]:
    return [str((REPO / p).resolve()) for p in paths]


def workflows_file(folder: Path, index_pattern: str, knowledge: bool, cache_dir: Path) -> Path:
    shipped = SHIPPED["workflows"][0]
    doc = {
        "version": 1,
        "catalog": {
            "path": _shipped_paths([SHIPPED["catalog"]["path"]])[0],
            "crosswalks": _shipped_paths(SHIPPED["catalog"]["crosswalks"]),
        },
        "cache": {"directory": str(cache_dir), "shared": "redis"},
        "workflows": [
            {
                "name": "bench",
                "trigger": {"index_pattern": index_pattern, "batch_size": 500},
                "decision": {**shipped["decision"], "mode": "always"},  # every alert mapped and written
                "mapper": {
                    "provider": "local",
                    "knowledge_base": _shipped_paths(shipped["mapper"]["knowledge_base"]) if knowledge else [],
                },
                "outputs": {"elasticsearch_write_back": True},
            }
        ],
    }
    path = folder / f"workflows-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def index_alerts(es: Any, index: str, n: int, seed: int) -> list[str]:
    stream = RealisticAlerts(EXAMPLES, seed=seed)
    ids, ops = [], []
    for i in range(n):
        alert = stream.alert(i)
        alert["kibana.alert.uuid"] = doc_id = f"b{seed}-{i:06d}"
        alert["kibana.alert.risk_score"] = 99  # past the threshold: every alert is mapped and written
        ops += [{"index": {"_index": index, "_id": doc_id}}, alert]
        ids.append(doc_id)
        if len(ops) >= 4_000:
            es.bulk(operations=ops)
            ops = []
    if ops:
        es.bulk(operations=ops)
    es.indices.refresh(index=index)
    return ids


@contextlib.contextmanager
def workers(env: dict[str, str], count: int, log: Path, *, stream: bool = True) -> Iterator[None]:
    """``count`` workers, warm (engines built) when this yields: the ``worker`` of deploy/Procfile (stream
    and pool), or with ``stream=False`` workers of the pool alone (the durable path's runs)."""
    if stream:
        command = [sys.executable, str(REPO / "deploy" / "supervise.py"), str(REPO / "deploy" / "Procfile")]
        commands = [[*command, "--only", "worker", "--scale", f"worker={count}"]]
        ready = "attackmap worker: subscribed"
    else:
        pool = ["--work-pool", env["ATTACKMAP_WORK_POOL"], "--no-stream"]
        commands = [[sys.executable, "-m", "flows.worker", *pool] for _ in range(count)]
        ready = "attackmap worker: serving the pool"
    with log.open("wb") as out:
        procs = [subprocess.Popen(c, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT) for c in commands]
    try:
        deadline = time.monotonic() + 300
        while log.read_text(errors="replace").count(ready) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"workers did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=90)


def base_env(tmp: Path, api: str, es_url: str, redis_url: str, postgres_url: str, workflows: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "ATTACKMAP_HOME": str(tmp / "home"),  # kept across rounds: the trained knowledge base is reused
        "ATTACKMAP_WORKFLOWS": str(workflows),
        "ATTACKMAP_ES_URL": es_url,
        "ATTACKMAP_REDIS_URL": redis_url,
        "ATTACKMAP_POSTGRES_URL": postgres_url,
        "ATTACKMAP_WORK_POOL": f"bench-{uuid.uuid4().hex[:6]}",
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _python(env: dict[str, str], script: str, stdin: bytes | None = None) -> None:
    subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True, input=stdin, timeout=600)


def deploy_batch(env: dict[str, str]) -> None:
    _python(
        env,
        "import asyncio, os\n"
        "from flows.deploy import ensure_work_pool\n"
        "from flows.enrich import enrich_alerts\n"
        "asyncio.run(ensure_work_pool(os.environ['ATTACKMAP_WORK_POOL']))\n"
        "enrich_alerts.to_deployment(name='bench-batch', parameters={'workflow': 'bench'})"
        ".apply(work_pool_name=os.environ['ATTACKMAP_WORK_POOL'])\n",
    )


def timed_runs(env: dict[str, str], refs: list[list[str]]) -> float:
    """Queue one batch run per chunk, wait for all; seconds from the first run's start to the last's end."""
    script = (
        "import asyncio, json, sys, time\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.deployments import run_deployment\n"
        "chunks = json.load(sys.stdin)\n"
        "runs = [run_deployment('enrich-alerts/bench-batch', parameters={'refs': c, 'workflow': 'bench'}, timeout=0)"
        " for c in chunks]\n"
        "async def wait():\n"
        "    async with get_client() as client:\n"
        "        while True:\n"
        "            states = [await client.read_flow_run(r.id) for r in runs]\n"
        "            if all(s.state.is_final() for s in states):\n"
        "                assert all(s.state.is_completed() for s in states), [s.state.name for s in states]\n"
        "                history = [await client.read_flow_run_states(r.id) for r in runs]\n"
        "                return states, history\n"
        "            time.sleep(0.5)\n"
        "states, history = asyncio.run(wait())\n"
        "at = [{h.type.value: h.timestamp.timestamp() for h in hs} for hs in history]\n"
        "start, end = min(s.start_time for s in states), max(s.end_time for s in states)\n"
        "print(json.dumps([start.isoformat(), end.isoformat(), at]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, check=True, input=json.dumps(refs).encode(),
        capture_output=True, timeout=1800,
    )  # fmt: skip
    start, end, at = json.loads(out.stdout.decode().strip().splitlines()[-1])
    print(f"  per run (median of {len(at)}): {run_phases(at)}", flush=True)
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_phases(at: list[dict[str, float]]) -> str:
    """Where a batch run's time goes, from its state history: claimed (Scheduled → Pending), engine start
    (Pending → Running), work (Running → Completed); and the pool's idle time, the seconds in which no
    run was Running between the first start and the last end (a worker between runs)."""
    claimed = statistics.median(a["PENDING"] - a["SCHEDULED"] for a in at)
    starting = statistics.median(a["RUNNING"] - a["PENDING"] for a in at)
    working = statistics.median(a["COMPLETED"] - a["RUNNING"] for a in at)
    spans = sorted((a["RUNNING"], a["COMPLETED"]) for a in at)
    idle, reached = 0.0, spans[0][0]
    for begin, end in spans:
        idle += max(0.0, begin - reached)
        reached = max(reached, end)
    return (
        f"queued {claimed:.2f} s, Pending -> Running {starting:.3f} s, Running -> Completed {working:.3f} s;"
        f" no run Running for {idle:.2f} s in all"
    )


def batch(args: argparse.Namespace, es: Any, es_url: str, redis_url: str, postgres_url: str, tmp: Path) -> None:
    import redis

    with start_prefect_server(database_url=prefect_database_url(postgres_url)) as api:
        results: dict[int, dict[str, list[float]]] = {}
        for count in [int(w) for w in args.workers.split(",")]:
            for round_ in range(args.repeat):
                # Two copies of the same alerts: the cold pass maps the first, the warm pass the second.
                indexes = [f"attackmap-scale-{uuid.uuid4().hex[:8]}" for _ in range(2)]
                chunks_of = []
                for index in indexes:
                    refs = [f"attackmap.alert/{index}/{i}" for i in index_alerts(es, index, args.alerts, seed=round_)]
                    chunks_of.append([refs[i : i + args.run_size] for i in range(0, len(refs), args.run_size)])
                redis.Redis.from_url(redis_url).flushdb()  # cold: nothing shared yet
                wf = workflows_file(tmp, indexes[0], args.knowledge_base, tmp / f"cache-{count}-{round_}")
                env = base_env(tmp, api, es_url, redis_url, postgres_url, wf)
                deploy_batch(env)
                with workers(env, count, tmp / f"workers-{count}-{round_}.log"):
                    cold = timed_runs(env, chunks_of[0])
                    print(f"{count} worker(s), round {round_ + 1}: cold {args.alerts / cold:,.0f} alerts/s", flush=True)
                    warm = timed_runs(env, chunks_of[1])
                for index in indexes:
                    es.indices.delete(index=index)
                found = results.setdefault(count, {"cold": [], "warm": []})
                found["cold"].append(args.alerts / cold)
                found["warm"].append(args.alerts / warm)
                print(f"{count} worker(s), round {round_ + 1}: warm {args.alerts / warm:,.0f} alerts/s", flush=True)
    one = results.get(1)
    for count, found in results.items():
        cold, warm = statistics.median(found["cold"]), statistics.median(found["warm"])
        line = f"{count} worker(s): cold {cold:,.0f}, warm {warm:,.0f} alerts/s"
        if one and count != 1:
            line += (
                f"; {cold / statistics.median(one['cold']):.2f}x one worker cold,"
                f" {warm / statistics.median(one['warm']):.2f}x warm"
            )
        print(line)


def durable(args: argparse.Namespace, es: Any, es_url: str, redis_url: str, postgres_url: str, tmp: Path) -> None:
    for database in args.databases.split(","):
        url = prefect_database_url(postgres_url) if database == "postgresql" else None
        if url:  # a fresh Prefect database for each measurement
            import psycopg

            name = f"prefect_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            url = url.rsplit("/", 1)[0] + f"/{name}"
        with start_prefect_server(database_url=url) as api:
            index = f"attackmap-durable-{uuid.uuid4().hex[:8]}"
            ids = index_alerts(es, index, args.events, seed=99)
            wf = workflows_file(tmp, index, args.knowledge_base, tmp / f"cache-durable-{database}")
            env = base_env(tmp, api, es_url, redis_url, postgres_url, wf)
            subprocess.run(
                [sys.executable, "-m", "mitre", "workflows", "deploy", "--work-pool", env["ATTACKMAP_WORK_POOL"]],
                env=env, cwd=REPO, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
            with workers(env, 2, tmp / f"durable-{database}.log", stream=False):
                started = time.monotonic()
                events = [alert_event("security.alert.high-risk", AlertRef(index, i), workflow="bench") for i in ids]
                post_events(api, events, timeout=60)
                deadline = started + 1800
                while True:
                    es.indices.refresh(index=index)
                    done = es.count(index=index, query={"exists": {"field": "attackmap.provenance_hash"}})["count"]
                    if done >= args.events or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                took = time.monotonic() - started
            print(f"durable path, Prefect on {database}: {args.events} events, {done} alerts written in "
                  f"{took:.1f} s: {args.events / took:.1f} events/s", flush=True)  # fmt: skip
            es.indices.delete(index=index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["batch", "durable"])
    parser.add_argument("--alerts", type=int, default=20_000)
    parser.add_argument("--run-size", type=int, default=1_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--no-knowledge-base", dest="knowledge_base", action="store_false")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="attackmap-scale-"))
    with (
        elasticsearch(os.environ.get("ATTACKMAP_ES_URL")) as es_url,
        redis_server(os.environ.get("ATTACKMAP_REDIS_URL")) as redis_url,
        postgres_server(os.environ.get("ATTACKMAP_POSTGRES_URL")) as postgres_url,
    ):
        from elasticsearch import Elasticsearch

        es = Elasticsearch(es_url, request_timeout=300)
        (batch if args.mode == "batch" else durable)(args, es, es_url, redis_url, postgres_url, tmp)


if __name__ == "__main__":
    main()
