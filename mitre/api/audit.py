"""The audit trail: one JSON line per API request and per refusal, appended to
``$ATTACKMAP_HOME/audit.ndjson`` (who — key id, role, tenant —, what, the outcome). Secrets never."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import orjson


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, object]) -> None:
        line = orjson.dumps({"ts": time.time(), **record}) + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def read(self) -> list[dict[str, object]]:
        if not self.path.is_file():
            return []
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line]
