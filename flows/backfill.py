"""`backfill`: enrich historical alerts in batches, with progress, resumable from a checkpoint.

Reads with ElasticSource (point-in-time + search_after, sorted by ``@timestamp`` and the alert uuid),
enriches each batch with the engine and writes it back with one bulk request per batch.  The checkpoint
is saved after every batch that was written, so a stopped or failed backfill resumes where it left
off when run again with the same checkpoint file.  Reading, mapping and writing overlap (one batch of
each in flight; see `mitre.service.run_pipeline`).  Progress is logged and kept in a Prefect progress
artifact.

`retag`: the same walk over stored alerts, re-tagging what attackmap enriched under one ATT&CK version
for another with an official crosswalk (`mitre.retag`): no mapping, only the tags move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.poller import default_checkpoint
from flows.runtimes import RUNTIMES
from mitre.catalog import Catalog, load_catalog
from mitre.chunks import chunked
from mitre.config import Environment, default_workflows_path, load_workflows
from mitre.io.elastic import AlertUpdate, Checkpoint, ElasticSink, ElasticSource, SinkSummary, SourceAlert, es_client
from mitre.retag import load_crosswalk, retag_alert
from mitre.service import BatchResult, Runtime, run_pipeline

Progress = Callable[[int, int | None, BatchResult], None]


def run_backfill(
    runtime: Runtime,
    checkpoint: Checkpoint,
    *,
    index: str | None = None,
    min_risk: float | None = None,
    batch_size: int | None = None,
    max_alerts: int | None = None,
    progress: Progress | None = None,
) -> BatchResult:
    """Enrich every matching alert after the checkpoint; ``progress(done, total, batch)`` after each batch."""
    workflow = runtime.workflow
    size = batch_size or workflow.trigger.batch_size
    source = ElasticSource(
        runtime.es,
        index or workflow.trigger.index_pattern,
        min_risk=workflow.decision.min_risk_score if min_risk is None else min_risk,
        page_size=size,
    )
    total: int | None
    try:
        total = int(
            runtime.es.count(index=source.index, query=source.query(checkpoint), ignore_unavailable=True)["count"]
        )
    except Exception:
        total = None
    if max_alerts is not None and total is not None:
        total = min(total, max_alerts)
    done = 0
    saver = Checkpoint(checkpoint.path, checkpoint.timestamp, checkpoint.tiebreaker)

    def written(alerts: list[SourceAlert], step: BatchResult) -> None:
        nonlocal done
        if step.sink.failed:
            # The checkpoint stays before this batch: a rerun retries it (written docs are then unchanged).
            raise RuntimeError(f"{len(step.sink.failed)} write-back failures, e.g. {step.sink.failed[:3]}")
        if alerts:
            saver.advance(alerts[-1].sort)
            saver.save()
        done += len(alerts)
        if progress is not None:
            progress(done, total, step)

    return run_pipeline(runtime, chunked(source.read(checkpoint, limit=max_alerts), size), on_batch=written)


@flow(name="backfill-alerts", retries=0)
def backfill(
    workflow: str | None = None,
    index: str | None = None,
    checkpoint: str | None = None,
    min_risk: float | None = None,
    batch_size: int | None = None,
    max_alerts: int | None = None,
) -> dict[str, Any]:
    """Enrich historical alerts (rerun with the same checkpoint to resume)."""
    logger = get_run_logger()
    runtime = RUNTIMES.get(workflow)
    path = Path(checkpoint) if checkpoint else default_checkpoint(runtime.workflow.name, "backfill")
    cp = Checkpoint.load(path)
    logger.info("backfill from %s (checkpoint %s)", "the start" if cp.is_empty else cp.timestamp, path)
    artifact_id = cast(UUID, create_progress_artifact(progress=0.0, description="attackmap backfill"))
    started = time.perf_counter()

    def report(done: int, total: int | None, step: BatchResult) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        pct = 100.0 * done / total if total else 0.0
        logger.info(
            "backfill: %d/%s alerts (%.0f%%), %.0f alerts/s", done, total if total is not None else "?", pct, rate
        )
        if artifact_id is not None and total:
            update_progress_artifact(artifact_id=artifact_id, progress=min(pct, 100.0))

    result = run_backfill(
        runtime, cp, index=index, min_risk=min_risk, batch_size=batch_size, max_alerts=max_alerts, progress=report
    )
    out = result.as_dict()
    out["seconds"] = round(time.perf_counter() - started, 3)
    out["checkpoint"] = cp.timestamp
    return out


# --------------------------------------------------------------------------- re-tag for a new ATT&CK version


def run_retag(
    es: Any,
    sink: ElasticSink,
    index: str,
    checkpoint: Checkpoint,
    crosswalk: dict[str, tuple[str, ...]],
    catalog: Catalog,
    *,
    batch_size: int = 500,
) -> tuple[int, SinkSummary]:
    """Re-tag every stored alert after the checkpoint for ``catalog`` (see `mitre.retag`); returns the
    alerts read and what the sink wrote. The checkpoint is saved after each written batch, and an alert
    already re-tagged is left alone, so a stopped or repeated run is safe."""
    source = ElasticSource(es, index, page_size=batch_size)
    saver = Checkpoint(checkpoint.path, checkpoint.timestamp, checkpoint.tiebreaker)
    total = SinkSummary()
    read = 0
    for batch in chunked(source.read(checkpoint), batch_size):
        read += len(batch)
        updates = [
            AlertUpdate(a.index, a.doc_id, a.seq_no, a.primary_term, new)
            for a in batch
            if (new := retag_alert(a.source, crosswalk, catalog)) is not None
        ]
        written = sink.write(updates)
        if written.failed:
            raise RuntimeError(f"{len(written.failed)} re-tag write failures, e.g. {written.failed[:3]}")
        total = total.merge(written)
        saver.advance(batch[-1].sort)
        saver.save()
    return read, total


@flow(name="retag-alerts", retries=0)
def retag(
    catalog: str,
    crosswalk: str,
    index: str | None = None,
    workflow: str | None = None,
    checkpoint: str | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Re-tag alerts already enriched in Elasticsearch for another ATT&CK version (e.g. v18.1 → v19.1 with
    the official crosswalk); rerun with the same checkpoint to resume."""
    logger = get_run_logger()
    env = Environment()
    chosen = load_workflows(default_workflows_path(env)).workflow(workflow)
    new_catalog = load_catalog(Path(catalog))
    target = index or chosen.trigger.index_pattern
    path = Path(checkpoint) if checkpoint else default_checkpoint(chosen.name, f"retag-{new_catalog.version}")
    es = es_client()
    started = time.perf_counter()
    read, summary = run_retag(
        es, ElasticSink(es), target, Checkpoint.load(path), load_crosswalk(Path(crosswalk)), new_catalog,
        batch_size=batch_size,
    )  # fmt: skip
    logger.info("retag to ATT&CK %s: %d read, %d re-tagged, %d unchanged", new_catalog.version, read,
                summary.updated, summary.unchanged)  # fmt: skip
    return {
        "read": read,
        "retagged": summary.updated,
        "unchanged": summary.unchanged,
        "to_version": new_catalog.version,
        "seconds": round(time.perf_counter() - started, 3),
    }
