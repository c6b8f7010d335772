"""Receivers and fixtures for the export tests and benchmarks, as real processes that can be stopped and restarted
on the same port: the HEC stand-in (scripts/hec_standin.py) and medallion (scripts/taxii_server.py)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
HEC_TOKEN = "11111111-2222-4333-8444-555555555555"
TAXII_USER = "attackmap"
TAXII_PASSWORD = "taxii-test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A server process on a fixed port: start, stop (SIGTERM: a graceful shutdown), start again."""

    def __init__(self, argv: Sequence[str], health_url: str, log: Path, auth: tuple[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.health_url = health_url
        self.log = log
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[1]} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.health_url, timeout=1.0, auth=self.auth).status_code < 500:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.argv[1]} did not answer on {self.health_url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def hec_standin(directory: Path, *, ack: bool = False, indexes: Sequence[str] = ()) -> tuple[Receiver, str, Path]:
    """(receiver, base URL, NDJSON of accepted events)."""
    port = free_port()
    out = directory / "hec-received.ndjson"
    argv = [sys.executable, str(REPO / "scripts" / "hec_standin.py"), "--port", str(port), "--out", str(out)]
    argv += ["--token", HEC_TOKEN, "--disabled-token", "00000000-0000-4000-8000-000000000000"]
    argv += [arg for index in indexes for arg in ("--index", index)]
    if ack:
        argv.append("--ack")
    base = f"http://127.0.0.1:{port}"
    return Receiver(argv, f"{base}/services/collector/health", directory / "hec.log"), base, out


def taxii_server(directory: Path) -> tuple[Receiver, str]:
    """(receiver, collection URL); the collection survives a stop and a start."""
    sys.path.insert(0, str(REPO / "scripts"))
    from taxii_server import collection_url

    port = free_port()
    argv = [sys.executable, str(REPO / "scripts" / "taxii_server.py"), "--port", str(port)]
    argv += ["--data", str(directory / "taxii-data.json"), "--user", TAXII_USER, "--password", TAXII_PASSWORD]
    base = f"http://127.0.0.1:{port}"
    receiver = Receiver(argv, f"{base}/taxii2/", directory / "taxii.log", auth=(TAXII_USER, TAXII_PASSWORD))
    return receiver, collection_url(base)


def read_ndjson(path: Path) -> list[dict[str, object]]:
    import orjson

    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# --------------------------------------------------------------------------- fixtures (a pytest plugin)

EXAMPLES = REPO / "examples" / "alerts.ndjson"


@pytest.fixture(scope="session")
def enriched_examples(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """examples/alerts.ndjson as `attackmap enrich` writes it (offline catalog, no knowledge base)."""
    from mitre.config import WorkflowsFile
    from mitre.pipeline import EngineOptions, RawAlert, build_engine

    cache = tmp_path_factory.mktemp("export-cache")
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=cache))
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    outcomes = engine.process_batch([RawAlert(line=i, raw=line) for i, line in enumerate(lines, start=1)])
    return [o.alert for o in outcomes if o.alert is not None]


def many_alerts(enriched: list[dict[str, Any]], n: int, run: str = "alert") -> list[dict[str, Any]]:
    """n distinct enriched alerts: the examples that carry techniques, each copy with its own id
    (``<run>-<n>-…``) and time."""
    tagged = [a for a in enriched if a.get("threat", {}).get("technique")]
    out = []
    for i in range(n):
        alert = dict(tagged[i % len(tagged)])
        alert["kibana.alert.uuid"] = f"{run}-{i:08d}-{i % len(tagged):04d}"
        alert["@timestamp"] = f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}.000Z"
        out.append(alert)
    return out


def write_ndjson(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    import orjson

    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture
def hec(tmp_path: Path) -> Iterator[tuple[Receiver, str, Path]]:
    receiver, base, out = hec_standin(tmp_path, ack=True, indexes=("attackmap",))
    receiver.start()
    try:
        yield receiver, base, out
    finally:
        receiver.stop()


@pytest.fixture
def taxii(tmp_path: Path) -> Iterator[tuple[Receiver, str]]:
    receiver, url = taxii_server(tmp_path)
    receiver.start()
    try:
        yield receiver, url
    finally:
        receiver.stop()
