"""The low-latency path: a long-lived process subscribed to Prefect's event stream.

It runs an async flow in-process (`attackmap-worker`: no run process to start, no polling) and drains
bursts as batches, each batch an async task run (`enrich-batch`, with retries): while one batch runs,
newly arrived events queue up, and the next batch takes all of them (up to ``max_batch``).  A flow run
per batch would cost ~0.15-0.3 s of API round trips (create run, Pending, Running) before any work; a
task run inside a running flow costs ~5-10 ms (its states are sent as events, in the background).  The
session flow run is rotated every ``max_run_seconds`` / ``max_batches_per_run`` to keep run records
bounded.  Events are de-duplicated by id
(a new subscription replays the last ~60 s, and the client may re-deliver after a reconnect); a replayed
alert that was enriched already is also left alone by the sink (same provenance hash: unchanged).

    PREFECT_API_URL=http://127.0.0.1:4200/api ATTACKMAP_ES_URL=http://127.0.0.1:9200 python -m flows.worker

Prefect's server drops live-stream events for a subscriber whose backlog passes 256
(`prefect.server.events.stream.SUBSCRIPTION_BACKLOG`): a burst posted at once overflows it.  So the
worker also reconciles from the event store every ``reconcile_seconds`` (``POST /api/events/filter``
from a watermark, paged): events it has not seen are queued like live ones.  Dropped events are then
enriched a few seconds late instead of never.

Several workers on one event stream (``--claims redis``, on one machine or many): every subscriber
receives every event, so each event is claimed in Redis (``SET attackmap:event:<id> NX PX``, a lease of
``--claim-seconds``) before it is queued, and exactly one worker enriches it. ``--work-pool P`` makes the
same process a warm executor of Prefect work pool ``P`` too (`flows.executor`): the durable path's flow
runs and the batch runs of every deployment applied to ``P`` are claimed and run here.

A batch that fails (Elasticsearch or Prefect unreachable past the task's retries) is queued again
after 5, 10, 20… seconds, up to 6 attempts; an alert given up on is logged with the reason. Killed
mid-burst (SIGKILL) and restarted within ``--lookback-seconds``, it replays the events since then:
alerts already written are left alone (same provenance hash), the rest are enriched — each once.
What it does not do: survive a longer outage of its own (the reconcile starts from the lookback).
A claimed event stays claimed for its lease. Run the durable path (deployment + trigger,
`flows/deploy.py`) or the poller alongside when every alert must be enriched even then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from prefect import flow

from flows.enrich import enrich_batch
from flows.runtimes import RUNTIMES
from mitre.failures import describe
from mitre.io.events import RESOURCE_PREFIX, SeenWithin
from mitre.io.replay import Claims

log = logging.getLogger("attackmap.worker")


@dataclass
class WorkerStats:
    events: int = 0
    duplicates: int = 0
    claimed_elsewhere: int = 0
    reconciled: int = 0
    batches: int = 0
    alerts: int = 0
    written: int = 0
    failed: int = 0
    batch_sizes: list[int] = field(default_factory=list)


OnBatch = Callable[[list[str], dict[str, Any]], None]
Queued = tuple[str, float, float]  # (resource id, occurred, received)


@dataclass(frozen=True)
class WorkerSettings:
    max_batch: int = 500
    lookback_seconds: float = 60.0
    max_batches_per_run: int = 10_000
    max_run_seconds: float = 3600.0
    reconcile_seconds: float = 5.0
    reconcile_overlap_seconds: float = 20.0
    retry_seconds: float = 5.0  # first delay before a failed batch's alerts are queued again (then doubling)
    max_attempts: int = 6
    work_pool: str | None = None  # also run this Prefect work pool's flow runs
    pool_limit: int = 2  # the pool's runs at once
    stream: bool = True  # False: the work pool's runs only (events reach it through deployment triggers)


class EventWorker:
    """One subscription to the alert events of a workflow: read (live stream), reconcile (event store),
    drain (batches as task runs inside a rotating session flow run). `run` drives the three."""

    def __init__(
        self,
        workflow: str | None,
        event_name: str,
        settings: WorkerSettings,
        *,
        on_batch: OnBatch | None = None,
        timings: TextIO | None = None,
        claims: Claims | None = None,
        name: str = "attackmap-worker",
    ) -> None:
        self.workflow = workflow
        self.claims = claims
        self.name = name
        self.event_name = event_name
        self.settings = settings
        self.on_batch = on_batch
        self.timings = timings
        self.stats = WorkerStats()
        self.seen = SeenWithin(window_seconds=max(600.0, 4 * settings.lookback_seconds))
        self.queue: asyncio.Queue[Queued] = asyncio.Queue()
        self._attempts: dict[str, int] = {}  # resource id → failed batches so far
        self.started = datetime.now(UTC)
        # Each session is one flow run of this worker (its batches are task runs inside it).
        self.session = flow(name="attackmap-worker", validate_parameters=False, log_prints=False)(self._session)

    def _accept(self, event_id: str, resource_id: str, occurred: float) -> bool:
        """Queue an alert event unless its id was seen already or it names no alert."""
        now = time.monotonic()
        if self.seen.seen(event_id, now):
            return False
        self.seen.add(event_id, now)
        if not resource_id.startswith(RESOURCE_PREFIX):
            return False
        if self.claims is not None and not self._claim(event_id):
            self.stats.claimed_elsewhere += 1  # another worker on this stream has it
            return False
        self.queue.put_nowait((resource_id, occurred, time.time()))
        return True

    def _claim(self, event_id: str) -> bool:
        """Whether this worker takes the event. When the claims cannot be reached it takes it: two workers
        may then map the same alert, and the sink writes it once (same provenance hash, seq_no guard)."""
        assert self.claims is not None
        try:
            return self.claims.claim(event_id, time.time())
        except Exception as exc:
            log.warning("event claims unreachable, taking event %s: %s", event_id, describe(exc))
            return True

    async def read(self, ready: asyncio.Event | None) -> None:
        """The live event stream; a new subscription replays the last ``lookback_seconds``."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

        since = self.started - timedelta(seconds=self.settings.lookback_seconds)
        flt = EventFilter(
            event=EventNameFilter(name=[self.event_name]),
            # The server applies `until` to the live stream too: leave it open.
            occurred=EventOccurredFilter(since=since, until=self.started + timedelta(days=3650)),
        )
        async with get_events_subscriber(filter=flt, reconnect_on_clean_close=True) as subscriber:
            if ready is not None:
                ready.set()
            async for event in subscriber:
                self.stats.events += 1
                if self.seen.seen(str(event.id), time.monotonic()):
                    self.stats.duplicates += 1
                    continue
                self._accept(str(event.id), event.resource.id, event.occurred.timestamp())

    async def reconcile(self) -> None:
        """Catch up from Prefect's event store: what the live stream dropped (a full backlog) or missed."""
        import httpx
        from prefect.settings import PREFECT_API_URL

        api = str(PREFECT_API_URL.value()).rstrip("/")
        watermark = self.started - timedelta(seconds=self.settings.lookback_seconds)
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                await asyncio.sleep(self.settings.reconcile_seconds)
                try:
                    watermark = await self._reconcile_since(client, api, watermark)
                except httpx.HTTPError as exc:
                    log.warning("reconcile from the event store failed (will retry): %s", exc)

    async def _reconcile_since(self, client: Any, api: str, watermark: datetime) -> datetime:
        """Page through the stored events since ``watermark`` (less an overlap); the new watermark."""
        since = watermark - timedelta(seconds=self.settings.reconcile_overlap_seconds)
        body = {
            "filter": {
                "event": {"name": [self.event_name]},
                "occurred": {"since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
                "order": "ASC",
            },
            "limit": 50,
        }
        resp = await client.post(f"{api}/events/filter", json=body)
        resp.raise_for_status()
        page = resp.json()
        while True:
            for raw in page.get("events", []):
                occurred = datetime.fromisoformat(raw["occurred"].replace("Z", "+00:00"))
                watermark = max(watermark, occurred)
                rid = raw["resource"].get("prefect.resource.id", "")
                if self._accept(str(raw["id"]), rid, occurred.timestamp()):
                    self.stats.reconciled += 1
            if not page.get("next_page"):
                return watermark
            resp = await client.get(page["next_page"])
            resp.raise_for_status()
            page = resp.json()

    def _record(self, items: list[Queued], started: float, result: dict[str, Any]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.alerts += len(items)
        stats.batch_sizes.append(len(items))
        stats.written += int(result.get("written", 0))
        stats.failed += len(result.get("failed", []))
        log.info(
            "batch of %d: %d written, %d unchanged", len(items), result.get("written", 0), result.get("unchanged", 0)
        )
        if self.timings is None:
            return
        finished = time.time()
        line = {
            "n": len(items),
            "started": started,
            "finished": finished,
            "bus_seconds": [round(received - occurred, 4) for _, occurred, received in items],
            "queued_seconds": [round(started - received, 4) for _, _, received in items],
            "task_seconds": round(finished - started, 4),
            "work_seconds": round(float(result.get("work_seconds", 0.0)), 4),
            "written": result.get("written", 0),
            "unchanged": result.get("unchanged", 0),
            "missing": len(result.get("missing", [])),
            "reconciled": sum(1 for _, occurred, received in items if received - occurred > 2.0),
        }
        self.timings.write(json.dumps(line) + "\n")
        self.timings.flush()

    def _retry_later(self, items: list[Queued], exc: Exception) -> None:
        """A batch that failed (ES or Prefect unreachable past the task's retries) is queued again after
        a growing delay, so no alert is dropped; after ``max_attempts`` an alert is given up on, and the
        log records each one with the reason."""
        delay = self.settings.retry_seconds
        again: list[Queued] = []
        for item in items:
            attempts = self._attempts.get(item[0], 0) + 1
            if attempts >= self.settings.max_attempts:
                self._attempts.pop(item[0], None)
                self.stats.failed += 1
                log.error("gave up on %s after %d failed batches: %s", item[0], attempts, describe(exc))
                continue
            self._attempts[item[0]] = attempts
            delay = max(delay, self.settings.retry_seconds * 2 ** (attempts - 1))
            again.append(item)
        if again:
            log.warning("batch of %d failed (%s); queued again in %.0f s", len(items), describe(exc), delay)
            asyncio.get_running_loop().call_later(delay, self._requeue, again)

    def _requeue(self, items: list[Queued]) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def _next_batch(self, timeout: float) -> list[Queued] | None:
        """The queued events, up to ``max_batch``, waiting at most ``timeout`` for the first one."""
        try:
            items = [await asyncio.wait_for(self.queue.get(), timeout=timeout)]
        except TimeoutError:
            return None
        while not self.queue.empty() and len(items) < self.settings.max_batch:
            items.append(self.queue.get_nowait())
        return items

    async def _session(self, workflow: str | None = None) -> dict[str, int]:
        """One worker session: batches as task runs, until rotation (a bounded run record)."""
        batches = 0
        deadline = time.monotonic() + self.settings.max_run_seconds
        while batches < self.settings.max_batches_per_run:
            remaining = deadline - time.monotonic()
            items = await self._next_batch(remaining) if remaining > 0 else None
            if items is None:
                break
            refs = [rid for rid, _, _ in items]
            started = time.time()
            try:
                result = await enrich_batch(refs, workflow)
            except Exception as exc:  # the task retried already; keep serving, and try these again later
                self._retry_later(items, exc)
                continue
            for rid in refs:
                self._attempts.pop(rid, None)
            batches += 1
            self._record(items, started, result)
            if self.on_batch is not None:
                self.on_batch(refs, result)
        return {"batches": batches}

    async def drain(self) -> None:
        while True:
            await self.session(self.workflow)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> WorkerStats:
        """Read, reconcile and drain (and serve the work pool) until ``stop`` is set (or one of them fails)."""
        tasks: set[asyncio.Task[Any]] = set()
        if self.settings.stream:
            tasks.add(asyncio.create_task(self.read(ready), name="attackmap-worker-read"))
            tasks.add(asyncio.create_task(self.drain(), name="attackmap-worker-drain"))
            if self.settings.reconcile_seconds > 0:
                tasks.add(asyncio.create_task(self.reconcile(), name="attackmap-worker-reconcile"))
        elif ready is not None:
            ready.set()
        if self.settings.work_pool:
            from prefect.settings import PREFECT_API_URL

            from flows.deploy import FLOWS
            from flows.executor import Executor, ExecutorSettings

            executor = Executor(
                {},
                ExecutorSettings(limit=self.settings.pool_limit),
                str(PREFECT_API_URL.value()),
                work_pool=self.settings.work_pool,
                pool_flows=FLOWS,
            )
            tasks.add(asyncio.create_task(executor.run(stop), name="attackmap-worker-pool"))
        stopper = asyncio.create_task(stop.wait(), name="attackmap-worker-stop")
        tasks.add(stopper)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return self.stats


async def run_worker(
    workflow: str | None = None,
    *,
    max_batch: int = 500,
    lookback_seconds: float = 60.0,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    on_batch: OnBatch | None = None,
    timings: TextIO | None = None,
    max_batches_per_run: int = 10_000,
    max_run_seconds: float = 3600.0,
    reconcile_seconds: float = 5.0,
    reconcile_overlap_seconds: float = 20.0,
    claims: Claims | None = None,
    work_pool: str | None = None,
    pool_limit: int = 2,
    name: str = "attackmap-worker",
    stream: bool = True,
) -> WorkerStats:
    """Subscribe, batch, enrich, until ``stop`` is set (or the stream ends)."""
    runtime = await asyncio.to_thread(RUNTIMES.get, workflow)  # build the engine before the first event
    settings = WorkerSettings(
        max_batch=max_batch,
        lookback_seconds=lookback_seconds,
        max_batches_per_run=max_batches_per_run,
        max_run_seconds=max_run_seconds,
        reconcile_seconds=reconcile_seconds,
        reconcile_overlap_seconds=reconcile_overlap_seconds,
        work_pool=work_pool,
        pool_limit=pool_limit,
        stream=stream,
    )
    worker = EventWorker(
        workflow, runtime.workflow.trigger.event, settings, on_batch=on_batch, timings=timings, claims=claims, name=name
    )
    return await worker.run(stop or asyncio.Event(), ready)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=None)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--lookback-seconds", type=float, default=60.0)
    parser.add_argument(
        "--reconcile-seconds", type=float, default=5.0, help="catch up from the event store this often (0: never)"
    )
    parser.add_argument("--timings", default=None, help="append one JSON line of timings per batch to this file")
    parser.add_argument(
        "--claims", choices=["none", "redis"], default="none", help="redis: share the event stream with other workers"
    )
    parser.add_argument("--claim-seconds", type=float, default=900.0, help="how long a claimed event stays claimed")
    parser.add_argument("--work-pool", default=None, help="also run this Prefect work pool's flow runs, warm")
    parser.add_argument("--pool-limit", type=int, default=2, help="the work pool's flow runs at once")
    parser.add_argument(
        "--no-stream", dest="stream", action="store_false", help="with --work-pool: serve the pool only, not the stream"
    )
    parser.add_argument("--name", default=f"attackmap-worker-{socket.gethostname()}-{os.getpid()}")
    args = parser.parse_args(argv)
    if not args.stream and not args.work_pool:
        parser.error("--no-stream leaves nothing to do without --work-pool")
    claims = None
    if args.claims == "redis":
        from mitre.cache_redis import redis_client
        from mitre.config import Environment
        from mitre.io.replay import RedisClaims

        url = Environment().redis_url
        if not url:
            parser.error("--claims redis needs ATTACKMAP_REDIS_URL")
        claims = RedisClaims(redis_client(url), "event", args.claim_seconds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready = asyncio.Event()

        async def announce() -> None:
            await ready.wait()
            print("attackmap worker: subscribed" if args.stream else "attackmap worker: serving the pool", flush=True)

        announcer = asyncio.create_task(announce())
        with contextlib.ExitStack() as stack:
            timings = stack.enter_context(open(args.timings, "a")) if args.timings else None
            stats = await run_worker(
                args.workflow,
                max_batch=args.max_batch,
                lookback_seconds=args.lookback_seconds,
                stop=stop,
                ready=ready,
                timings=timings,
                reconcile_seconds=args.reconcile_seconds,
                claims=claims,
                work_pool=args.work_pool,
                pool_limit=args.pool_limit,
                name=args.name,
                stream=args.stream,
            )
        announcer.cancel()
        log.info("stopped: %s", stats)

    from prefect.exceptions import TerminationSignal

    try:
        asyncio.run(run())
    except (TerminationSignal, KeyboardInterrupt):  # Prefect's SIGTERM handler inside the session flow run
        log.info("stopped by signal")


if __name__ == "__main__":
    main()
