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

What it does not do: survive its own crash mid-batch beyond ``--lookback-seconds`` (the reconcile
starts from there). Run the durable path (deployment + trigger, `flows/deploy.py`) or the poller
alongside when every alert must be enriched even across long outages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from prefect import flow

from flows.enrich import enrich_batch, get_runtime
from mitre.webhook import RESOURCE_PREFIX, SeenWithin

log = logging.getLogger("attackmap.worker")


@dataclass
class WorkerStats:
    events: int = 0
    duplicates: int = 0
    reconciled: int = 0
    batches: int = 0
    alerts: int = 0
    written: int = 0
    failed: int = 0
    batch_sizes: list[int] = field(default_factory=list)


OnBatch = Callable[[list[str], dict[str, Any]], None]


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
) -> WorkerStats:
    """Subscribe, batch, enrich, until ``stop`` is set (or the stream ends)."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    runtime = await asyncio.to_thread(get_runtime, workflow)  # build the engine before the first event
    event_name = runtime.workflow.trigger.event
    stop = stop or asyncio.Event()
    stats = WorkerStats()
    seen = SeenWithin(window_seconds=max(600.0, 4 * lookback_seconds))
    queue: asyncio.Queue[tuple[str, float, float]] = asyncio.Queue()  # (resource id, occurred, received)
    now = datetime.now(UTC)
    flt = EventFilter(
        event=EventNameFilter(name=[event_name]),
        # The server applies `until` to the live stream too: leave it open.
        occurred=EventOccurredFilter(since=now - timedelta(seconds=lookback_seconds), until=now + timedelta(days=3650)),
    )

    async def read() -> None:
        async with get_events_subscriber(filter=flt, reconnect_on_clean_close=True) as subscriber:
            if ready is not None:
                ready.set()
            async for event in subscriber:
                stats.events += 1
                key = str(event.id)
                if seen.seen(key, time.monotonic()):
                    stats.duplicates += 1
                    continue
                seen.add(key, time.monotonic())
                rid = event.resource.id
                if not rid.startswith(RESOURCE_PREFIX):
                    continue
                queue.put_nowait((rid, event.occurred.timestamp(), time.time()))

    def record(items: list[tuple[str, float, float]], started: float, result: dict[str, Any]) -> None:
        stats.batches += 1
        stats.alerts += len(items)
        stats.batch_sizes.append(len(items))
        stats.written += int(result.get("written", 0))
        stats.failed += len(result.get("failed", []))
        if timings is not None:
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
            timings.write(json.dumps(line) + "\n")
            timings.flush()

    @flow(name="attackmap-worker", validate_parameters=False, log_prints=False)
    async def session(workflow: str | None = None) -> dict[str, int]:
        """One worker session: batches as task runs, until rotation (a bounded run record)."""
        batches = 0
        deadline = time.monotonic() + max_run_seconds
        while batches < max_batches_per_run:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                items = [await asyncio.wait_for(queue.get(), timeout=remaining)]
            except TimeoutError:
                break
            while not queue.empty() and len(items) < max_batch:
                items.append(queue.get_nowait())
            refs = [rid for rid, _, _ in items]
            started = time.time()
            try:
                result = await enrich_batch(refs, workflow)
            except Exception as exc:  # the task retried already; keep serving
                log.error("batch of %d failed: %s", len(refs), exc)
                stats.failed += len(refs)
                continue
            batches += 1
            record(items, started, result)
            if on_batch is not None:
                on_batch(refs, result)
        return {"batches": batches}

    async def drain() -> None:
        while True:
            await session(workflow)

    async def reconcile() -> None:
        """Catch up from Prefect's event store: what the live stream dropped (a full backlog) or missed."""
        import httpx
        from prefect.settings import PREFECT_API_URL

        api = str(PREFECT_API_URL.value()).rstrip("/")
        watermark = now - timedelta(seconds=lookback_seconds)
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                await asyncio.sleep(reconcile_seconds)
                since = watermark - timedelta(seconds=reconcile_overlap_seconds)
                body = {
                    "filter": {
                        "event": {"name": [event_name]},
                        "occurred": {
                            "since": since.isoformat(),
                            "until": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                        },
                        "order": "ASC",
                    },
                    "limit": 50,
                }
                try:
                    resp = await client.post(f"{api}/events/filter", json=body)
                    resp.raise_for_status()
                    page = resp.json()
                    while True:
                        for raw in page.get("events", []):
                            occurred = datetime.fromisoformat(raw["occurred"].replace("Z", "+00:00"))
                            watermark = max(watermark, occurred)
                            key = str(raw["id"])
                            if seen.seen(key, time.monotonic()):
                                continue
                            seen.add(key, time.monotonic())
                            rid = raw["resource"].get("prefect.resource.id", "")
                            if rid.startswith(RESOURCE_PREFIX):
                                stats.reconciled += 1
                                queue.put_nowait((rid, occurred.timestamp(), time.time()))
                        if not page.get("next_page"):
                            break
                        resp = await client.get(page["next_page"])
                        resp.raise_for_status()
                        page = resp.json()
                except httpx.HTTPError as exc:
                    log.warning("reconcile from the event store failed (will retry): %s", exc)

    reader = asyncio.create_task(read(), name="attackmap-worker-read")
    reconciler = asyncio.create_task(reconcile(), name="attackmap-worker-reconcile") if reconcile_seconds > 0 else None
    drainer = asyncio.create_task(drain(), name="attackmap-worker-drain")
    stopper = asyncio.create_task(stop.wait(), name="attackmap-worker-stop")
    tasks = {reader, drainer, stopper} | ({reconciler} if reconciler is not None else set())
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
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=None)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--lookback-seconds", type=float, default=60.0)
    parser.add_argument(
        "--reconcile-seconds", type=float, default=5.0, help="catch up from the event store this often (0: never)"
    )
    parser.add_argument("--timings", default=None, help="append one JSON line of timings per batch to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready = asyncio.Event()

        async def announce() -> None:
            await ready.wait()
            print("attackmap worker: subscribed", flush=True)

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
