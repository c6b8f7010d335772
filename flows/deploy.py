"""Deployments and event triggers from workflows.yaml; `python -m flows.deploy` serves them.

For every enabled workflow: a deployment of `enrich_alerts` named after the workflow, triggered by
its ``trigger.event`` (one run per alert event; parameters templated from the event:
``refs = ["{{ event.resource.id }}"]``, the tenant from the payload).  With ``poller=True`` also a
`poll_alerts` deployment on an interval of ``trigger.poll_interval_seconds``.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--workflows workflows.yaml] [--limit 4]

`serve` always runs with a ``limit`` (Prefect's default is none: a burst would start hundreds of
~100 MB run processes) and polls for runs every ``--query-seconds`` (1 s; lower makes SQLite worse).

``--in-process``: the warm executor instead of Prefect's runner.  The runs stay durable (created by the
trigger, queued in Prefect while no executor is up) but are executed in this long-lived process, with the
engines built before the first poll: no process per run (~3.5 s of imports) and no engine build (~1.4 s).
It polls the deployments' scheduled runs every ``--query-seconds`` (default 0.5 s here), claims each by
proposing Pending (the server rejects the proposal when another executor took the run), then runs it in a
thread, ``--limit`` at a time.  A run claimed by an executor that dies before starting it stays Pending.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.enrich import enrich_alerts
from flows.poller import poll_alerts
from flows.runtimes import RUNTIMES
from mitre.config import Environment, Workflow, WorkflowsFile, default_workflows_path, load_workflows
from mitre.io.events import RESOURCE_PREFIX

TAGS = ["attackmap"]
FLOWS: dict[str, Flow[..., Any]] = {f.name: f for f in (enrich_alerts, poll_alerts)}

log = logging.getLogger("attackmap.executor")


def trigger_for(workflow: Workflow) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name=f"{workflow.name}: {workflow.trigger.event}",
        expect={workflow.trigger.event},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        parameters={
            "refs": ["{{ event.resource.id }}"],
            "tenant": "{{ event.payload.tenant }}",
            "workflow": workflow.name,
        },
    )


def build_deployments(config: WorkflowsFile, *, poller: bool = False) -> list[RunnerDeployment]:
    deployments: list[RunnerDeployment] = []
    for w in config.workflows:
        if not w.enabled:
            continue
        deployments.append(
            cast(
                RunnerDeployment,
                enrich_alerts.to_deployment(
                    name=w.name,
                    description=w.description or f"attackmap workflow {w.name}",
                    triggers=[trigger_for(w)],
                    parameters={"workflow": w.name},
                    tags=TAGS,
                ),
            )
        )
        if poller:
            deployments.append(
                cast(
                    RunnerDeployment,
                    poll_alerts.to_deployment(
                        name=f"{w.name}-poller",
                        description=f"poll {w.trigger.index_pattern} for {w.name}",
                        interval=timedelta(seconds=w.trigger.poll_interval_seconds),
                        parameters={"workflow": w.name, "mode": "emit"},
                        tags=TAGS,
                    ),
                )
            )
    return deployments


def apply_deployments(deployments: Sequence[RunnerDeployment], *, work_pool: str | None = None) -> list[Any]:
    """Create or update the deployments (and their triggers) on the Prefect server; a work pool that does not
    exist yet is created."""
    ids: list[Any] = []
    if work_pool:
        asyncio.run(ensure_work_pool(work_pool))
    for deployment in deployments:
        if work_pool:
            ids.append(deployment.apply(work_pool_name=work_pool))
        else:
            ids.append(deployment.apply())
    return ids


def remove_deployments(config: WorkflowsFile, *, poller: bool = True) -> list[str]:
    """Delete the workflows' deployments and their triggers' automations (deleting a deployment alone leaves
    its automations firing at a missing deployment: every event then fails an action with 404)."""
    from prefect.client.orchestration import get_client

    removed: list[str] = []
    with get_client(sync_client=True) as client:
        names = [f"{enrich_alerts.name}/{w.name}" for w in config.workflows]
        if poller:
            names += [f"{poll_alerts.name}/{w.name}-poller" for w in config.workflows]
        automations = client.read_automations()
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except Exception:  # not deployed
                continue
            for automation in automations:
                if any(getattr(a, "deployment_id", None) == deployment.id for a in automation.actions):
                    client.delete_automation(automation.id)
            client.delete_deployment(deployment.id)
            removed.append(name)
    return removed


def serve_deployments(
    deployments: Sequence[RunnerDeployment],
    *,
    limit: int = 4,
    query_seconds: float | None = None,
    in_process: bool = False,
) -> None:
    if not in_process:
        from prefect import serve

        serve(*deployments, limit=limit, query_seconds=query_seconds or 1.0)
        return
    for workflow in {d.parameters.get("workflow") for d in deployments}:
        RUNTIMES.get(workflow)  # the warm part: build each engine before the first run
    ids = apply_deployments(deployments)
    flows = {deployment_id: FLOWS[str(d.flow_name)] for d, deployment_id in zip(deployments, ids, strict=True)}

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"{len(flows)} deployment(s) being served in-process", flush=True)
        await execute_runs(flows, limit=limit, poll_seconds=query_seconds or 0.5, stop=stop)

    asyncio.run(run())


async def execute_runs(
    flows: Mapping[Any, Flow[..., Any]], *, limit: int = 4, poll_seconds: float = 0.5, stop: asyncio.Event
) -> None:
    """The warm executor's loop: claim the deployments' scheduled runs and run them here, until ``stop``."""

    async def scheduled(client: Any, free: int) -> list[tuple[Any, Flow[..., Any]]]:
        runs = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(flows), scheduled_before=datetime.now(UTC), limit=free
        )
        return [(run, flows[run.deployment_id]) for run in runs]

    await _claim_and_run(scheduled, limit=limit, poll_seconds=poll_seconds, stop=stop)


async def execute_pool_runs(
    work_pool: str, worker_name: str, *, limit: int = 4, poll_seconds: float = 0.5, stop: asyncio.Event
) -> None:
    """A warm worker on a work pool: every deployment applied to ``work_pool`` (``attackmap workflows deploy
    --work-pool``) has its scheduled runs claimed and run here, on this process's engines. Any number of
    these on any number of machines share the pool: a run is claimed by exactly one (Pending is proposed
    once). Heartbeats make the worker visible in Prefect (``prefect work-pool inspect``)."""
    names: dict[Any, str] = {}

    async def scheduled(client: Any, free: int) -> list[tuple[Any, Flow[..., Any]]]:
        await client.send_worker_heartbeat(work_pool_name=work_pool, worker_name=worker_name)
        found = await client.get_scheduled_flow_runs_for_work_pool(work_pool, scheduled_before=datetime.now(UTC))
        out = []
        for response in found[:free]:
            run = response.flow_run
            if run.flow_id not in names:
                names[run.flow_id] = (await client.read_flow(run.flow_id)).name
            if (flow_object := FLOWS.get(names[run.flow_id])) is not None:
                out.append((run, flow_object))
        return out

    await _claim_and_run(scheduled, limit=limit, poll_seconds=poll_seconds, stop=stop)


async def ensure_work_pool(name: str) -> None:
    """Create the work pool (type ``process``, so Prefect's own ``prefect worker start`` can serve it too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


async def _claim_and_run(scheduled: Any, *, limit: int, poll_seconds: float, stop: asyncio.Event) -> None:
    """Poll ``scheduled(client, free)`` for (run, flow) pairs, claim each by proposing Pending (the server
    refuses when another executor took it), run the claimed ones in threads, ``limit`` at a time."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Abort
    from prefect.flow_engine import run_flow
    from prefect.states import Pending
    from prefect.utilities.engine import propose_state

    running: set[asyncio.Task[Any]] = set()

    async def execute(run: Any, flow_object: Flow[..., Any]) -> None:
        try:
            await asyncio.to_thread(run_flow, flow_object, flow_run=run, return_type="state")
        except Exception:  # the engine has recorded the run's failure; keep serving
            log.exception("flow run %s failed", run.id)

    async with get_client() as client:
        while not stop.is_set():
            free = limit - len(running)
            if free > 0:
                try:
                    runs = await scheduled(client, free)
                except Exception as exc:  # the server is down or restarting: the runs wait for us there
                    log.warning("polling for flow runs failed (will retry): %s", exc)
                    runs = []
                for run, flow_object in runs:
                    try:
                        state = await propose_state(client, Pending(), flow_run_id=run.id)
                    except Abort:  # another executor claimed it
                        continue
                    except Exception as exc:  # unclaimed: retried at the next poll
                        log.warning("claiming flow run %s failed: %s", run.id, exc)
                        continue
                    if not state.is_pending():
                        continue
                    run.state = state
                    task = asyncio.create_task(execute(run, flow_object), name=f"flow-run-{run.id}")
                    running.add(task)
                    task.add_done_callback(running.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_seconds)
        if running:  # let the claimed runs finish
            await asyncio.gather(*running, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=4, help="concurrent flow runs at most")
    parser.add_argument(
        "--query-seconds", type=float, default=None, help="how often to look for runs (1 s; --in-process: 0.5 s)"
    )
    parser.add_argument("--poller", action="store_true", help="also serve the scheduled ES poller")
    parser.add_argument("--in-process", action="store_true", help="run the flow runs here, on warm engines")
    args = parser.parse_args(argv)
    if args.workflows is not None:  # flow-run processes inherit it and load the same file
        os.environ["ATTACKMAP_WORKFLOWS"] = str(args.workflows.resolve())
    config = load_workflows(args.workflows or default_workflows_path(Environment()))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_deployments(
        build_deployments(config, poller=args.poller),
        limit=args.limit,
        query_seconds=args.query_seconds,
        in_process=args.in_process,
    )


if __name__ == "__main__":
    main()
