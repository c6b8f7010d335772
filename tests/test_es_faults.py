"""Faults in Elasticsearch during the write-back, with real nodes: answers of 429 and 503 (a real HTTP
proxy in front of the shared node injects them, for whole requests and single bulk items), and a
node restarted in the middle of a bulk write-back (a node of this test's own, started from the dev
tooling: the shared one is never restarted). Every alert is enriched, none is lost, none written twice
(each document's _version counts its writes: 1 when indexed, 2 after its one enrichment)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.fault_proxy import Drop, FaultProxy, Forward, Request, Response
from mitre.assemble import EngineOptions, build_engine
from mitre.config import WorkflowsFile
from mitre.engine import Engine
from mitre.io.elastic import ElasticSink, ElasticSource, alerts_index_mapping
from mitre.io.elastic import es_client as make_es_client
from mitre.service import map_sources
from tests.helpers import LSASS_COMMAND, kibana_alert

pytestmark = pytest.mark.elasticsearch

_PRODUCT = {"content-type": "application/json", "x-elastic-product": "Elasticsearch"}
REJECTED = {
    "type": "es_rejected_execution_exception",
    "reason": "rejected execution of TimedRunnable on EsThreadPoolExecutor[name = write, queue capacity = 10000]",
}
UNAVAILABLE = {"type": "unavailable_shards_exception", "reason": "[alerts][0] primary shard is not active"}


def es_error(status: int, error: dict[str, str]) -> Response:
    body = {"error": {"root_cause": [error], **error}, "status": status}
    return Response(status, json.dumps(body).encode(), dict(_PRODUCT))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache=False))


def create_index(client: Any, index: str, n: int) -> None:
    client.indices.create(index=index, mappings=alerts_index_mapping(), settings={"number_of_replicas": 0})
    ops: list[dict[str, Any]] = []
    for i in range(n):
        alert = kibana_alert(rule_name=f"Rule {i % 7}", command_line=f"{LSASS_COMMAND} #{i}")
        alert["kibana.alert.uuid"] = f"alert-{i:05d}"
        alert["@timestamp"] = f"2026-10-03T08:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
        ops += [{"index": {"_index": index, "_id": alert["kibana.alert.uuid"]}}, alert]
    assert not client.bulk(operations=ops, refresh=True)["errors"]


def written_once(client: Any, index: str, n: int) -> None:
    """Every document enriched exactly once: _version 2, one provenance."""
    docs = client.search(index=index, size=n, version=True, query={"match_all": {}})["hits"]["hits"]
    assert len(docs) == n
    versions = sorted({d["_version"] for d in docs})
    assert versions == [2], f"document versions {versions}: 1 is not enriched, 3+ written more than once"
    assert all(len(d["_source"]["attackmap"]["provenance_hash"]) == 64 for d in docs)


def test_es_answering_429_and_503_is_backed_off_and_retried_nothing_lost_nothing_twice(
    es_client: Any, es_url: str, es_index_name: str, engine: Engine
) -> None:
    n = 300
    create_index(es_client, es_index_name, n)
    alerts = list(ElasticSource(es_client, es_index_name).read())
    updates, summary, _ = map_sources(engine, alerts)
    assert summary.enriched == n
    bulks = 0
    mgets = 0

    def plan(request: Request, forward: Forward) -> Response:
        nonlocal bulks, mgets
        if request.path.startswith("/_mget"):
            mgets += 1
            return es_error(503, UNAVAILABLE) if mgets == 1 else forward(request)
        if not request.path.startswith("/_bulk"):
            return forward(request)
        bulks += 1
        if bulks == 1:
            return es_error(429, REJECTED)
        if bulks == 2:
            return es_error(503, UNAVAILABLE)
        if bulks == 3:  # ES under load: every third item rejected, the others applied
            return reject_every_third_item(request, forward)
        return forward(request)

    sleeps: list[float] = []
    with FaultProxy(es_url, plan) as proxy:
        sink = ElasticSink(make_es_client(proxy.url), batch_size=100, refresh="wait_for", sleep=sleeps.append)
        result = sink.write(updates)
    assert result.failed == []
    assert result.updated == n and result.unchanged == 0
    assert bulks >= 4 and mgets >= 2 and sleeps, "every fault was served"
    # The client retries 429/503 itself (elastic-transport); what it gives up on, the sink backs off from.
    assert sleeps == [0.2 * 2**i for i in range(len(sleeps))], sleeps
    written_once(es_client, es_index_name, n)


def reject_every_third_item(request: Request, forward: Forward) -> Response:
    """Forward the bulk without every third update and answer those with per-item 429s, as ES does."""
    lines = request.body.splitlines()
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    kept = [pair for n, pair in enumerate(pairs) if n % 3 != 2]
    body = b"\n".join(line for pair in kept for line in pair) + b"\n"
    answer = forward(Request(request.method, request.path, request.headers, body))
    real = iter(json.loads(answer.body)["items"])
    items = []
    for n, (action, _) in enumerate(pairs):
        if n % 3 != 2:
            items.append(next(real))
        else:
            meta = json.loads(action)["update"]
            items.append({"update": {"_index": meta["_index"], "_id": meta["_id"], "status": 429, "error": REJECTED}})
    return Response(200, json.dumps({"errors": True, "items": items}).encode(), dict(_PRODUCT))


# --------------------------------------------------------------------------- a node restarted


@pytest.fixture(scope="module")
def own_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A single-node Elasticsearch of this module's own (devtools/es_node.py), on a free port."""
    from devtools import es_node

    work_dir = tmp_path_factory.mktemp("es-restart")
    try:
        info = es_node.start(port=None, work_dir=work_dir)
    except Exception as exc:
        if os.environ.get("ATTACKMAP_REQUIRE_ES", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"cannot start a second Elasticsearch node: {exc}", pytrace=False)
        pytest.skip(f"cannot start a second Elasticsearch node: {exc}")
    try:
        yield info.url, work_dir
    finally:
        es_node.stop(work_dir)
        shutil.rmtree(es_node.node_base(work_dir), ignore_errors=True)  # /var/tmp/… when run as root
        shutil.rmtree(work_dir, ignore_errors=True)


