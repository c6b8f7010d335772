"""Pytest plugin: a real Prefect server for the tests that need one.

Fixture ``prefect_api_url`` (session): ``$PREFECT_API_URL`` when set and healthy (``.ci/prefect.sh`` starts
one for CI); otherwise ``prefect server start`` on a free port with a temporary ``PREFECT_HOME`` (SQLite),
stopped at the end of the session.  When no server can be had the test is skipped with the reason, or
fails when ``ATTACKMAP_REQUIRE_PREFECT=1``.

The URL is put in ``os.environ`` (for subprocesses: runners, workers) and, as Prefect reads its settings
when first imported, also applied with ``temporary_settings`` for this process.  Test modules should
import ``flows.*`` inside tests or fixtures that depend on this one.
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
import pytest

START_TIMEOUT = float(os.environ.get("ATTACKMAP_PREFECT_START_TIMEOUT", "120"))


def _require() -> bool:
    return os.environ.get("ATTACKMAP_REQUIRE_PREFECT", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _require():
        pytest.fail(f"ATTACKMAP_REQUIRE_PREFECT is set but no Prefect server is available: {reason}", pytrace=False)
    pytest.skip(f"no Prefect server: {reason}")


def healthy(api_url: str, timeout: float = 3.0) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
    )
    return env


@contextlib.contextmanager
def start_server(timeout: float = START_TIMEOUT) -> Iterator[str]:
    """``prefect server start`` on a free port in a temporary PREFECT_HOME; yields the API URL."""
    home = Path(tempfile.mkdtemp(prefix="attackmap-prefect-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url, 2.0):
            if proc.poll() is not None:
                tail = (home / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prefect server exited with {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s")
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
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    stack = contextlib.ExitStack()
    if url and not healthy(url, 5.0):
        if _require():
            pytest.fail(f"PREFECT_API_URL={url} is set but not healthy (GET /health)", pytrace=False)
        url = ""
    if not url:
        try:
            url = stack.enter_context(start_server())
        except Exception as exc:
            stack.close()
            _unavailable(f"{type(exc).__name__}: {exc}")
            return
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    with stack:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                if previous is None:
                    os.environ.pop("PREFECT_API_URL", None)
                else:
                    os.environ["PREFECT_API_URL"] = previous
