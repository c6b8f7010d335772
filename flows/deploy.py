"""Deployments and event triggers from workflows.yaml; `python -m flows.deploy` serves them.

For every enabled workflow: a deployment of `enrich_alerts` named after the workflow, triggered by
its ``trigger.event`` (one run per alert event; parameters templated from the event:
``refs = ["{{ event.resource.id }}"]``, the tenant from the payload).  With ``poller=True`` also a
`poll_alerts` deployment on an interval of ``trigger.poll_interval_seconds``.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--workflows workflows.yaml] [--limit 4]

`serve` always runs with a ``limit`` (Prefect's default is none: a burst would start hundreds of
~100 MB run processes) and polls for runs every ``--query-seconds`` (1 s; lower makes SQLite worse).

``--in-process``: the warm executor (`flows.executor`) instead of Prefect's runner.  The runs stay durable
(created by the trigger, queued in Prefect while no executor is up) but are executed in this long-lived
process, with the engines built before the first poll: no process per run (~3.5 s of imports) and no
engine build (~1.4 s).  It polls the deployments' scheduled runs every ``--query-seconds`` (default 0.5 s
here), claims each by proposing Pending, runs it in a thread, ``--limit`` at a time, heartbeats, sweeps
back the runs of executors that died, and honours cancellation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.enrich import enrich_alerts
from flows.executor import Executor, ExecutorSettings
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


def build_deployments(config: WorkflowsFile, *, poller: bool = False, triggers: bool = True) -> list[RunnerDeployment]:
    """A deployment of `enrich_alerts` per enabled workflow — with its event trigger (the durable path), or
    without (``triggers=False``: events go to the stream workers; the deployment serves batch runs)."""
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
                    triggers=[trigger_for(w)] if triggers else [],
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


async def ensure_work_pool(name: str) -> None:
    """Create the work pool (type ``process``, so Prefect's own ``prefect worker start`` can serve it too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


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
    executor: ExecutorSettings | None = None,
) -> None:
    if not in_process:
        from prefect import serve

        serve(*deployments, limit=limit, query_seconds=query_seconds or 1.0)
        return
    for workflow in {d.parameters.get("workflow") for d in deployments}:
        RUNTIMES.get(workflow)  # the warm part: build each engine before the first run
    ids = apply_deployments(deployments)
    flows = {deployment_id: FLOWS[str(d.flow_name)] for d, deployment_id in zip(deployments, ids, strict=True)}
    settings = executor or ExecutorSettings()
    settings = replace(settings, limit=limit, poll_seconds=query_seconds or settings.poll_seconds)

    async def run() -> None:
        from prefect.settings import PREFECT_API_URL

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"{len(flows)} deployment(s) being served in-process", flush=True)
        stats = await Executor(flows, settings, str(PREFECT_API_URL.value())).run(stop)
        log.info("executor stopped: %s", stats)

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=4, help="concurrent flow runs at most")
    parser.add_argument(
        "--query-seconds", type=float, default=None, help="how often to look for runs (1 s; --in-process: 0.5 s)"
    )
    parser.add_argument("--poller", action="store_true", help="also serve the scheduled ES poller")
    parser.add_argument("--in-process", action="store_true", help="run the flow runs here, on warm engines")
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0, help="--in-process: heartbeat period")
    parser.add_argument("--sweep-seconds", type=float, default=30.0, help="--in-process: look for dead executors' runs")
    parser.add_argument(
        "--stale-seconds", type=float, default=45.0, help="--in-process: a run with no heartbeat this long is swept"
    )
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
        executor=ExecutorSettings(
            heartbeat_seconds=args.heartbeat_seconds, sweep_seconds=args.sweep_seconds, stale_seconds=args.stale_seconds
        ),
    )


if __name__ == "__main__":
    main()
