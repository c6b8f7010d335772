"""Pytest plugin: a real Elasticsearch node for the tests that need one.

Fixtures:
- ``es_url`` (session): ``$ATTACKMAP_ES_URL`` when set and healthy; otherwise a node started with
  devtools/es_node.py in ``.es/`` (the same code as ``scripts/es_node.py start``) on a free port, and
  stopped at the end of the session if this session started it (keep it with ``ATTACKMAP_ES_KEEP=1``).
  When no node can be had the test is skipped with the reason, or fails when ``ATTACKMAP_REQUIRE_ES=1``
  (CI sets it).
- ``es_client`` (session): an ``elasticsearch.Elasticsearch`` client on ``es_url``.
- ``es_index_name`` (function): a fresh unique index name, deleted after the test.
- ``es_index`` (function): the same, created with ``alerts_index_mapping()`` (1 shard, 0 replicas).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.servers import ServerUnavailable, elasticsearch


def _require() -> bool:
    return os.environ.get("ATTACKMAP_REQUIRE_ES", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    env_url = os.environ.get("ATTACKMAP_ES_URL", "").strip()
    with contextlib.ExitStack() as stack:
        url = None
        if env_url:
            with contextlib.suppress(ServerUnavailable):
                url = stack.enter_context(elasticsearch(env_url))
            if url is None and _require():
                pytest.fail(f"ATTACKMAP_ES_URL={env_url} is set but not healthy (GET /_cluster/health)", pytrace=False)
        if url is None:
            try:
                url = stack.enter_context(elasticsearch(keep=os.environ.get("ATTACKMAP_ES_KEEP", "") == "1"))
            except ServerUnavailable as exc:
                if _require():
                    pytest.fail(f"ATTACKMAP_REQUIRE_ES is set but no Elasticsearch is available: {exc}", pytrace=False)
                pytest.skip(f"no Elasticsearch node: {exc}")
        yield url


@pytest.fixture(scope="session")
def es_client(es_url: str) -> Iterator[Any]:
    from mitre.io.elastic import es_client as make_client

    client = make_client(es_url)
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
