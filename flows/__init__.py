"""Prefect orchestration around the engine in `mitre/` (which imports no Prefect).

- `flows.enrich`: `enrich_alerts` (durable, deployed with an event trigger) and `enrich_alerts_now`
  (async, in-process, the low-latency path), over plain functions;
- `flows.poller`: poll ES since a checkpoint → one event per alert (or enrich directly);
- `flows.backfill`: historical alerts in batches, resumable;
- `flows.deploy`: deployments + DeploymentEventTrigger from workflows.yaml; `python -m flows.deploy` serves;
- `flows.worker`: a long-lived event-stream subscriber that drains bursts as batches.

Set PREFECT_API_URL before importing these modules: without it Prefect starts a throwaway server.
"""
