"""Shared fixtures: the read-only reference corpora in ../shared/data, loaded by path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from mitre.catalog import Catalog, load_catalog
from mitre.indicators import IndicatorSet, load_indicators

pytest_plugins: list[str] = [
    "tests.es_fixtures",
    "tests.prefect_fixtures",
    "tests.export_fixtures",
    "tests.datastore_fixtures",
]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Property-based tests: `ci` runs every test's full example count, derandomized (a CI failure
# reproduces anywhere); `dev`, the default outside CI, a tenth of it with fresh randomness.
# HYPOTHESIS_PROFILE picks one explicitly.
_FUZZ = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
}
settings.register_profile("ci", max_examples=1000, derandomize=True, **_FUZZ)
settings.register_profile("dev", max_examples=100, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", autouse=True)
def temporary_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs with ATTACKMAP_HOME in a temporary folder: the suite never writes into the
    user's ~/.local/share/attackmap (knowledge base, cache, ledger, catalog). One per session, so a
    knowledge base trained by one test is reused by the next; a test may set its own."""
    home = tmp_path_factory.mktemp("attackmap-home")
    previous = os.environ.get("ATTACKMAP_HOME")
    os.environ["ATTACKMAP_HOME"] = str(home)
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("ATTACKMAP_HOME", None)
        else:
            os.environ["ATTACKMAP_HOME"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared corpora folder; tests that need it skip with a reason when it is absent."""
    if not (SHARED_DATA / "attack" / "enterprise-attack.json").is_file():
        if os.environ.get("ATTACKMAP_REQUIRE_SHARED") == "1":
            pytest.fail(f"ATTACKMAP_REQUIRE_SHARED=1 but {SHARED_DATA} is missing")
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: the ATT&CK bundle and corpora are loaded by path")
    return SHARED_DATA


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The offline ATT&CK catalog (the bundled package): what a fresh install runs with."""
    return load_catalog(None)


@pytest.fixture(scope="session")
def indicators(catalog: Catalog) -> IndicatorSet:
    return load_indicators(catalog)


@pytest.fixture(autouse=True)
def _cli_logging_reset() -> Iterator[None]:
    """A command run in the test process configures the `attackmap` loggers for a terminal (see
    mitre/cli/logs.py); the next test starts from Python's defaults again."""
    yield
    from mitre.cli.logs import reset_logging

    reset_logging()
