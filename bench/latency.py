#!/usr/bin/env python3
"""Latency: event emitted (or webhook received) → alert updated in ES, p50/p95, cold and warm cache.

    python bench/latency.py [--events 50] [--paths worker,webhook,durable,durable-warm] [--es-url URL]
                            [--prefect-api-url URL]

Paths (local mapper, real ES, real Prefect server):
- ``worker``: ``POST /api/events`` → event stream → `flows.worker` (async flow in-process) → ES;
- ``webhook``: signed ``POST /hooks`` to `attackmap serve` → ``/api/events`` → worker → ES;
- ``durable``: ``POST /api/events`` → DeploymentEventTrigger → served deployment (`flows.deploy`,
  ``query_seconds=1``) → a flow-run process → ES;
- ``durable-warm``: the same deployment and trigger, run by the warm executor (`flows.deploy --in-process`,
  polling every 0.5 s) in its own process, on an engine built before the first run.
Each path runs ``--events`` alerts one after another: *cold* (a unique cache key each: the mapper runs)
then *warm* (the same features again: cache hits).  The clock stops when a realtime GET shows the
provenance hash.  Without ``--prefect-api-url`` a fresh Prefect server is started (no leftover triggers);
without ``--es-url``/``$ATTACKMAP_ES_URL`` the node in ``.es/`` is started or reused.

Prefect's share: the worker logs per batch the event-bus delay (occurred → received by the subscriber)
and the flow run's overhead (flow time − ES read/engine/bulk time); for the durable path the flow runs'
own timestamps give trigger → run created → started → finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flows_common import (
    DEFAULT_CATALOG,
    Setup,
    elasticsearch,
    index_alerts,
    make_alert,
    pct,
    prefect_server,
    setup,
    spawn,
    stop,
    summary,
    wait_for_text,
    wait_updated,
)

SECRET = "bench-secret-0123456789abcdef"
TARGETS = {"worker": (0.3, 1.0), "webhook": (0.3, 1.0), "durable": (3.0, None), "durable-warm": (3.0, None)}
DURABLE = {"durable": ("d", ["--limit", "4"]), "durable-warm": ("dw", ["--limit", "4", "--in-process"])}  # salt, args


def run_events(s: Setup, send: Any, n: int, salt: str, *, unique: bool, gap: float) -> list[float]:
    from mitre.io.events import AlertRef

    latencies: list[float] = []
    alerts = [make_alert(i, salt, unique=unique) for i in range(n)]
    ids = index_alerts(s.es, s.index, alerts)
    for doc_id in ids:
        started = time.perf_counter()
        send(AlertRef(s.index, doc_id, "default"))
        wait_updated(s.es, s.index, doc_id)
        latencies.append(time.perf_counter() - started)
        time.sleep(gap)
    return latencies


def emitter(api_url: str) -> Any:
    import httpx
    import orjson

    from mitre.io.events import alert_event

    client = httpx.Client(timeout=10)

    def send(ref: Any) -> None:
        body = orjson.dumps([alert_event("security.alert.high-risk", ref, workflow="bench")])
        client.post(api_url + "/events", content=body, headers={"content-type": "application/json"}).raise_for_status()

    return send


def webhook_sender(url: str) -> Any:
    import httpx
    import orjson

    from mitre.io.webhook import signed_headers

    client = httpx.Client(timeout=10)

    def send(ref: Any) -> None:
        body = orjson.dumps({"alerts": [{"_index": ref.index, "_id": ref.id, "kibana.space_ids": ["default"]}]})
        resp = client.post(url, content=body, headers=signed_headers(SECRET.encode(), body))
        assert resp.status_code == 202, resp.text

    return send


def worker_breakdown(path: Path, since: float) -> dict[str, Any]:
    bus: list[float] = []
    overhead: list[float] = []
    work: list[float] = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["started"] < since:
            continue
        bus.extend(rec["bus_seconds"])
        overhead.append(rec["task_seconds"] - rec["work_seconds"])
        work.append(rec["work_seconds"])
    return {
        "event_bus_p50_ms": round(1000 * pct(bus, 50), 1),
        "task_overhead_p50_ms": round(1000 * pct(overhead, 50), 1),
        "es_and_engine_p50_ms": round(1000 * pct(work, 50), 1),
    }


def durable_breakdown(api_url: str, since_iso: str) -> dict[str, Any]:
    import httpx
    from dateutil.parser import isoparse

    runs = httpx.post(
        api_url + "/flow_runs/filter",
        json={"flow_runs": {"start_time": {"after_": since_iso}}, "limit": 200},
        timeout=30,
    ).json()
    pickup: list[float] = []
    duration: list[float] = []
    for run in runs:
        if not run.get("start_time") or not run.get("end_time"):
            continue
        created = isoparse(run["created"]).timestamp()
        started = isoparse(run["start_time"]).timestamp()
        ended = isoparse(run["end_time"]).timestamp()
        pickup.append(started - created)
        duration.append(ended - started)
    return {
        "runs": len(duration),
        "run_created_to_started_p50_ms": round(1000 * pct(pickup, 50), 1),
        "run_duration_p50_ms": round(1000 * pct(duration, 50), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--durable-events", type=int, default=None, help="default: --events")
    parser.add_argument("--paths", default="worker,webhook,durable")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between events")
    parser.add_argument("--es-url", default=os.environ.get("ATTACKMAP_ES_URL"))
    parser.add_argument("--prefect-api-url", default=None)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    results: dict[str, Any] = {}
    with (
        elasticsearch(args.es_url) as es_url,
        prefect_server(args.prefect_api_url) as api_url,
        setup(es_url, api_url, args.catalog) as s,
    ):
        print(f"ES {es_url}  Prefect {api_url}  index {s.index}", flush=True)
        if "worker" in paths or "webhook" in paths:
            timings = s.tmp / "worker-timings.jsonl"
            log = s.tmp / "worker.log"
            worker = spawn(["-m", "flows.worker", "--lookback-seconds", "0", "--timings", str(timings)], s.env(), log)
            serve = None
            try:
                wait_for_text(log, "subscribed", worker)
                time.sleep(1.0)
                if "worker" in paths:
                    for phase, unique in (("cold", True), ("warm", False)):
                        mark = time.time()
                        lat = run_events(s, emitter(api_url), args.events, f"w{phase}", unique=unique, gap=args.gap)
                        results[f"worker/{phase}"] = summary(lat) | worker_breakdown(timings, mark)
                        print(f"worker/{phase}: {results[f'worker/{phase}']}", flush=True)
                if "webhook" in paths:
                    port = _free_port()
                    slog = s.tmp / "serve.log"
                    serve = spawn(
                        [
                            "-c",
                            "from mitre.cli import main; main()",
                            "serve",
                            "--port",
                            str(port),
                            "--log-level",
                            "warning",
                        ],
                        s.env(ATTACKMAP_WEBHOOK_SECRET=SECRET),
                        slog,
                    )
                    _wait_http(f"http://127.0.0.1:{port}/healthz", serve, slog)
                    send = webhook_sender(f"http://127.0.0.1:{port}/hooks/bench")
                    for phase, unique in (("cold", True), ("warm", False)):
                        mark = time.time()
                        lat = run_events(s, send, args.events, f"h{phase}", unique=unique, gap=args.gap)
                        results[f"webhook/{phase}"] = summary(lat) | worker_breakdown(timings, mark)
                        print(f"webhook/{phase}: {results[f'webhook/{phase}']}", flush=True)
            finally:
                if serve is not None:
                    stop(serve)
                stop(worker)
        for path in [p for p in DURABLE if p in paths]:
            from datetime import UTC, datetime

            salt, deploy_args = DURABLE[path]
            log = s.tmp / f"{path}.log"
            runner = spawn(["-m", "flows.deploy", *deploy_args], s.env(), log)
            try:
                wait_for_text(log, "being served", runner)
                time.sleep(2.0)  # let the triggers service load the new automation
                n = args.durable_events or args.events
                for phase, unique in (("cold", True), ("warm", False)):
                    since = datetime.now(UTC).isoformat()
                    lat = run_events(s, emitter(api_url), n, f"{salt}{phase}", unique=unique, gap=args.gap)
                    results[f"{path}/{phase}"] = summary(lat) | durable_breakdown(api_url, since)
                    print(f"{path}/{phase}: {results[f'{path}/{phase}']}", flush=True)
            finally:
                stop(runner)
    ok = True
    print("\npath/cache          n    p50 ms   p95 ms   target")
    for key, row in results.items():
        p50_target, p95_target = TARGETS[key.split("/")[0]]
        met = row["p50_ms"] <= 1000 * p50_target and (p95_target is None or row["p95_ms"] <= 1000 * p95_target)
        ok &= met
        target = f"p50<={p50_target * 1000:.0f}" + (f", p95<={p95_target * 1000:.0f}" if p95_target else "")
        print(f"{key:<18} {row['n']:>3} {row['p50_ms']:>9} {row['p95_ms']:>8}   {target} {'met' if met else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: Any, log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} not up:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


if __name__ == "__main__":
    raise SystemExit(main())
