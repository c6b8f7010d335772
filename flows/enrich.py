"""`enrich_alerts`: a batch of alert refs (or alert dicts) → read from ES → decide → map → write back.

The work is plain functions (`fetch_alerts`, `enrich_sources`, `process_refs`) over the engine in
`mitre/` and the ES source/sink; the flows only add retries, logging and run records around them:

- `enrich_alerts` (sync): the durable path; deployed with an event trigger by `flows/deploy.py`;
- `enrich_alerts_now` (async): the low-latency path, run in-process by `flows/worker.py`.

Each process keeps one engine and one ES client per workflow (`get_runtime`), built from the environment:
``ATTACKMAP_WORKFLOWS`` (or ./workflows.yaml), ``ATTACKMAP_CATALOG``, ``ATTACKMAP_CACHE_DIR`` and
``ATTACKMAP_ES_URL`` (default http://127.0.0.1:9200).  Tests and benchmarks install their own with
`set_runtime`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mitre.config import Environment, Workflow, default_workflows_path, load_workflows
from mitre.io.elastic import AlertUpdate, ElasticSink, SinkSummary, SourceAlert
from mitre.io.exports.registry import Exports, open_exports
from mitre.models import OutcomeStatus
from mitre.pipeline import Engine, EngineOptions, RawAlert, RunSummary, build_engine
from mitre.webhook import AlertRef, parse_ref

DEFAULT_ES_URL = "http://127.0.0.1:9200"


# --------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    """What a process needs to enrich: the engine, an ES client and the sink over it, and the
    workflow's exports (`outputs.exports`: HEC, TAXII, Elasticsearch, …), delivered in the background."""

    engine: Engine
    es: Any
    sink: ElasticSink
    write_back: bool
    exports: Exports | None = None

    @property
    def workflow(self) -> Workflow:
        return self.engine.workflow


_runtimes: dict[str | None, Runtime] = {}
_lock = threading.Lock()


def es_client(url: str | None = None) -> Any:
    from elasticsearch import Elasticsearch

    return Elasticsearch(url or os.environ.get("ATTACKMAP_ES_URL") or DEFAULT_ES_URL, request_timeout=60)


def make_runtime(engine: Engine, es: Any, *, write_back: bool | None = None, batch_size: int | None = None) -> Runtime:
    workflow = engine.workflow
    outputs = workflow.outputs
    return Runtime(
        engine=engine,
        es=es,
        sink=ElasticSink(es, batch_size=batch_size or max(workflow.trigger.batch_size, 500)),
        write_back=outputs.elasticsearch_write_back if write_back is None else write_back,
        exports=open_exports(outputs.exports, outputs.delivery, engine.catalog, Environment().home),
    )


def export_enriched(runtime: Runtime, alerts: Iterable[Mapping[str, Any]]) -> None:
    """Hand enriched alerts to the workflow's exports: a spool append, never a wait on a receiver."""
    if runtime.exports is not None:
        runtime.exports.offer_alerts(alerts)


def set_runtime(runtime: Runtime, workflow: str | None = None) -> None:
    """Install the runtime used for ``workflow`` (None: the default workflow) in this process."""
    with _lock:
        _runtimes[workflow] = runtime
        _runtimes.setdefault(runtime.workflow.name, runtime)


def get_runtime(workflow: str | None = None) -> Runtime:
    with _lock:
        found = _runtimes.get(workflow)
        if found is not None:
            return found
        env = Environment()
        config = load_workflows(default_workflows_path(env))
        engine = build_engine(config, env, EngineOptions(workflow=workflow))
        runtime = make_runtime(engine, es_client())
        _runtimes[workflow] = runtime
        return runtime


def clear_runtimes() -> None:
    with _lock:
        for runtime in {id(r): r for r in _runtimes.values()}.values():
            if runtime.exports is not None:
                runtime.exports.close(timeout=5.0)
        _runtimes.clear()


# --------------------------------------------------------------------------- plain functions


@dataclass
class BatchResult:
    """What one batch did; `as_dict()` is the flows' return value."""

    requested: int = 0
    missing: list[str] = field(default_factory=list)
    summary: RunSummary = field(default_factory=RunSummary)
    sink: SinkSummary = field(default_factory=SinkSummary)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: BatchResult) -> None:
        self.requested += other.requested
        self.missing.extend(other.missing)
        for outcome_key in ("enriched", "cache_hits", "cache_misses"):
            setattr(self.summary, outcome_key, getattr(self.summary, outcome_key) + getattr(other.summary, outcome_key))
        for counter in ("skipped", "dead_letter", "decisions", "tactics", "techniques"):
            getattr(self.summary, counter).update(getattr(other.summary, counter))
        self.sink = self.sink.merge(other.sink)
        self.alerts.extend(other.alerts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "missing": self.missing,
            "enriched": self.summary.enriched,
            "skipped": dict(self.summary.skipped),
            "dead_letter": dict(self.summary.dead_letter),
            "cache": {"hits": self.summary.cache_hits, "misses": self.summary.cache_misses},
            "written": self.sink.updated,
            "unchanged": self.sink.unchanged,
            "conflicts_retried": self.sink.conflicts_retried,
            "failed": [list(item) for item in self.sink.failed],
        }


