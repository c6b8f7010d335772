"""Pytest plugin: a real Redis and a real PostgreSQL for the tests that need them.

Fixtures ``redis_url`` and ``postgres_url`` (session): ``$ATTACKMAP_REDIS_URL`` / ``$ATTACKMAP_POSTGRES_URL``
when set and answering (``.ci/run`` starts both), else servers started from Debian's packages on free ports
(devtools/datastores.py), stopped at the end of the session. When none can be had the test is skipped
with the reason, or fails when ``ATTACKMAP_REQUIRE_DATASTORES=1`` (CI sets it).
``redis_client``: a client on a fresh database, emptied before each test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from devtools.datastores import postgres_server, redis_server
from devtools.servers import ServerUnavailable


def _require() -> bool:
    return os.environ.get("ATTACKMAP_REQUIRE_DATASTORES", "").strip().lower() in ("1", "true", "yes")


def _server(variable: str, start: Callable[..., AbstractContextManager[str]], what: str) -> Iterator[str]:
    given = os.environ.get(variable, "").strip() or None
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(start(given))
        except ServerUnavailable as exc:
            if _require():
                pytest.fail(f"ATTACKMAP_REQUIRE_DATASTORES is set but no {what} is available: {exc}", pytrace=False)
            pytest.skip(f"no {what}: {exc}")
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    yield from _server("ATTACKMAP_REDIS_URL", redis_server, "Redis")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    yield from _server("ATTACKMAP_POSTGRES_URL", postgres_server, "PostgreSQL")


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[Any]:
    from mitre.cache_redis import redis_client as make_client

    client = make_client(redis_url)
    client.flushdb()
    yield client
    client.close()
