"""The process's runtimes, one per workflow, built on first use and kept warm.

A flow run, a task retry and the in-process executor all ask for the same workflow many times; its
engine (catalog, indicators, knowledge base) and ES client are built once per process. This is the
one process-level object of the flows; tests and benchmarks install their own runtime in it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mitre.service import Runtime, build_runtime


class Runtimes:
    """Workflow name (None: the default workflow) → Runtime, built by `build` when first asked for."""

    def __init__(self, build: Callable[[str | None], Runtime] = build_runtime) -> None:
        self._build = build
        self._by_workflow: dict[str | None, Runtime] = {}
        self._lock = threading.Lock()

    def get(self, workflow: str | None = None) -> Runtime:
        with self._lock:
            found = self._by_workflow.get(workflow)
            if found is None:
                found = self._by_workflow[workflow] = self._build(workflow)
                # The default workflow is also asked for by name (a deployment's parameters): one engine.
                self._by_workflow.setdefault(found.workflow.name, found)
            return found

    def install(self, runtime: Runtime, workflow: str | None = None) -> None:
        """Use ``runtime`` for ``workflow`` (None: the default workflow) and for its own name."""
        with self._lock:
            self._by_workflow[workflow] = runtime
            self._by_workflow.setdefault(runtime.workflow.name, runtime)

    def clear(self) -> None:
        """Forget every runtime, after giving their exports a few seconds to deliver what is spooled
        (what is left stays in the spool for the next process)."""
        with self._lock:
            for runtime in {id(r): r for r in self._by_workflow.values()}.values():
                if runtime.exports is not None:
                    runtime.exports.close(timeout=5.0)
            self._by_workflow.clear()


RUNTIMES = Runtimes()
