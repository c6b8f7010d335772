"""`poll_alerts`: read new high-risk alerts from ES since the checkpoint and hand them on.

Two modes:

- ``emit`` (default): one ``security.alert.high-risk`` event per alert (``POST /api/events``); the event id
  is uuid5(index/id), so a poll that is retried, or overlaps another, cannot trigger an alert twice;
- ``direct``: enrich the batches in this run (no events; for a single-process setup or catching up).

The checkpoint (a small JSON file, ``$ATTACKMAP_HOME/checkpoints/<workflow>-poller.json`` by default)
is saved after each batch has been emitted or written: a crash re-reads at most one batch, which the
event ids (emit) or the provenance hash (direct) make harmless.  Run one poller per workflow: the
checkpoint is its only state, and must sit on storage that survives the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.runtimes import RUNTIMES
from mitre.chunks import chunked
from mitre.config import Environment
from mitre.io.elastic import Checkpoint, ElasticSource, SourceAlert, kibana_space
from mitre.io.events import AlertRef, alert_event, post_events
from mitre.service import BatchResult, Runtime, enrich_sources

Mode = Literal["emit", "direct"]


def default_checkpoint(workflow: str, kind: str = "poller") -> Path:
    return Environment().home / "checkpoints" / f"{workflow}-{kind}.json"


def prefect_api_url() -> str:
    url = Environment().prefect_api_url or ""
    if not url:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value() or ""
    if not url:
        raise RuntimeError("PREFECT_API_URL is not set: nowhere to emit events")
    return url


def poll_once(
    runtime: Runtime,
    checkpoint: Checkpoint,
    *,
    mode: Mode = "emit",
    index: str | None = None,
    max_alerts: int | None = None,
    emit: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """One poll: every matching alert after the checkpoint, in batches; returns counts."""
    workflow = runtime.workflow
    source = ElasticSource(
        runtime.es,
        index or workflow.trigger.index_pattern,
        min_risk=workflow.decision.min_risk_score,
        page_size=workflow.trigger.batch_size,
    )
    if emit is None:
        api = prefect_api_url()

        def emit(events: list[dict[str, Any]]) -> None:
            post_events(api, events)

    seen = 0
    emitted = 0
    result = BatchResult()
    batch: list[SourceAlert]
    for batch in chunked(source.read(checkpoint, limit=max_alerts), workflow.trigger.batch_size):
        seen += len(batch)
        if mode == "emit":
            events = [
                alert_event(
                    workflow.trigger.event, AlertRef(a.index, a.doc_id, kibana_space(a.index)), workflow=workflow.name
                )
                for a in batch
            ]
            emit(events)
            emitted += len(events)
        else:
            result.merge(enrich_sources(runtime, batch))
        checkpoint.save()
    out: dict[str, Any] = {"seen": seen, "mode": mode, "checkpoint": checkpoint.timestamp}
    if mode == "emit":
        out["emitted"] = emitted
    else:
        out.update(result.as_dict())
    return out


@flow(name="poll-alerts", retries=2, retry_delay_seconds=5)
def poll_alerts(
    workflow: str | None = None,
    mode: Mode = "emit",
    checkpoint: str | None = None,
    index: str | None = None,
    max_alerts: int | None = None,
) -> dict[str, Any]:
    """Poll ES for high-risk alerts since the checkpoint and emit an event per alert (or enrich directly)."""
    logger = get_run_logger()
    runtime = RUNTIMES.get(workflow)
    path = Path(checkpoint) if checkpoint else default_checkpoint(runtime.workflow.name)
    cp = Checkpoint.load(path)
    started = time.perf_counter()
    out = poll_once(runtime, cp, mode=mode, index=index, max_alerts=max_alerts)
    logger.info("poll-alerts %s: %s in %.2fs (checkpoint %s)", mode, out, time.perf_counter() - started, path)
    return out
