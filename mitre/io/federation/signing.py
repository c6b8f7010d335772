"""Signing and verifying federation requests: Ed25519 with a key id, or HMAC-SHA256 for shared-secret peers.

What is signed (version 1) is one string, so neither side has to agree on a JSON canonical form::

    attackmap-federation-v1 \\n key id \\n timestamp \\n nonce \\n tenant \\n SHA-256 hex of the body

Headers: ``X-Attackmap-Key-Id``, ``X-Attackmap-Timestamp`` (unix seconds), ``X-Attackmap-Nonce``,
``X-Attackmap-Tenant`` and ``X-Attackmap-Signature`` (``ed25519=<base64>`` or ``sha256=<hex>``).

Keys accepted from peers live in a peers file (`PeersFile`), re-read when it changes: rotating a key is
adding the new key id beside the old one, letting the peer switch, then removing the old one — the
receiver never restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

SIGNING_VERSION = "attackmap-federation-v1"
KEY_ID_HEADER = "x-attackmap-key-id"
TIMESTAMP_HEADER = "x-attackmap-timestamp"
NONCE_HEADER = "x-attackmap-nonce"
TENANT_HEADER = "x-attackmap-tenant"
SIGNATURE_HEADER = "x-attackmap-signature"
Algorithm = Literal["ed25519", "hmac-sha256"]
_PREFIX: dict[str, str] = {"ed25519": "ed25519=", "hmac-sha256": "sha256="}


def signed_message(key_id: str, timestamp: str, nonce: str, tenant: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((SIGNING_VERSION, key_id, timestamp, nonce, tenant, digest)).encode()


class Signer(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> Algorithm: ...

    def sign(self, message: bytes) -> str: ...


@dataclass(frozen=True)
class Ed25519Signer:
    key_id: str
    private_key: Ed25519PrivateKey
    algorithm: Algorithm = "ed25519"

    def sign(self, message: bytes) -> str:
        return _PREFIX["ed25519"] + base64.b64encode(self.private_key.sign(message)).decode()

    @classmethod
    def from_pem(cls, key_id: str, path: Path) -> Ed25519Signer:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key_id, key)


@dataclass(frozen=True)
class HmacSigner:
    key_id: str
    secret: bytes
    algorithm: Algorithm = "hmac-sha256"

    def sign(self, message: bytes) -> str:
        return _PREFIX["hmac-sha256"] + hmac.new(self.secret, message, hashlib.sha256).hexdigest()


def signed_headers(
    signer: Signer, tenant: str, body: bytes, *, timestamp: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The headers a sender attaches to one request body."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    nonce = nonce or uuid.uuid4().hex
    return {
        "content-type": "application/json",
        KEY_ID_HEADER: signer.key_id,
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
        TENANT_HEADER: tenant,
        SIGNATURE_HEADER: signer.sign(signed_message(signer.key_id, ts, nonce, tenant, body)),
    }


def public_key_text(private_key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key, base64: what a peer lists in its peers file."""
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --------------------------------------------------------------------------- keys accepted from peers


class PeerKey(BaseModel):
    """One key a peer may sign with. Several at once while a key is rotated."""

    model_config = ConfigDict(extra="forbid")

    key_id: str = Field(min_length=1)
    algorithm: Algorithm
    public_key: str | None = Field(None, description="ed25519: the raw public key, base64")
    secret_env: str | None = Field(None, description="hmac-sha256: environment variable holding the secret")

    @model_validator(mode="after")
    def _material(self) -> PeerKey:
        if self.algorithm == "ed25519" and not self.public_key:
            raise ValueError(f"key {self.key_id}: ed25519 needs public_key")
        if self.algorithm == "hmac-sha256" and not self.secret_env:
            raise ValueError(f"key {self.key_id}: hmac-sha256 needs secret_env")
        return self


class Peer(BaseModel):
    """A peer system: the tenants it may send findings for, its keys, and its caps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    tenants: list[str] = Field(min_length=1)
    keys: list[PeerKey] = Field(min_length=1)
    max_body_bytes: int = Field(1_048_576, ge=1)
    requests_per_minute: int = Field(600, ge=1)


class PeersDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peers: list[Peer] = Field(default_factory=list)


@dataclass(frozen=True)
class Verifier:
    """One accepted key, ready to verify."""

    peer: Peer
    key: PeerKey
    public: Ed25519PublicKey | None
    secret: bytes | None

    def verify(self, message: bytes, signature: str) -> bool:
        prefix = _PREFIX[self.key.algorithm]
        if not signature.startswith(prefix):
            return False
        value = signature[len(prefix) :]
        if self.public is not None:
            try:
                self.public.verify(base64.b64decode(value, validate=True), message)
            except (InvalidSignature, ValueError):
                return False
            return True
        assert self.secret is not None
        expected = hmac.new(self.secret, message, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), value.strip().lower().encode())


def _verifiers(document: PeersDocument, environ: Mapping[str, str]) -> dict[str, Verifier]:
    found: dict[str, Verifier] = {}
    for peer in document.peers:
        for key in peer.keys:
            if key.key_id in found:
                raise ValueError(f"key id {key.key_id} is listed twice")
            public = secret = None
            if key.algorithm == "ed25519":
                assert key.public_key is not None
                public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key))
            else:
                value = environ.get(key.secret_env or "", "")
                if len(value) < 16:
                    raise ValueError(f"key {key.key_id}: set {key.secret_env} to the shared secret (16+ characters)")
                secret = value.encode()
            found[key.key_id] = Verifier(peer, key, public, secret)
    return found


class PeersFile:
    """The peers file, re-read when its modification time changes (checked at most once a second), so
    keys rotate without a restart. A file that no longer parses keeps the last good keys."""

    def __init__(self, path: Path, environ: Mapping[str, str] | None = None, check_every: float = 1.0) -> None:
        self.path = path
        self.environ = environ if environ is not None else os.environ
        self.check_every = check_every
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime = -1
        self._verifiers: dict[str, Verifier] = {}
        self.errors: list[str] = []
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        mtime = self.path.stat().st_mtime_ns
        if not force and mtime == self._mtime:
            return
        document = PeersDocument.model_validate(yaml.safe_load(self.path.read_text()) or {})
        self._verifiers = _verifiers(document, self.environ)
        self._mtime = mtime

    def verifier(self, key_id: str) -> Verifier | None:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.check_every:
                self._checked = now
                try:
                    self._reload()
                except (OSError, ValueError) as exc:
                    self.errors.append(f"{self.path}: {exc}; keeping the previous keys")
            return self._verifiers.get(key_id)

    def peers(self) -> list[Peer]:
        with self._lock:
            return list({v.peer.name: v.peer for v in self._verifiers.values()}.values())
