"""Prefect orchestration around the engine in `mitre/` (which imports no Prefect).

- `flows.enrich`: `enrich_alerts` (durable, deployed with an event trigger) and the `enrich_batch`
  task (the low-latency path's unit of work), over `mitre.service`;
- `flows.runtimes`: the process's warm runtimes, one per workflow;
- `flows.poller`: poll ES since a checkpoint → one event per alert (or enrich directly);
- `flows.backfill`: historical alerts in batches, resumable;
- `flows.deploy`: deployments + DeploymentEventTrigger from workflows.yaml; `python -m flows.deploy` serves;
- `flows.worker`: a long-lived event-stream subscriber that drains bursts as batches.

Set PREFECT_API_URL before importing these modules: without it Prefect starts a throwaway server.
"""
