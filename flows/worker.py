"""The low-latency path: a long-lived process subscribed to Prefect's event stream.

It runs the async flow `enrich_alerts_now` in-process (no run process to start, no polling: ~0.1-0.2 s
from event to ES update) and drains bursts as batches: while one batch runs, newly arrived events
queue up, and the next batch takes all of them (up to ``max_batch``).  Events are de-duplicated by id
(a new subscription replays the last ~60 s, and the client may re-deliver after a reconnect); a replayed
alert that was enriched already is also left alone by the sink (same provenance hash: unchanged).

    PREFECT_API_URL=http://127.0.0.1:4200/api ATTACKMAP_ES_URL=http://127.0.0.1:9200 python -m flows.worker

What it does not do: survive its own crash mid-batch (events are not re-delivered beyond the replay
window). Run the durable path (deployment + trigger, `flows/deploy.py`) or the poller alongside when
every alert must be enriched even across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flows.enrich import enrich_alerts_now, get_runtime
from mitre.webhook import RESOURCE_PREFIX, SeenWithin

log = logging.getLogger("attackmap.worker")


@dataclass
class WorkerStats:
    events: int = 0
    duplicates: int = 0
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
) -> WorkerStats:
    """Subscribe, batch, enrich, until ``stop`` is set (or the stream ends)."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    runtime = await asyncio.to_thread(get_runtime, workflow)  # build the engine before the first event
    event_name = runtime.workflow.trigger.event
    stop = stop or asyncio.Event()
    stats = WorkerStats()
    seen = SeenWithin(window_seconds=max(600.0, 4 * lookback_seconds))
    queue: asyncio.Queue[str] = asyncio.Queue()
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
                if key in seen:
                    stats.duplicates += 1
                    continue
                seen.add(key, time.monotonic())
                rid = event.resource.id
                if not rid.startswith(RESOURCE_PREFIX):
                    continue
                queue.put_nowait(rid)

    async def drain() -> None:
        while True:
            first = await queue.get()
            refs = [first]
            while not queue.empty() and len(refs) < max_batch:
                refs.append(queue.get_nowait())
            try:
                result = await enrich_alerts_now(refs=refs, workflow=workflow)
            except Exception as exc:  # the flow retried already; keep serving
                log.error("batch of %d failed: %s", len(refs), exc)
                stats.failed += len(refs)
                continue
            stats.batches += 1
            stats.alerts += len(refs)
            stats.batch_sizes.append(len(refs))
            stats.written += int(result.get("written", 0))
            stats.failed += len(result.get("failed", []))
            if on_batch is not None:
                on_batch(refs, result)

    reader = asyncio.create_task(read(), name="attackmap-worker-read")
    drainer = asyncio.create_task(drain(), name="attackmap-worker-drain")
    stopper = asyncio.create_task(stop.wait(), name="attackmap-worker-stop")
    try:
        done, _ = await asyncio.wait({reader, drainer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in (reader, drainer, stopper):
            task.cancel()
        for task in (reader, drainer, stopper):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=None)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--lookback-seconds", type=float, default=60.0)
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
        stats = await run_worker(
            args.workflow, max_batch=args.max_batch, lookback_seconds=args.lookback_seconds, stop=stop, ready=ready
        )
        announcer.cancel()
        log.info("stopped: %s", stats)

    asyncio.run(run())


if __name__ == "__main__":
    main()
