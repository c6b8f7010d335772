"""Pytest plugin: a real Elasticsearch node for the tests that need one.

Fixtures:
- ``es_url`` (session): ``$ATTACKMAP_ES_URL`` when set and healthy; otherwise a node started with
  mitre/io/es_node.py in ``.es/`` (the same code as ``scripts/es_node.py start``) on a free port, and
  stopped at the end of the session if this session started it (keep it with ``ATTACKMAP_ES_KEEP=1``).
  When no node can be had the test is skipped with the reason, or fails when ``ATTACKMAP_REQUIRE_ES=1``
  (CI sets it).
- ``es_client`` (session): an ``elasticsearch.Elasticsearch`` client on ``es_url``.
- ``es_index_name`` (function): a fresh unique index name, deleted after the test.
- ``es_index`` (function): the same, created with ``alerts_index_mapping()`` (1 shard, 0 replicas).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mitre.io import es_node

REPO = Path(__file__).resolve().parents[1]


def _require() -> bool:
    return os.environ.get("ATTACKMAP_REQUIRE_ES", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _require():
        pytest.fail(f"ATTACKMAP_REQUIRE_ES is set but no Elasticsearch is available: {reason}", pytrace=False)
    pytest.skip(f"no Elasticsearch node: {reason}")


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    env_url = os.environ.get("ATTACKMAP_ES_URL", "").strip().rstrip("/")
    if env_url:
        if es_node.is_ready(env_url, timeout=5.0):
            yield env_url
            return
        if _require():
            pytest.fail(f"ATTACKMAP_ES_URL={env_url} is set but not healthy (GET /_cluster/health)", pytrace=False)
    work_dir = Path(os.environ.get("ATTACKMAP_ES_DIR", REPO / ".es"))
    already = es_node.running_node(work_dir)
    started = False
    if already is not None:
        url = already.url
    else:
        try:
            info = es_node.start(port=None, work_dir=work_dir)
        except es_node.NodeError as exc:
            _unavailable(str(exc))
            return
        except Exception as exc:  # anything else on the way: download, unpack, permissions
            _unavailable(f"{type(exc).__name__}: {exc}")
            return
        url, started = info.url, True
    try:
        yield url
    finally:
        if started and os.environ.get("ATTACKMAP_ES_KEEP", "") != "1":
            es_node.stop(work_dir)


@pytest.fixture(scope="session")
def es_client(es_url: str) -> Iterator[Any]:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(es_url, request_timeout=60)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def es_index_name(es_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    stem = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"attackmap-test-{stem}-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        es_client.options(ignore_status=404).indices.delete(index=name)


@pytest.fixture
def es_index(es_client: Any, es_index_name: str) -> str:
    from mitre.io.elastic import alerts_index_mapping

    es_client.indices.create(
        index=es_index_name,
        mappings=alerts_index_mapping(),
        settings={"number_of_shards": 1, "number_of_replicas": 0},
    )
    return es_index_name
