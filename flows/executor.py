"""The warm executor: the durable path's flow runs, executed in one long-lived process.

The runs stay durable — created by the deployment's event trigger and queued in Prefect while no
executor is up — but run here, on engines built once, instead of a process per run. The executor:

- **claims** each scheduled run of its deployments by proposing Pending (the server rejects the
  proposal when another executor took it) and runs it in a thread, ``limit`` at a time; a run that
  ends frees its slot at once (the next poll starts then, not ``poll_seconds`` later);
- **heartbeats**: every ``heartbeat_seconds`` it posts an ``attackmap.executor.heartbeat`` event
  naming each flow run it holds (claimed or running) as a related resource. That one event stands for
  Prefect's own per-run heartbeat, which is switched off for the runs executed here: its thread sleeps
  in whole seconds and the engine joins it at the end of every run, ~1 s a run (measured: an empty
  deployment run 1.32 s in the engine with it, 0.32 s without);
- **sweeps**: every ``sweep_seconds`` it looks for runs of its deployments that are Pending, Running
  or Cancelling for longer than ``stale_seconds`` and that no executor named in a heartbeat within
  that time — their executor died (killed, out of memory, its machine gone) — and sets them back to
  Scheduled (a Cancelling one to Cancelled), so they run again; enrichment is idempotent, so the
  alerts a dead run wrote already are left alone. It sweeps only after it has reached the server for
  ``stale_seconds`` without a break, so an outage of the server is not mistaken for dead executors;
- **honours cancellation**: a run of its own that turns Cancelling stops at the next batch boundary
  (`flows.cancellation`) and ends Cancelled, keeping what it wrote;
- **survives the server restarting**: polls, claims and heartbeats that fail are retried at the next
  turn; queued runs are kept by the server and taken when it answers again;
- **serves a work pool** when given one: every deployment applied to the pool (``attackmap workflows
  deploy --work-pool``), those added later too, is looked up at each heartbeat; the executor also
  heartbeats as a worker of the pool, so Prefect lists it. Any number of executors, on any number of
  machines, share a pool: each run is claimed by one.

This module is the one place that uses Prefect's engine and client internals for executing runs
(``run_flow``, ``propose_state``): a Prefect upgrade is checked against it and its tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect import Flow

from flows.cancellation import CANCEL_REQUESTS

log = logging.getLogger("attackmap.executor")

HEARTBEAT_EVENT = "attackmap.executor.heartbeat"
FLOW_RUN_PREFIX = "prefect.flow-run."


@dataclass(frozen=True)
class ExecutorSettings:
    limit: int = 4
    poll_seconds: float = 0.5
    heartbeat_seconds: float = 10.0
    sweep_seconds: float = 30.0
    # A held run no heartbeat names for this long belongs to a dead executor (3 heartbeats missed).
    stale_seconds: float = 45.0


@dataclass
class ExecutorStats:
    started: int = 0
    swept: int = 0
    cancelled: int = 0
    heartbeats: int = 0
    swept_ids: list[str] = field(default_factory=list)


class Executor:
    """Runs the scheduled flow runs of ``flows`` (deployment id → flow) until ``stop`` is set."""

    def __init__(
        self,
        flows: Mapping[Any, Flow[..., Any]],
        settings: ExecutorSettings,
        api_url: str,
        *,
        work_pool: str | None = None,
        pool_flows: Mapping[str, Flow[..., Any]] | None = None,
    ) -> None:
        self.flows = dict(flows)
        # With a work pool: the flows (by name) its deployments may run.
        self.work_pool = work_pool
        self.pool_flows = dict(pool_flows or {})
        self.settings = settings
        self.api_url = api_url.rstrip("/")
        self.id = uuid.uuid4().hex
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.held: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.stats = ExecutorStats()
        self._reachable_since: float | None = None
        self._slot_freed = asyncio.Event()  # set when a held run ends: poll again without waiting

    # ------------------------------------------------------------------ running

    async def _execute(self, run: Any) -> None:
        try:
            await asyncio.to_thread(_run_flow_without_heartbeat, self.flows[run.deployment_id], run)
        except Exception:  # the engine has recorded the run's failure; keep serving
            log.exception("flow run %s failed", run.id)
        finally:
            CANCEL_REQUESTS.withdraw(run.id)

    async def _claim_and_start(self, client: Any) -> None:
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state

        free = self.settings.limit - len(self.held)
        if free <= 0 or not self.flows:
            return
        runs = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self.flows), scheduled_before=datetime.now(UTC), limit=free
        )
        for run in runs:
            try:
                state = await propose_state(
                    client, Pending(message=f"claimed by attackmap executor {self.id}"), flow_run_id=run.id
                )
            except Abort:  # another executor claimed it
                continue
            except Exception as exc:  # unclaimed: retried at the next poll
                log.warning("claiming flow run %s failed: %s", run.id, exc)
                continue
            if not state.is_pending():
                continue
            run.state = state
            task = asyncio.create_task(self._execute(run), name=f"flow-run-{run.id}")
            self.held[run.id] = task
            task.add_done_callback(self._released(run.id))
            self.stats.started += 1

    def _released(self, run_id: uuid.UUID) -> Any:
        def release(_: asyncio.Task[None]) -> None:
            self.held.pop(run_id, None)
            self._slot_freed.set()

        return release

    async def _honour_cancellations(self, client: Any) -> None:
        """Ask the runs of ours that were cancelled to stop at their next batch boundary."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        if not self.held:
            return
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(self.held))))
        for run in runs:
            if run.state is not None and (run.state.is_cancelling() or run.state.is_cancelled()):
                if not CANCEL_REQUESTS.requested(run.id):
                    log.warning("flow run %s cancelled: stopping it at the next batch", run.id)
                    self.stats.cancelled += 1
                CANCEL_REQUESTS.request(run.id)

    async def _join_pool(self, client: Any) -> None:
        """Serve every deployment on the work pool whose flow this process has; heartbeat as its worker."""
        from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

        assert self.work_pool is not None
        found = await client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.work_pool]))
        )
        for deployment in found:
            if deployment.id not in self.flows:
                name = (await client.read_flow(deployment.flow_id)).name
                if (flow := self.pool_flows.get(name)) is not None:
                    self.flows[deployment.id] = flow
        await client.send_worker_heartbeat(work_pool_name=self.work_pool, worker_name=self.name)

    # ------------------------------------------------------------------ heartbeat and sweep

    async def heartbeat(self, http: httpx.AsyncClient) -> None:
        """One heartbeat event naming every run this executor holds."""
        event = {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": HEARTBEAT_EVENT,
            "resource": {"prefect.resource.id": f"attackmap.executor.{self.id}", "prefect.resource.name": self.name},
            "related": [
                {"prefect.resource.id": f"{FLOW_RUN_PREFIX}{run_id}", "prefect.resource.role": "flow-run"}
                for run_id in self.held
            ],
            "payload": {"runs": len(self.held), "limit": self.settings.limit},
        }
        resp = await http.post("/events", json=[event])
        resp.raise_for_status()
        self.stats.heartbeats += 1

    async def _runs_with_heartbeat(self, http: httpx.AsyncClient, since: datetime) -> set[str]:
        """Flow run ids some executor named in a heartbeat since ``since``."""
        body = {
            "filter": {
                "event": {"name": [HEARTBEAT_EVENT]},
                "occurred": {"since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
            },
            "limit": 50,
        }
        resp = await http.post("/events/filter", json=body)
        resp.raise_for_status()
        page = resp.json()
        alive: set[str] = set()
        while True:
            for event in page.get("events", []):
                for related in event.get("related", []):
                    rid = related.get("prefect.resource.id", "")
                    if rid.startswith(FLOW_RUN_PREFIX):
                        alive.add(rid.removeprefix(FLOW_RUN_PREFIX))
            if not page.get("next_page"):
                return alive
            resp = await http.get(page["next_page"])
            resp.raise_for_status()
            page = resp.json()

    async def sweep(self, client: Any, http: httpx.AsyncClient) -> int:
        """Set the runs of dead executors back to Scheduled (Cancelling ones to Cancelled); how many."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Cancelled, Scheduled

        stale = self.settings.stale_seconds
        if self._reachable_since is None or time.monotonic() - self._reachable_since < stale:
            return 0  # live executors may not have had a chance to heartbeat since an outage
        held = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(self.flows)),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])
                ),
            )
        )
        now = datetime.now(UTC)
        suspects = [
            run
            for run in held
            if run.id not in self.held and run.state is not None and (now - run.state.timestamp).total_seconds() > stale
        ]
        if not suspects:
            return 0
        alive = await self._runs_with_heartbeat(http, now - timedelta(seconds=stale))
        swept = 0
        for run in suspects:
            if str(run.id) in alive:
                continue
            assert run.state is not None
            new: Any
            if run.state.is_cancelling():
                new = Cancelled(message="its executor stopped heartbeating while it was being cancelled")
            else:
                new = Scheduled(
                    scheduled_time=now, message=f"swept back: its executor stopped heartbeating ({run.state.name})"
                )
            await client.set_flow_run_state(run.id, new, force=True)
            log.warning("flow run %s (%s): no heartbeat for %.0f s: %s", run.id, run.state.name, stale, new.name)
            self.stats.swept_ids.append(str(run.id))
            swept += 1
        self.stats.swept += swept
        return swept

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> ExecutorStats:
        from prefect.client.orchestration import get_client

        next_heartbeat = next_sweep = 0.0
        async with get_client() as client, httpx.AsyncClient(base_url=self.api_url, timeout=10) as http:
            while not stop.is_set():
                now = time.monotonic()
                try:
                    if self.work_pool is not None and now >= next_heartbeat:
                        await self._join_pool(client)
                    await self._claim_and_start(client)
                    await self._honour_cancellations(client)
                    if now >= next_heartbeat:
                        await self.heartbeat(http)
                        next_heartbeat = now + self.settings.heartbeat_seconds
                    if self._reachable_since is None:
                        self._reachable_since = now
                    if now >= next_sweep:
                        await self.sweep(client, http)
                        next_sweep = now + self.settings.sweep_seconds
                except Exception as exc:  # the server is down or restarting: the runs wait for us there
                    if self._reachable_since is not None:
                        log.warning("the Prefect server is unreachable (will retry): %s", exc)
                    self._reachable_since = None
                await self._wait_for_turn(stop)
            if self.held:  # let the claimed runs finish
                await asyncio.gather(*self.held.values(), return_exceptions=True)
        return self.stats

    async def _wait_for_turn(self, stop: asyncio.Event) -> None:
        """Until the next poll: ``poll_seconds``, or less when ``stop`` is set or a held run ends."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._slot_freed.wait())]
        try:
            await asyncio.wait(waits, timeout=self.settings.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._slot_freed.clear()


def _run_flow_without_heartbeat(flow: Flow[..., Any], run: Any) -> Any:
    """Prefect's engine on ``run``, in this thread, without the engine's per-run heartbeat thread (the
    executor's heartbeat names the run instead); the setting is changed for this thread's context only."""
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return run_flow(flow, flow_run=run, return_type="state")
