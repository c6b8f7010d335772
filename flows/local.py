"""Everything locally, one command: a Prefect server on SQLite, the worker, the served deployments, the webhook.

    ATTACKMAP_ES_URL=http://127.0.0.1:9200 python -m flows.local [--workflows workflows.yaml] [--port 4200]
        [--webhook-port 8787] [--poller] [--limit 4]

- ``prefect server start`` with ``PREFECT_HOME=$ATTACKMAP_HOME/prefect`` (SQLite, kept across restarts),
  analytics and the late-runs service off; reused when ``PREFECT_API_URL`` already answers;
- `flows.worker` (low-latency path), `flows.deploy` (durable path: deployments + event triggers, ``--limit``
  runs at most, optionally the scheduled poller) and, when ``ATTACKMAP_WEBHOOK_SECRET`` is set,
  ``attackmap serve`` on ``--webhook-port``;
- Ctrl-C (or SIGTERM) stops them all (children get SIGTERM: Prefect runners ignore SIGINT).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mitre.config import Environment


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=Path, default=None)
    parser.add_argument("--port", type=int, default=4200, help="Prefect server port")
    parser.add_argument("--webhook-port", type=int, default=8787)
    parser.add_argument("--limit", type=int, default=4, help="durable path: concurrent flow runs at most")
    parser.add_argument("--poller", action="store_true", help="also serve the scheduled ES poller")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "false")
    if args.workflows is not None:
        env["ATTACKMAP_WORKFLOWS"] = str(args.workflows.resolve())
    procs: list[subprocess.Popen[bytes]] = []
    api = env.get("PREFECT_API_URL", "").rstrip("/")
    if not api or not _healthy(api):
        home = Environment().home / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        api = f"http://127.0.0.1:{args.port}/api"
        server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)]
        procs.append(subprocess.Popen(cmd, env=server_env))
        deadline = time.monotonic() + 120
        while not _healthy(api):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                print("flows.local: the Prefect server did not start", file=sys.stderr)
                procs[0].terminate()
                return 1
            time.sleep(0.5)
        print(f"flows.local: Prefect server {api} (SQLite in {home})", flush=True)
    env["PREFECT_API_URL"] = api
    procs.append(subprocess.Popen([sys.executable, "-m", "flows.worker"], env=env))
    deploy = [sys.executable, "-m", "flows.deploy", "--limit", str(args.limit)] + (["--poller"] if args.poller else [])
    procs.append(subprocess.Popen(deploy, env=env))
    if env.get("ATTACKMAP_WEBHOOK_SECRET"):
        serve = [sys.executable, "-c", "from mitre.cli import main; main()", "serve", "--port", str(args.webhook_port)]
        procs.append(subprocess.Popen(serve, env=env))
    else:
        print("flows.local: ATTACKMAP_WEBHOOK_SECRET not set: no webhook receiver", flush=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
