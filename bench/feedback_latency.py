"""How soon an analyst's correction shows: from the feedback request to the first mapping of the same
alert that carries it.

A real uvicorn serves the enrichment API (SQLite feedback store under a temporary ATTACKMAP_HOME). For
each of --rounds distinct alerts: enrich it (mapped by the local mapper, cached, remembered), POST a
correction, then enrich it again at once — through the same API server, and through a second engine
built apart from the server's (what another worker process sharing the store sees). Reported: the time
from sending the correction to receiving a mapping that carries it.
Usage: python bench/feedback_latency.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.asgi import serving  # noqa: E402
from mitre.api.app import EnrichmentApi  # noqa: E402
from mitre.api.audit import AuditLog  # noqa: E402
from mitre.api.keys import ApiKeys  # noqa: E402
from mitre.api.server import server_app  # noqa: E402
from mitre.assemble import EngineOptions, build_engine  # noqa: E402
from mitre.config import Environment, WorkflowsFile  # noqa: E402


def alert(n: int) -> dict:
    return {
        "@timestamp": "2026-12-02T10:00:00Z",
        "kibana.alert.uuid": f"a-{n}",
        "kibana.alert.rule.name": "Suspicious rundll32",
        "kibana.alert.rule.rule_id": "rule-rundll32",
        "kibana.alert.risk_score": 73,
        "host": {"name": "wks-1", "os": {"type": "windows"}},
        "process": {"name": "rundll32.exe", "command_line": f"rundll32.exe C:\\ProgramData\\mod{n}.dll,Entry{n}"},
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp())
    env = Environment(home=home)
    options = EngineOptions(knowledge_base=(), cache_dir=home / "cache")
    engine = build_engine(WorkflowsFile(), env, options)
    other = build_engine(WorkflowsFile(), env, options)
    keys = ApiKeys(home / "api-keys.json")
    _, secret = keys.create("bench", "analyst", "acme")
    api = EnrichmentApi(engine=engine, keys=keys, audit=AuditLog(home / "audit.ndjson"), env=env)
    headers = {"authorization": f"Bearer {secret}"}
    same, apart = [], []
    with serving(server_app(api=api, inbound=None)) as server, httpx.Client(base_url=server.url, headers=headers) as c:
        for n in range(args.rounds):
            doc = alert(n)
            first = c.post("/v1/enrich", json=doc).json()["results"][0]["ecs"]
            other.process(doc, tenant="acme")  # the other engine has it remembered too
            key = first["attackmap"]["mapping_key"]
            started = time.perf_counter()
            c.post("/v1/feedback", json={"mapping_key": key, "verdict": "correct", "techniques": ["T1218.011"]})
            again = c.post("/v1/enrich", json=doc).json()["results"][0]["ecs"]
            same.append(time.perf_counter() - started)
            assert [t["id"] for t in again["attackmap"]["techniques"]] == ["T1218.011"]
            seen = other.process(doc, tenant="acme").alert or {}
            apart.append(time.perf_counter() - started)
            assert [t["id"] for t in seen["attackmap"]["techniques"]] == ["T1218.011"]
    print("| next mapping through | p50 | p95 | max | target |\n|---|---|---|---|---|")
    for label, values in (("the same API server", same), ("another engine sharing the store", apart)):
        print(
            f"| {label} | {statistics.median(values) * 1e3:.1f} ms | {pct(values, 0.95) * 1e3:.1f} ms "
            f"| {max(values) * 1e3:.1f} ms | ≤ 1 s {'✔' if max(values) <= 1 else '✘'} |"
        )


if __name__ == "__main__":
    main()