def test_es_restarted_in_the_middle_of_a_bulk_write_back_loses_nothing_and_writes_nothing_twice(
    own_node: tuple[str, Path], engine: Engine
) -> None:
    """The third bulk request is applied by the node, which is then stopped before it answers (the
    answer is lost) and started again: the sink retries through the outage, and re-reads each stored
    provenance hash first, so the batch ES applied is not written a second time."""
    from devtools import es_node

    url, work_dir = own_node
    port = int(url.rsplit(":", 1)[1])
    direct = make_es_client(url)
    index = f"attackmap-restart-{uuid.uuid4().hex[:8]}"
    n = 1000
    create_index(direct, index, n)
    updates, _, _ = map_sources(engine, list(ElasticSource(direct, index).read()))
    bulks = 0
    restart: dict[str, float] = {}

    def restart_node() -> None:
        es_node.stop(work_dir)
        restart["stopped"] = time.monotonic()
        es_node.start(port=port, work_dir=work_dir)
        restart["started"] = time.monotonic()

    starter: list[threading.Thread] = []

    def plan(request: Request, forward: Forward) -> Response:
        nonlocal bulks
        if not request.path.startswith("/_bulk"):
            return forward(request)
        bulks += 1
        answer = forward(request)
        if bulks == 3:
            restart["began"] = time.monotonic()
            starter.append(threading.Thread(target=restart_node))
            starter[0].start()
            raise Drop  # applied, but the answer never arrives
        return answer

    with FaultProxy(url, plan) as proxy:
        sink = ElasticSink(make_es_client(proxy.url), batch_size=100, retry_seconds=300, backoff_cap=2.0)
        result = sink.write(updates)
        finished = time.monotonic()
    starter[0].join()
    assert result.failed == []
    assert result.updated == n - 100 and result.unchanged == 100, result
    direct.indices.refresh(index=index)
    written_once(direct, index, n)
    print(f"\nES restart: outage {restart['started'] - restart['began']:.1f} s, "
          f"write-back done {finished - restart['started']:.1f} s after the node was back")  # fmt: skip
