"""Pytest plugin: a real Prefect server for the tests that need one.

Fixture ``prefect_api_url`` (session): ``$PREFECT_API_URL`` when set and healthy (``.ci/prefect.sh`` starts
one for CI); otherwise ``prefect server start`` on a free port with a temporary ``PREFECT_HOME`` (SQLite),
stopped at the end of the session (devtools/servers.py).  When no server can be had the test is skipped
with the reason, or fails when ``ATTACKMAP_REQUIRE_PREFECT=1``.

The URL is put in ``os.environ`` (for subprocesses: runners, workers) and, as Prefect reads its settings
when first imported, also applied with ``temporary_settings`` for this process.  Test modules should
import ``flows.*`` inside tests or fixtures that depend on this one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from devtools.servers import ServerUnavailable, prefect_server


def _require() -> bool:
    return os.environ.get("ATTACKMAP_REQUIRE_PREFECT", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    given = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    stack = contextlib.ExitStack()
    url = None
    if given:
        with contextlib.suppress(ServerUnavailable):
            url = stack.enter_context(prefect_server(given))
        if url is None and _require():
            pytest.fail(f"PREFECT_API_URL={given} is set but not healthy (GET /health)", pytrace=False)
    if url is None:
        try:
            url = stack.enter_context(prefect_server())
        except ServerUnavailable as exc:
            stack.close()
            if _require():
                pytest.fail(
                    f"ATTACKMAP_REQUIRE_PREFECT is set but no Prefect server is available: {exc}", pytrace=False
                )
            pytest.skip(f"no Prefect server: {exc}")
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
