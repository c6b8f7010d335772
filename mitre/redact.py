"""Optional redaction of what is sent to an LLM: user names, host names, IPs, e-mail addresses and
secrets become stable pseudonyms (HMAC-SHA256 of the value with a per-installation salt), so the same
user is the same pseudonym in every prompt and the model can still reason about "same user twice".

Turned on per workflow with `mapper.redact: true`. Only the prompt is redacted: the alert written
back keeps its values, and the cache key never contained identities in the first place.
The salt lives in $ATTACKMAP_HOME/redact.salt (created on first use, mode 0600) unless
ATTACKMAP_REDACT_SALT is set.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets as _secrets
from collections.abc import Callable
from pathlib import Path

from mitre.models import AlertFeatures

USER_FIELDS = ("user.name", "user.target.name")
DOMAIN_FIELDS = ("user.domain",)
HOST_FIELDS = ("host.name",)

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])")
_PROFILE = re.compile(r"(?i)(\\users\\|/users/|/home/)(?!public\b|default\b|all users\b|shared\b)([^\\/\s\"']+)")
# Secrets: key=value style credentials, CLI password flags, bearer tokens, well-known key formats.
_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(
        r"(?i)\b(password|passwd|pwd|pass|secret|token|api[_-]?key|apikey|access[_-]?key)(\s*[=:]\s*|\s+)"
        r"(\"[^\"]+\"|'[^']+'|[^\s\"';,&]+)"
    ),
    re.compile(r"(?i)(\bnet\s+user\s+\S+\s+)(?!/)([^\s/]+)"),
    re.compile(r"(?i)(-(?:p|password|pw)\s+)(?!-)(\S+)"),
    re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/-]{12,}=*)"),
)
_KEY_FORMATS = re.compile(
    r"\b(?:AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,}"
    r"|sk-[A-Za-z0-9_-]{16,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})\b"
)


def installation_salt(home: Path | None = None) -> bytes:
    from mitre.config import Environment

    env = Environment()
    if env.redact_salt:
        return env.redact_salt.encode()
    home = home or env.home
    path = home / "redact.salt"
    if path.is_file():
        return path.read_bytes()
    home.mkdir(parents=True, exist_ok=True)
    salt = _secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(salt)
    return salt


class Redactor:
    def __init__(self, salt: bytes) -> None:
        if not salt:
            raise ValueError("redaction needs a non-empty salt")
        self._salt = salt

    def __repr__(self) -> str:
        return "Redactor(salt=***)"

    @classmethod
    def for_installation(cls, home: Path | None = None) -> Redactor:
        return cls(installation_salt(home))

    def pseudonym(self, kind: str, value: str) -> str:
        digest = hmac.new(self._salt, f"{kind}\0{value.lower()}".encode(), hashlib.sha256).hexdigest()[:10]
        return f"{kind}-{digest}"

    def redact_text(self, text: str, known: dict[str, str] | None = None) -> str:
        """Replace known identities (exact, case-insensitive), then pattern-found values."""
        for value, alias in sorted((known or {}).items(), key=lambda kv: -len(kv[0])):
            if len(value) >= 3:
                text = re.sub(rf"(?i)(?<![\w-]){re.escape(value)}(?![\w-])", alias, text)
        text = _PROFILE.sub(lambda m: m.group(1) + self._keep_or(m.group(2), "user"), text)
        text = _EMAIL.sub(lambda m: self.pseudonym("email", m.group(0)), text)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(self._secret_sub, text)
        text = _KEY_FORMATS.sub(lambda m: self.pseudonym("secret", m.group(0)), text)
        text = _IPV4.sub(lambda m: self.pseudonym("ip", m.group(0)), text)
        return _IPV6.sub(lambda m: self.pseudonym("ip", m.group(0)), text)

    def _keep_or(self, value: str, kind: str) -> str:
        return value if value.startswith(f"{kind}-") else self.pseudonym(kind, value)

    def _secret_sub(self, m: re.Match[str]) -> str:
        groups = m.groups()
        prefix = "".join(g for g in groups[:-1] if g)
        value = groups[-1]
        if value.startswith(("secret-", "<")):
            return m.group(0)
        return prefix + self.pseudonym("secret", value.strip("\"'"))

    def redact_features(self, features: AlertFeatures) -> AlertFeatures:
        fields = dict(features.fields)
        known: dict[str, str] = {}
        for names, kind in ((USER_FIELDS, "user"), (DOMAIN_FIELDS, "domain"), (HOST_FIELDS, "host")):
            for name in names:
                value = fields.get(name)
                if value:
                    known[value] = self.pseudonym(kind, value)
                    short = value.split(".")[0]
                    if kind == "host" and short != value:
                        known.setdefault(short, self.pseudonym(kind, short))
        red: Callable[[str], str] = lambda v: self.redact_text(v, known)  # noqa: E731
        new_fields = {
            name: (known.get(value, value) if name in (*USER_FIELDS, *DOMAIN_FIELDS, *HOST_FIELDS) else red(value))
            for name, value in fields.items()
        }
        return features.model_copy(
            update={
                "fields": new_fields,
                "rule_query": red(features.rule_query) if features.rule_query else features.rule_query,
                "rule_description": red(features.rule_description) if features.rule_description else None,
                "alert_id": None,
            }
        )