def fetch_alerts(es: Any, refs: Sequence[AlertRef]) -> tuple[list[SourceAlert], list[str]]:
    """Read the referenced alerts (realtime mget, with seq_no/primary_term); also the ids not found."""
    if not refs:
        return [], []
    resp = es.mget(docs=[{"_index": r.index, "_id": r.id} for r in refs], realtime=True)
    found: list[SourceAlert] = []
    missing: list[str] = []
    for ref, doc in zip(refs, resp["docs"], strict=True):
        if "error" in doc or not doc.get("found"):
            missing.append(ref.resource_id)
            continue
        found.append(
            SourceAlert(
                doc_id=doc["_id"],
                index=doc["_index"],
                seq_no=doc["_seq_no"],
                primary_term=doc["_primary_term"],
                source=doc.get("_source") or {},
            )
        )
    return found, missing


def map_sources(engine: Engine, alerts: Sequence[SourceAlert]) -> tuple[list[AlertUpdate], RunSummary]:
    """Run the engine over the alerts; the updates to write for those it enriched."""
    outcomes = engine.process_batch([RawAlert(line=None, alert=a.source) for a in alerts])
    summary = RunSummary()
    updates: list[AlertUpdate] = []
    for alert, outcome in zip(alerts, outcomes, strict=True):
        summary.add(outcome)
        if outcome.status is OutcomeStatus.ENRICHED and outcome.alert is not None:
            updates.append(AlertUpdate(alert.index, alert.doc_id, alert.seq_no, alert.primary_term, outcome.alert))
    return updates, summary


def enrich_sources(runtime: Runtime, alerts: Sequence[SourceAlert]) -> BatchResult:
    """Map and (when the workflow writes back) bulk-write a batch already read from ES."""
    updates, summary = map_sources(runtime.engine, alerts)
    export_enriched(runtime, (u.alert for u in updates))
    result = BatchResult(requested=len(alerts), summary=summary)
    if runtime.write_back:
        result.sink = runtime.sink.write(updates)
    return result


_DONE = object()


def run_pipeline(
    runtime: Runtime,
    jobs: Iterable[Sequence[SourceAlert] | Sequence[AlertRef]],
    *,
    on_batch: Callable[[list[SourceAlert], BatchResult], None] | None = None,
) -> BatchResult:
    """Batches through read → map → write with the ES I/O overlapped: while this thread maps batch N,
    a reader thread fetches batch N+1 (jobs of AlertRef are read with mget; SourceAlert lists pass through)
    and a writer thread bulk-writes batch N-1.  ``on_batch`` runs here, in order, once a batch is written
    (the place to save a checkpoint); an exception from it stops the pipeline."""
    total = BatchResult()
    ready: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def reader() -> None:
        try:
            for job in jobs:
                if stop.is_set():
                    return
                if job and isinstance(job[0], AlertRef):
                    alerts, missing = fetch_alerts(runtime.es, cast(Sequence[AlertRef], job))
                else:
                    alerts, missing = list(cast(Sequence[SourceAlert], job)), []
                put((alerts, missing, len(job)))
            put(_DONE)
        except BaseException as exc:
            put(exc)

    thread = threading.Thread(target=reader, name="attackmap-read", daemon=True)
    thread.start()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attackmap-write")
    pending: deque[tuple[Future[SinkSummary], list[SourceAlert], BatchResult]] = deque()

    def finish_one() -> None:
        future, alerts, step = pending.popleft()
        step.sink = future.result()
        total.merge(step)
        if on_batch is not None:
            on_batch(alerts, step)

    try:
        while True:
            item = ready.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            alerts, missing, n = item
            updates, summary = map_sources(runtime.engine, alerts)
            export_enriched(runtime, (u.alert for u in updates))
            step = BatchResult(requested=n, missing=list(missing), summary=summary)
            if runtime.write_back:
                future = writer.submit(runtime.sink.write, updates)
            else:
                future = Future()
                future.set_result(SinkSummary())
            pending.append((future, alerts, step))
            while len(pending) > 1:
                finish_one()
        while pending:
            finish_one()
    finally:
        stop.set()
        writer.shutdown(wait=True)
    return total


def unique_refs(refs: Sequence[str | Mapping[str, Any] | AlertRef], tenant: str | None = None) -> list[AlertRef]:
    parsed = [r if isinstance(r, AlertRef) else parse_ref(r, tenant) for r in refs]
    return list({(r.index, r.id): r for r in parsed}.values())


