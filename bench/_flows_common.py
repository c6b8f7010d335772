"""Shared set-up for bench/latency.py and bench/burst.py: servers, a workflows file, alerts, processes."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The benchmarks' servers: the ones given, else started here (as the tests' fixtures do).
from devtools.servers import elasticsearch, prefect_server  # noqa: E402, F401

DEFAULT_CATALOG = REPO.parent / "shared" / "data" / "attack" / "enterprise-attack.json"


def letters(i: int) -> str:
    """A digit-free word per integer (the cache key normalises digits away)."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(97 + r) + out
    return out


def make_alert(i: int, salt: str = "", *, risk: float = 80.0, unique: bool = True) -> dict[str, Any]:
    """A Kibana alert from an untagged rule; ``unique`` makes its cache key unique (a cold mapping)."""
    tools = [
        "powershell.exe -nop -w hidden -enc",
        "schtasks.exe /create /tn",
        "rundll32.exe",
        "certutil.exe -urlcache -f",
    ]
    word = f"{salt}{letters(i)}" if unique else "payload"
    return {
        "@timestamp": f"2024-06-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
        "kibana.alert.uuid": f"{salt}-{i:06d}",
        "kibana.alert.risk_score": risk,
        "kibana.alert.severity": "high",
        "kibana.alert.workflow_status": "open",
        "kibana.alert.rule.uuid": f"rule-{i % 4}",
        "kibana.alert.rule.name": ["Suspicious Process", "Scheduled Task", "Rundll32", "Certutil"][i % 4],
        "kibana.space_ids": ["default"],
        "host": {"name": f"host-{i % 50}", "os": {"family": "windows"}},
        "process": {"name": tools[i % 4].split()[0], "command_line": f"{tools[i % 4]} {word} c:\\users\\{word}\\x.bin"},
        "event": {"kind": "signal", "category": ["process"]},
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(1000 * pct(values, 50), 1),
        "p95_ms": round(1000 * pct(values, 95), 1),
        "max_ms": round(1000 * max(values), 1) if values else float("nan"),
    }


@dataclass
class Setup:
    tmp: Path
    workflows: Path
    index: str
    es: Any
    es_url: str
    api_url: str

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            ATTACKMAP_ES_URL=self.es_url,
            ATTACKMAP_WORKFLOWS=str(self.workflows),
            ATTACKMAP_HOME=str(self.tmp / "home"),
            PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.update(extra)
        return env


@contextlib.contextmanager
def setup(
    es_url: str, api_url: str, catalog: Path, *, batch_size: int = 500, knowledge_base: list[str] | None = None
) -> Iterator[Setup]:
    """A workflow over a fresh index; ``knowledge_base``: the local mapper's files (none by default)."""
    from elasticsearch import Elasticsearch

    from mitre.io.elastic import alerts_index_mapping

    tmp = Path(tempfile.mkdtemp(prefix="attackmap-bench-"))
    index = f"attackmap-bench-{uuid.uuid4().hex[:8]}"
    doc = {
        "version": 1,
        "catalog": {"path": str(catalog)},
        "cache": {"directory": str(tmp / "cache")},
        "workflows": [
            {
                "name": "bench",
                "trigger": {"index_pattern": index, "batch_size": batch_size},
                "mapper": {"provider": "local", "knowledge_base": list(knowledge_base or [])},
                "outputs": {"elasticsearch_write_back": True},
            }
        ],
    }
    path = tmp / "workflows.yaml"
    path.write_text(yaml.safe_dump(doc))
    es = Elasticsearch(es_url, request_timeout=120)
    es.indices.create(
        index=index,
        mappings=alerts_index_mapping(),
        settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"},
    )
    try:
        yield Setup(tmp=tmp, workflows=path, index=index, es=es, es_url=es_url, api_url=api_url)
    finally:
        es.options(ignore_status=404).indices.delete(index=index)
        es.close()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"waiting for {text!r} in {log}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def index_alerts(es: Any, index: str, alerts: list[dict[str, Any]], refresh: bool = False) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(alerts), 2000):
        ops: list[dict[str, Any]] = []
        for alert in alerts[start : start + 2000]:
            ops.append({"index": {"_index": index, "_id": alert["kibana.alert.uuid"]}})
            ops.append(alert)
            ids.append(alert["kibana.alert.uuid"])
        resp = es.bulk(operations=ops, refresh=refresh)
        assert not resp["errors"], "indexing failed"
    return ids


def wait_updated(es: Any, index: str, doc_id: str, timeout: float = 60.0, poll: float = 0.002) -> float:
    """Seconds until the doc carries a provenance hash (realtime GET)."""
    started = time.perf_counter()
    while True:
        doc = es.get(index=index, id=doc_id, source_includes=["attackmap.provenance_hash"])
        if (doc.get("_source") or {}).get("attackmap", {}).get("provenance_hash"):
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{doc_id} not updated after {timeout}s")
        time.sleep(poll)
