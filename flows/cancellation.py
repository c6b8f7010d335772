"""Cancellation of flow runs executed in this process (the warm executor, `flows.executor`).

Prefect's runner cancels a run by ending its process; a run executed in a thread of the executor
is asked instead: the executor records the request here when the server says the run is Cancelling,
and the enrichment checks it between batches (`mitre.service.run_pipeline`'s ``should_stop``), so a
cancelled run stops at a batch boundary with every batch it wrote complete.
"""

from __future__ import annotations

import threading
from uuid import UUID


class CancelRequests:
    """Flow run ids asked to stop; thread-safe (the executor's loop writes, run threads read)."""

    def __init__(self) -> None:
        self._ids: set[UUID] = set()
        self._lock = threading.Lock()

    def request(self, run_id: UUID) -> None:
        with self._lock:
            self._ids.add(run_id)

    def withdraw(self, run_id: UUID) -> None:
        with self._lock:
            self._ids.discard(run_id)

    def requested(self, run_id: UUID | str | None) -> bool:
        if run_id is None:
            return False
        with self._lock:
            return (run_id if isinstance(run_id, UUID) else UUID(str(run_id))) in self._ids


CANCEL_REQUESTS = CancelRequests()


def current_run_cancelled() -> bool:
    """Whether the flow run this code runs in (if any) was asked to stop."""
    from prefect.runtime import flow_run

    return CANCEL_REQUESTS.requested(flow_run.id)
