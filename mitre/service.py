"""The batch service the flows, the worker and the poller run: alerts in Elasticsearch → engine → write-back.

Plain functions over a `Runtime` (an engine, an ES client and the sink over it), no Prefect: the
flows in `flows/` only add retries, logging and run records around them, and tests call them as they
are. Reading, mapping and writing overlap in `run_pipeline`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from mitre.assemble import EngineOptions, build_engine
from mitre.chunks import chunked
from mitre.config import Environment, Workflow, default_workflows_path, load_workflows
from mitre.engine import Engine
from mitre.io.elastic import (
    AlertUpdate,
    ElasticSink,
    SinkSummary,
    SourceAlert,
    es_client,
    fetch_alerts,
    is_located,
    source_alert,
)
from mitre.io.events import AlertRef, parse_ref
from mitre.io.exports.registry import Exports, open_exports
from mitre.models import Outcome, OutcomeStatus, RawAlert, RunSummary

AlertRefLike = str | Mapping[str, Any] | AlertRef

log = logging.getLogger("attackmap.service")


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


def build_runtime(workflow: str | None = None, env: Environment | None = None) -> Runtime:
    """A runtime from the environment: ``ATTACKMAP_WORKFLOWS`` (or ./workflows.yaml), ``ATTACKMAP_CATALOG``,
    ``ATTACKMAP_CACHE_DIR``, ``ATTACKMAP_ES_URL`` (default http://127.0.0.1:9200)."""
    env = env or Environment()
    config = load_workflows(default_workflows_path(env))
    engine = build_engine(config, env, EngineOptions(workflow=workflow))
    return make_runtime(engine, es_client(env=env))


@dataclass
class BatchResult:
    """What one batch did; `as_dict()` is the flows' return value."""

    requested: int = 0
    missing: list[str] = field(default_factory=list)
    summary: RunSummary = field(default_factory=RunSummary)
    sink: SinkSummary = field(default_factory=SinkSummary)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    # One per alert the engine dead-lettered: where it is, why, and the error id of an internal error.
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False  # stopped at a batch boundary on request

    def merge(self, other: BatchResult) -> None:
        self.requested += other.requested
        self.missing.extend(other.missing)
        self.summary.merge(other.summary)
        self.sink = self.sink.merge(other.sink)
        self.alerts.extend(other.alerts)
        self.dead_letters.extend(other.dead_letters)
        self.cancelled = self.cancelled or other.cancelled

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "missing": self.missing,
            "enriched": self.summary.enriched,
            "no_technique": self.summary.no_technique,
            "skipped": dict(self.summary.skipped),
            "dead_letter": dict(self.summary.dead_letter),
            "cache": {"hits": self.summary.cache_hits, "misses": self.summary.cache_misses},
            "written": self.sink.updated,
            "unchanged": self.sink.unchanged,
            "conflicts_retried": self.sink.conflicts_retried,
            "failed": [list(item) for item in self.sink.failed],
            "dead_letters": self.dead_letters,
            "cancelled": self.cancelled,
        }


def dead_letter(outcome: Outcome, **where: Any) -> dict[str, Any]:
    """What a flow's result records of an alert the engine dead-lettered (the alert stays as it was)."""
    return {**where, "reason": outcome.reason, "error_id": outcome.error_id}


def map_sources(
    engine: Engine, alerts: Sequence[SourceAlert]
) -> tuple[list[AlertUpdate], RunSummary, list[dict[str, Any]]]:
    """Run the engine over the alerts: the updates to write for those it enriched, the counts, and
    the dead letters (an alert that fails is recorded with its reason; the batch goes on)."""
    outcomes = engine.process_batch([RawAlert(line=None, alert=a.source) for a in alerts])
    summary = RunSummary()
    updates: list[AlertUpdate] = []
    dead: list[dict[str, Any]] = []
    for alert, outcome in zip(alerts, outcomes, strict=True):
        summary.add(outcome)
        if outcome.status is OutcomeStatus.ENRICHED and outcome.alert is not None:
            updates.append(AlertUpdate(alert.index, alert.doc_id, alert.seq_no, alert.primary_term, outcome.alert))
        elif outcome.status is OutcomeStatus.DEAD_LETTER:
            dead.append(dead_letter(outcome, index=alert.index, id=alert.doc_id))
    if dead:
        log.warning("%d of %d alerts dead-lettered, e.g. %s", len(dead), len(alerts), dead[0])
    return updates, summary, dead


