"""What every receiver process must agree on: nonces already used, and findings already delivered.

One SQLite file (WAL mode) shared by all receiver processes on a host: a nonce is claimed by inserting
it under a primary key, so of two processes racing on a replayed request exactly one wins — unlike the
per-process memory the webhook keeps. Receivers on several hosts share it through a shared volume or
point it at one path each behind sticky routing; a Redis or Elasticsearch store fits the same two
methods. Finding keys are kept so a sender's retry after a lost acknowledgement is delivered once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

PURGE_EVERY_SECONDS = 60.0
DELIVERED_DAYS = 7


class ReceiverStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._purged = 0.0
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, peer TEXT, expires REAL)")
            conn.execute("CREATE TABLE IF NOT EXISTS delivered (key TEXT PRIMARY KEY, peer TEXT, at REAL)")

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread and process (a forked child must not reuse its parent's)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def claim_nonce(self, peer: str, nonce: str, now: float, ttl: float) -> bool:
        """True the first time a peer's nonce is seen (within its time-to-live), False on a replay."""
        conn = self._conn()
        if now - self._purged > PURGE_EVERY_SECONDS:
            self._purged = now
            conn.execute("DELETE FROM nonces WHERE expires < ?", (now,))
            conn.execute("DELETE FROM delivered WHERE at < ?", (now - DELIVERED_DAYS * 86_400,))
        try:
            conn.execute("INSERT INTO nonces VALUES (?, ?, ?)", (f"{peer}\x00{nonce}", peer, now + ttl))
        except sqlite3.IntegrityError:
            return False
        return True

    def new_keys(self, peer: str, keys: Iterable[str], now: float | None = None) -> set[str]:
        """Of these finding keys, those never delivered before; they are recorded as delivered now."""
        at = time.time() if now is None else now
        conn = self._conn()
        fresh: set[str] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key in dict.fromkeys(keys):
                cursor = conn.execute("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)", (key, peer, at))
                if cursor.rowcount:
                    fresh.add(key)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return fresh

    def forget(self, keys: Iterable[str]) -> None:
        """Undo `new_keys` for findings that could not be emitted after all (the sender will retry)."""
        self._conn().executemany("DELETE FROM delivered WHERE key = ?", [(k,) for k in keys])