def process_refs(
    runtime: Runtime, refs: Sequence[str | Mapping[str, Any] | AlertRef], tenant: str | None = None
) -> BatchResult:
    """The whole low-latency step: read → map → write back, for one batch of references."""
    wanted = unique_refs(refs, tenant)
    alerts, missing = fetch_alerts(runtime.es, wanted)
    result = enrich_sources(runtime, alerts)
    result.requested = len(wanted)
    result.missing = missing
    return result


def split_inputs(
    refs: Sequence[str | Mapping[str, Any]] | None, alerts: Sequence[Mapping[str, Any]] | None
) -> tuple[list[str | Mapping[str, Any]], list[SourceAlert], list[dict[str, Any]]]:
    """(refs to read, located alerts with a write guard, bare alerts to enrich and return only).

    An alert dict with ``_index``/``_id``/``_seq_no``/``_primary_term``/``_source`` (an ES hit) is used
    as is; with only ``_index``/``_id`` it is re-read (a ref); without a location it is enriched and returned.
    """
    to_read: list[str | Mapping[str, Any]] = list(refs or [])
    located: list[SourceAlert] = []
    bare: list[dict[str, Any]] = []
    for alert in alerts or []:
        if {"_index", "_id", "_seq_no", "_primary_term"} <= alert.keys():
            located.append(
                SourceAlert(
                    doc_id=str(alert["_id"]),
                    index=str(alert["_index"]),
                    seq_no=int(alert["_seq_no"]),
                    primary_term=int(alert["_primary_term"]),
                    source=dict(alert.get("_source") or {k: v for k, v in alert.items() if not k.startswith("_")}),
                )
            )
        elif "_index" in alert and "_id" in alert:
            to_read.append({"index": alert["_index"], "id": alert["_id"]})
        else:
            bare.append(dict(alert))
    return to_read, located, bare


# --------------------------------------------------------------------------- flows


@task(name="enrich-chunks", retries=2, retry_delay_seconds=[1, 4], cache_policy=NO_CACHE)
def enrich_chunks(refs: list[Any], located: list[SourceAlert], tenant: str | None, workflow: str | None) -> BatchResult:
    """Read → map → write back in batches of ``trigger.batch_size``, pipelined (a retry is idempotent)."""
    runtime = get_runtime(workflow)
    size = runtime.workflow.trigger.batch_size
    wanted = unique_refs(refs, tenant)
    jobs: list[Sequence[SourceAlert] | Sequence[AlertRef]] = [
        located[i : i + size] for i in range(0, len(located), size)
    ]
    jobs += [wanted[i : i + size] for i in range(0, len(wanted), size)]
    return run_pipeline(runtime, jobs)


@flow(name="enrich-alerts", retries=1, retry_delay_seconds=5, validate_parameters=True)
def enrich_alerts(
    refs: list[str | dict[str, Any]] | None = None,
    alerts: list[dict[str, Any]] | None = None,
    workflow: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
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
        runtime = get_runtime(workflow)
        outcomes = runtime.engine.process_batch([RawAlert(line=None, alert=a) for a in bare])
        for outcome in outcomes:
            result.summary.add(outcome)
            if outcome.alert is not None:
                result.alerts.append(outcome.alert)
        export_enriched(runtime, (o.alert for o in outcomes if o.status is OutcomeStatus.ENRICHED and o.alert))
        result.requested += len(bare)
    out = result.as_dict()
    if result.alerts:
        out["alerts"] = result.alerts
    logger.info(
        "enrich-alerts: %d requested, %d enriched, %d written, %d unchanged, %d missing, %d failed",
        out["requested"], out["enriched"], out["written"], out["unchanged"], len(out["missing"]), len(out["failed"]),
    )  # fmt: skip
    if result.sink.failed:
        logger.warning("write-back failures: %s", result.sink.failed[:10])
    return out


@task(name="enrich-batch", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def enrich_batch(refs: list[str], workflow: str | None = None) -> dict[str, Any]:
    """One batch of references, read → map → write back (the worker's unit of work, as a task run)."""
    runtime = get_runtime(workflow)
    started = time.perf_counter()
    result = await asyncio.to_thread(process_refs, runtime, refs)
    out = result.as_dict()
    out["work_seconds"] = time.perf_counter() - started  # ES read + engine + bulk write
    return out


@flow(name="enrich-alerts-now", retries=2, retry_delay_seconds=1, validate_parameters=False, log_prints=False)
async def enrich_alerts_now(refs: list[str], workflow: str | None = None) -> dict[str, Any]:
    """The low-latency path (in-process, async): one batch of references, read → map → write back."""
    runtime = get_runtime(workflow)
    started = time.perf_counter()
    result = await asyncio.to_thread(process_refs, runtime, refs)
    out = result.as_dict()
    out["work_seconds"] = time.perf_counter() - started  # ES read + engine + bulk write; the rest is Prefect's
    return out
