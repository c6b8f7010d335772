"""Deployments and event triggers from workflows.yaml; `python -m flows.deploy` serves them.

For every enabled workflow: a deployment of `enrich_alerts` named after the workflow, triggered by
its ``trigger.event`` (one run per alert event; parameters templated from the event:
``refs = ["{{ event.resource.id }}"]``, the tenant from the payload).  With ``poller=True`` also a
`poll_alerts` deployment on an interval of ``trigger.poll_interval_seconds``.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--workflows workflows.yaml] [--limit 4]

`serve` always runs with a ``limit`` (Prefect's default is none: a burst would start hundreds of
~100 MB run processes) and polls for runs every ``--query-seconds`` (1 s; lower makes SQLite worse).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.enrich import enrich_alerts
from flows.poller import poll_alerts
from mitre.config import Environment, Workflow, WorkflowsFile, default_workflows_path, load_workflows
from mitre.webhook import RESOURCE_PREFIX

TAGS = ["attackmap"]


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
    """Create or update the deployments (and their triggers) on the Prefect server."""
    ids: list[Any] = []
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


def serve_deployments(deployments: Sequence[RunnerDeployment], *, limit: int = 4, query_seconds: float = 1.0) -> None:
    from prefect import serve

    serve(*deployments, limit=limit, query_seconds=query_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=4, help="concurrent flow runs at most")
    parser.add_argument("--query-seconds", type=float, default=1.0, help="how often the runner looks for runs")
    parser.add_argument("--poller", action="store_true", help="also serve the scheduled ES poller")
    args = parser.parse_args(argv)
    if args.workflows is not None:  # flow-run processes inherit it and load the same file
        os.environ["ATTACKMAP_WORKFLOWS"] = str(args.workflows.resolve())
    config = load_workflows(args.workflows or default_workflows_path(Environment()))
    serve_deployments(build_deployments(config, poller=args.poller), limit=args.limit, query_seconds=args.query_seconds)


if __name__ == "__main__":
    main()
