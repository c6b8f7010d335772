"""Vendor errors, classified into stable kinds, and the API keys that must never leak into them.

Both vendors' error bodies are understood: Anthropic `{"type":"error","error":{"type","message"}}`,
OpenAI `{"error":{"message","type","code"}}`. 429 honours `retry-after-ms` and `retry-after`
(seconds or an HTTP date); 529 and `overloaded_error` are "overloaded"; other 5xx "server_error".
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Mapping, Sequence

import httpx2

_KEYLIKE = re.compile(r"\b(?:sk-ant-[A-Za-z0-9_\-*]{6,}|sk-[A-Za-z0-9_\-*]{6,})")
RETRYABLE_KINDS = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection"})


class MissingAPIKeyError(ValueError):
    """The vendor's environment variable holding the API key is not set."""


def missing_api_key(variable: str, provider: str) -> MissingAPIKeyError:
    return MissingAPIKeyError(f"mapper {provider!r} needs an API key: set the environment variable {variable}")


def env_api_key(env: Mapping[str, str], variable: str, provider: str) -> str:
    value = (env.get(variable) or "").strip()
    if not value:
        raise missing_api_key(variable, provider)
    return value


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove API keys (exact values and anything key-shaped) from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


class ProviderError(Exception):
    """One failed vendor call, classified. `kind` is a stable code (counted, used in fallback_reason)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def parse_retry_after(headers: httpx2.Headers, now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - now)


def error_from_response(response: httpx2.Response, secrets: Sequence[str], now: float) -> ProviderError:
    """Classify a non-2xx answer."""
    status = response.status_code
    vendor_type, message = "", response.text[:300]
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            vendor_type = str(err.get("type") or err.get("code") or "")
            message = str(err.get("message") or message)
    except ValueError:
        pass
    if status == 429:
        kind = "rate_limited"
    elif status == 529 or vendor_type == "overloaded_error":
        kind = "overloaded"
    elif status >= 500:
        kind = "server_error"
    elif status in (401, 403):
        kind = "auth_error"
    else:
        kind = "bad_request"
    text = scrub(f"HTTP {status} {vendor_type}: {message}".strip(), secrets)
    return ProviderError(kind, text, status=status, retry_after=parse_retry_after(response.headers, now))
