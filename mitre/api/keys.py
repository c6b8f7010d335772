"""API keys: a role and a tenant bound to each, only a SHA-256 digest of the secret stored.

Roles: ``service`` may enrich and queue; ``analyst`` also gives feedback and reads the review queue and
telemetry; ``admin`` also sets opt-outs and runs the tenant's budget. Every key acts for its own tenant
only. The keys file (``$ATTACKMAP_HOME/api-keys.json``) is re-read when it changes, so a key created or
revoked with `attackmap api-key` takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Role = Literal["admin", "analyst", "service"]
Permission = Literal["enrich", "queue", "feedback", "read", "admin"]
PERMISSIONS: dict[str, frozenset[str]] = {
    "service": frozenset({"enrich", "queue"}),
    "analyst": frozenset({"enrich", "queue", "feedback", "read"}),
    "admin": frozenset({"enrich", "queue", "feedback", "read", "admin"}),
}
PREFIX = "amk_"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    role: Role
    tenant: str = Field(min_length=1)
    digest: str
    created: float
    revoked: bool = False

    def may(self, permission: str) -> bool:
        return not self.revoked and permission in PERMISSIONS[self.role]


_LIST = TypeAdapter(list[ApiKey])


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime = -1
        self._by_id: dict[str, ApiKey] = {}

    def _load(self) -> dict[str, ApiKey]:
        mtime = self.path.stat().st_mtime_ns if self.path.is_file() else 0
        if mtime != self._mtime:
            keys = _LIST.validate_json(self.path.read_bytes()) if mtime else []
            self._by_id = {k.id: k for k in keys}
            self._mtime = mtime
        return self._by_id

    def _save(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        staging.write_bytes(_LIST.dump_json(list(keys.values()), indent=2))
        staging.chmod(0o600)
        staging.replace(self.path)

    def create(self, name: str, role: Role, tenant: str) -> tuple[ApiKey, str]:
        """A new key; the secret is returned once and never stored."""
        with self._lock:
            keys = dict(self._load())
            key_id = secrets.token_hex(6)
            secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
            key = ApiKey(id=key_id, name=name, role=role, tenant=tenant, digest=_digest(secret), created=time.time())
            keys[key_id] = key
            self._save(keys)
            return key, secret

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            keys = dict(self._load())
            if key_id not in keys:
                return False
            keys[key_id] = keys[key_id].model_copy(update={"revoked": True})
            self._save(keys)
            return True

    def list(self) -> list[ApiKey]:
        with self._lock:
            return list(self._load().values())

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key a presented secret belongs to (None for an unknown, malformed or revoked one)."""
        if not secret.startswith(PREFIX) or secret.count("_") < 2:
            return None
        key_id = secret[len(PREFIX) :].split("_", 1)[0]
        with self._lock:
            key = self._load().get(key_id)
        if key is None or key.revoked or not hmac.compare_digest(key.digest, _digest(secret)):
            return None
        return key
