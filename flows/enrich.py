"""`enrich_alerts`: a batch of alert refs (or alert dicts) → read from ES → decide → map → write back.

The work is `mitre.service` (plain functions over the engine and the ES source/sink); the flow and
tasks here only add retries, logging and run records around it:

- `enrich_alerts` (sync flow): the durable path, deployed with an event trigger by `flows/deploy.py`;
- `enrich_batch` (async task): the worker's unit of work on the low-latency path (`flows/worker.py`).

Each process keeps one runtime per workflow (`flows.runtimes.RUNTIMES`), built from the environment
(see `mitre.service.build_runtime`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State

from flows.cancellation import current_run_cancelled
from flows.runtimes import RUNTIMES
from mitre.io.elastic import SourceAlert
from mitre.service import BatchResult, enrich_bare, process_located_and_refs, process_refs, split_inputs


@task(name="enrich-chunks", retries=2, retry_delay_seconds=[1, 4], cache_policy=NO_CACHE)
def enrich_chunks(refs: list[Any], located: list[SourceAlert], tenant: str | None, workflow: str | None) -> BatchResult:
    """Read → map → write back in batches of ``trigger.batch_size``, pipelined (a retry is idempotent);
    a run cancelled while the warm executor runs it stops at a batch boundary."""
    return process_located_and_refs(RUNTIMES.get(workflow), refs, located, tenant, should_stop=current_run_cancelled)


@flow(name="enrich-alerts", retries=1, retry_delay_seconds=5, validate_parameters=True)
def enrich_alerts(
    refs: list[str | dict[str, Any]] | None = None,
    alerts: list[dict[str, Any]] | None = None,
    workflow: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any] | State[Any]:
    """Enrich a batch: alert references (``attackmap.alert/<index>/<id>`` or ``{"index", "id"}``) and/or
    alert dicts (ES hits are written back; bare alerts are returned enriched).

    Prefect refuses flow-run parameters over 512 KiB serialised: ~5,000 refs per run at most (alert dicts:
    far fewer); for more, use the `backfill` flow, which selects alerts by query."""
    logger = get_run_logger()
    to_read, located, bare = split_inputs(refs, alerts)
    result = BatchResult()
    if to_read or located:
        result = enrich_chunks(to_read, located, tenant or None, workflow)
    if bare:
        result.merge(enrich_bare(RUNTIMES.get(workflow), bare))
    out = result.as_dict()
    if result.alerts:
        out["alerts"] = result.alerts
    logger.info(
        "enrich-alerts: %d requested, %d enriched, %d written, %d unchanged, %d missing, %d failed",
        out["requested"], out["enriched"], out["written"], out["unchanged"], len(out["missing"]), len(out["failed"]),
    )  # fmt: skip
    if result.sink.failed:
        logger.warning("write-back failures: %s", result.sink.failed[:10])
    if result.dead_letters:
        logger.warning("dead-lettered alerts: %s", result.dead_letters[:10])
    if result.cancelled:
        return Cancelled(message=f"cancelled after {out['written']} alerts were written", data=out)
    return out


@task(name="enrich-batch", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def enrich_batch(refs: list[str], workflow: str | None = None) -> dict[str, Any]:
    """One batch of references, read → map → write back (the worker's unit of work, as a task run)."""
    runtime = RUNTIMES.get(workflow)
    started = time.perf_counter()
    result = await asyncio.to_thread(process_refs, runtime, refs)
    out = result.as_dict()
    out["work_seconds"] = time.perf_counter() - started  # ES read + engine + bulk write
    return out