def enrich_sources(runtime: Runtime, alerts: Sequence[SourceAlert]) -> BatchResult:
    """Map and (when the workflow writes back) bulk-write a batch already read from ES."""
    updates, summary, dead = map_sources(runtime.engine, alerts)
    export_enriched(runtime, (u.alert for u in updates))
    result = BatchResult(requested=len(alerts), summary=summary, dead_letters=dead)
    if runtime.write_back:
        result.sink = runtime.sink.write(updates)
    return result


def enrich_bare(runtime: Runtime, alerts: Sequence[Mapping[str, Any]]) -> BatchResult:
    """Alerts with no place in ES: enriched and returned (in `alerts`), never written."""
    result = BatchResult(requested=len(alerts))
    outcomes = runtime.engine.process_batch([RawAlert(line=None, alert=dict(a)) for a in alerts])
    for position, outcome in enumerate(outcomes):
        result.summary.add(outcome)
        if outcome.alert is not None:
            result.alerts.append(outcome.alert)
        elif outcome.status is OutcomeStatus.DEAD_LETTER:
            result.dead_letters.append(dead_letter(outcome, position=position))
    export_enriched(runtime, (o.alert for o in outcomes if o.status is OutcomeStatus.ENRICHED and o.alert))
    return result


_DONE = object()


def run_pipeline(
    runtime: Runtime,
    jobs: Iterable[Sequence[SourceAlert] | Sequence[AlertRef]],
    *,
    on_batch: Callable[[list[SourceAlert], BatchResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """Batches through read → map → write with the ES I/O overlapped: while this thread maps batch N,
    a reader thread fetches batch N+1 (jobs of AlertRef are read with mget; SourceAlert lists pass through)
    and a writer thread bulk-writes batch N-1.  ``on_batch`` runs here, in order, once a batch is written
    (the place to save a checkpoint); an exception from it stops the pipeline.  When ``should_stop()``
    turns true (a cancelled run), no further batch is mapped; the batches in flight are written and the
    result says ``cancelled``."""
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
            if should_stop is not None and should_stop():
                total.cancelled = True
                break
            alerts, missing, n = item
            updates, summary, dead = map_sources(runtime.engine, alerts)
            export_enriched(runtime, (u.alert for u in updates))
            step = BatchResult(requested=n, missing=list(missing), summary=summary, dead_letters=dead)
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


def unique_refs(refs: Sequence[AlertRefLike], tenant: str | None = None) -> list[AlertRef]:
    parsed = [r if isinstance(r, AlertRef) else parse_ref(r, tenant) for r in refs]
    return list({(r.index, r.id): r for r in parsed}.values())


def process_refs(runtime: Runtime, refs: Sequence[AlertRefLike], tenant: str | None = None) -> BatchResult:
    """The whole low-latency step: read → map → write back, for one batch of references."""
    wanted = unique_refs(refs, tenant)
    alerts, missing = fetch_alerts(runtime.es, wanted)
    result = enrich_sources(runtime, alerts)
    result.requested = len(wanted)
    result.missing = missing
    return result


def process_located_and_refs(
    runtime: Runtime,
    refs: Sequence[AlertRefLike],
    located: Sequence[SourceAlert],
    tenant: str | None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """Read → map → write back in batches of ``trigger.batch_size``, pipelined (a retry is idempotent)."""
    size = runtime.workflow.trigger.batch_size
    jobs: list[Sequence[SourceAlert] | Sequence[AlertRef]] = [*chunked(located, size)]
    jobs += chunked(unique_refs(refs, tenant), size)
    return run_pipeline(runtime, jobs, should_stop=should_stop)


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
        if is_located(alert):
            # A hit without `_source` is a flat alert carrying its own location.
            source = alert.get("_source") or {k: v for k, v in alert.items() if not k.startswith("_")}
            located.append(source_alert({**alert, "_source": source}))
        elif "_index" in alert and "_id" in alert:
            to_read.append({"index": alert["_index"], "id": alert["_id"]})
        else:
            bare.append(dict(alert))
    return to_read, located, bare
