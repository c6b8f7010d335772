"""Pytest plugin for the export tests: the enriched examples, and a HEC stand-in and a TAXII server
per test (`devtools/receivers.py`), stopped when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.receivers import EXAMPLES, Receiver, hec_standin, taxii_server


@pytest.fixture(scope="session")
def enriched_examples(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """examples/alerts.ndjson as `attackmap enrich` writes it (offline catalog, no knowledge base)."""
    from mitre.assemble import EngineOptions, build_engine
    from mitre.config import WorkflowsFile
    from mitre.models import RawAlert

    cache = tmp_path_factory.mktemp("export-cache")
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=cache))
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    outcomes = engine.process_batch([RawAlert(line=i, raw=line) for i, line in enumerate(lines, start=1)])
    return [o.alert for o in outcomes if o.alert is not None]


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
