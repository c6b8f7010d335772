"""A real Elasticsearch node and a real Prefect server for tests and benchmarks.

Each context manager yields a URL: the one given when it answers healthy, else a server started
here (and stopped on exit when this process started it). The pytest fixtures (`tests/es_fixtures.py`,
`tests/prefect_fixtures.py`) and the benchmarks (`bench/_flows_common.py`) share these.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from devtools import es_node

REPO = Path(__file__).resolve().parents[1]
PREFECT_START_TIMEOUT = float(os.environ.get("ATTACKMAP_PREFECT_START_TIMEOUT", "120"))


class ServerUnavailable(RuntimeError):
    """No healthy server at the given URL and none could be started; the message says why."""


# --------------------------------------------------------------------------- Elasticsearch


@contextlib.contextmanager
def elasticsearch(url: str | None = None, *, work_dir: Path | None = None, keep: bool = False) -> Iterator[str]:
    """``url`` when it answers healthy; else the node recorded in ``work_dir`` (default ``.es/``), else one
    started there on a free port, stopped on exit unless ``keep``. Raises ServerUnavailable."""
    if url:
        if es_node.is_ready(url.rstrip("/"), timeout=5.0):
            yield url.rstrip("/")
            return
        raise ServerUnavailable(f"{url} is not healthy (GET /_cluster/health)")
    work_dir = work_dir or Path(os.environ.get("ATTACKMAP_ES_DIR", REPO / ".es"))
    already = es_node.running_node(work_dir)
    if already is not None:
        yield already.url
        return
    try:
        info = es_node.start(port=None, work_dir=work_dir)
    except es_node.NodeError as exc:
        raise ServerUnavailable(str(exc)) from exc
    except Exception as exc:  # anything else on the way: download, unpack, permissions
        raise ServerUnavailable(f"{type(exc).__name__}: {exc}") from exc
    try:
        yield info.url
    finally:
        if not keep:
            es_node.stop(work_dir)


# --------------------------------------------------------------------------- Prefect


def prefect_healthy(api_url: str, timeout: float = 3.0) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_server_env(home: Path, database_url: str | None = None) -> dict[str, str]:
    """A server's environment: its own PREFECT_HOME, and its database (SQLite there, unless a
    ``postgresql+asyncpg://`` URL is given)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
    )
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return env


@contextlib.contextmanager
def run_prefect_server(
    home: Path, port: int, timeout: float = PREFECT_START_TIMEOUT, database_url: str | None = None
) -> Iterator[str]:
    """``prefect server start`` on ``port`` with its database in ``home`` (or the PostgreSQL database at
    ``database_url``), stopped on exit; ``home`` is kept, so entering again with the same two restarts the
    same server (fault tests). Yields the API URL."""
    url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=prefect_server_env(home, database_url),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not prefect_healthy(url, 2.0):
            if proc.poll() is not None:
                tail = (home / "server.log").read_text(errors="replace")[-2000:]
                raise ServerUnavailable(f"prefect server exited with {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"prefect server not healthy after {timeout:.0f}s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def start_prefect_server(timeout: float = PREFECT_START_TIMEOUT, database_url: str | None = None) -> Iterator[str]:
    """``prefect server start`` on a free port in a temporary PREFECT_HOME (SQLite there, or the PostgreSQL
    database at ``database_url``); yields the API URL."""
    home = Path(tempfile.mkdtemp(prefix="attackmap-prefect-"))
    try:
        with run_prefect_server(home, free_port(), timeout, database_url) as url:
            yield url
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def prefect_server(url: str | None = None) -> Iterator[str]:
    """``url`` when it answers healthy, else a fresh server (temporary PREFECT_HOME, free port): no
    leftover deployments or triggers. Raises ServerUnavailable."""
    if url:
        if prefect_healthy(url, 5.0):
            yield url.rstrip("/")
            return
        raise ServerUnavailable(f"{url} is not healthy (GET /health)")
    with start_prefect_server() as started:
        yield started
