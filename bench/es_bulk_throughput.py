#!/usr/bin/env python3
"""Throughput of ElasticSink: write threat + attackmap back to N synthetic alerts in bulk batches.

    python bench/es_bulk_throughput.py [--url URL] [--n 20000] [--batch 1000]

Uses ``--url`` or ``$ATTACKMAP_ES_URL``, else starts (or reuses) the node in ``.es/`` like
``scripts/es_node.py start``.  Indexes N alerts into a fresh index, reads them back with ElasticSource
(PIT + search_after) and times only the sink's write; prints alerts/s.  The index is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elasticsearch import Elasticsearch

from devtools import es_node
from mitre.io.elastic import AlertUpdate, ElasticSink, ElasticSource, alerts_index_mapping

TARGET = 1000.0


def synthetic_alert(i: int) -> dict[str, Any]:
    return {
        "@timestamp": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}.{i % 1000:03d}Z",
        "kibana.alert.uuid": f"bench-{i:06d}",
        "kibana.alert.risk_score": float(21 + i % 79),
        "kibana.alert.rule.uuid": f"rule-{i % 50}",
        "kibana.alert.rule.name": f"Rule {i % 50}",
        "kibana.alert.workflow_status": "open",
        "host": {"name": f"host-{i % 300}", "os": {"family": "windows"}},
        "process": {"name": "powershell.exe", "command_line": f"powershell.exe -nop -enc {i:08x}"},
        "user": {"name": f"user{i % 97}"},
        "event": {"kind": "signal", "category": ["process"]},
    }


def engine_fields(i: int) -> dict[str, Any]:
    return {
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": {
                "id": ["TA0002"],
                "name": ["Execution"],
                "reference": ["https://attack.mitre.org/tactics/TA0002/"],
            },
            "technique": {
                "id": ["T1059"],
                "name": ["Command and Scripting Interpreter"],
                "reference": ["https://attack.mitre.org/techniques/T1059/"],
                "subtechnique": {
                    "id": ["T1059.001"],
                    "name": ["PowerShell"],
                    "reference": ["https://attack.mitre.org/techniques/T1059/001/"],
                },
            },
        },
        "attackmap": {
            "provenance_hash": f"{i:064x}",
            "mapper": "local",
            "catalog_version": "18.1",
            "confidence": 0.8,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("ATTACKMAP_ES_URL"))
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    url = args.url or es_node.start(port=None, work_dir=Path(".es")).url
    client = Elasticsearch(url, request_timeout=120)
    index = f"attackmap-bench-{uuid.uuid4().hex[:8]}"
    client.indices.create(
        index=index,
        mappings=alerts_index_mapping(),
        settings={"number_of_shards": 1, "number_of_replicas": 0},
    )
    try:
        t0 = time.perf_counter()
        for start in range(0, args.n, 5000):
            ops: list[dict[str, Any]] = []
            for i in range(start, min(start + 5000, args.n)):
                ops.append({"index": {"_index": index, "_id": f"bench-{i:06d}"}})
                ops.append(synthetic_alert(i))
            resp = client.bulk(operations=ops)
            assert not resp["errors"], "indexing failed"
        client.indices.refresh(index=index)
        t_index = time.perf_counter() - t0

        t0 = time.perf_counter()
        alerts = list(ElasticSource(client, index, page_size=5000).read())
        t_read = time.perf_counter() - t0
        assert len(alerts) == args.n, f"read {len(alerts)} of {args.n}"
        updates = []
        for n, a in enumerate(alerts):
            alert = dict(a.source)
            alert.update(engine_fields(n))
            updates.append(AlertUpdate(a.index, a.doc_id, a.seq_no, a.primary_term, alert))

        sink = ElasticSink(client, batch_size=args.batch)
        t0 = time.perf_counter()
        summary = sink.write(updates)
        t_write = time.perf_counter() - t0

        t0 = time.perf_counter()
        again = sink.write(updates)  # idempotent pass: every doc already carries its hash
        t_again = time.perf_counter() - t0
    finally:
        client.options(ignore_status=404).indices.delete(index=index)
        client.close()

    rate = args.n / t_write
    print(f"server: {url}  n={args.n}  batch={args.batch}")
    print(
        f"index {args.n} alerts: {t_index:.2f}s;  read via PIT/search_after: {t_read:.2f}s ({args.n / t_read:,.0f}/s)"
    )
    print(
        f"sink write: {t_write:.2f}s  -> {rate:,.0f} alerts/s  "
        f"(updated={summary.updated} unchanged={summary.unchanged} "
        f"conflicts_retried={summary.conflicts_retried} failed={len(summary.failed)})"
    )
    print(f"idempotent re-write: {t_again:.2f}s -> {args.n / t_again:,.0f} alerts/s (unchanged={again.unchanged})")
    ok = summary.updated == args.n and not summary.failed and again.unchanged == args.n and rate >= TARGET
    print(f"target >= {TARGET:,.0f} alerts/s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
