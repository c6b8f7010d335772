"""Anthropic Messages API provider: structured output through a forced tool, cached static prefix.

Request: `system` is one text block with `cache_control: {"type": "ephemeral"}` (tools and system
form the cached prefix; the per-alert user message follows), `tools` holds the response schema as
`input_schema`, `tool_choice: {"type": "tool", "name": ...}` forces it. Usage maps 1:1:
input_tokens (uncached), output_tokens, cache_creation_input_tokens, cache_read_input_tokens.
Backfills go through the Message Batches API (`/v1/messages/batches`).

The key comes from ANTHROPIC_API_KEY and the base URL from ANTHROPIC_BASE_URL (default
https://api.anthropic.com), as the official SDK reads them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from mitre.mappers.base import MapperContext
from mitre.mappers.llm import (
    HttpProvider,
    LLMMapper,
    ProviderError,
    ProviderReply,
    Resilience,
    env_api_key,
    malformed_reply,
    parse_jsonl,
    scrub,
    strip_keywords,
)
from mitre.models import Usage
from mitre.prompting import TOOL_NAME, RenderedPrompt

NAME = "anthropic"
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
MAX_TOKENS = 1024
_SCHEMA_DROP = frozenset({"$schema", "title"})


def anthropic_usage(raw: Mapping[str, Any] | None) -> Usage:
    raw = raw or {}
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cache_write_tokens=int(raw.get("cache_creation_input_tokens") or 0),
        cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
    )


class AnthropicProvider(HttpProvider):
    name = NAME

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self._key or "", "anthropic-version": API_VERSION}

    def build_request(self, prompt: RenderedPrompt, retry_note: str | None = None) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt.user}]
        if retry_note:
            content.append(
                {
                    "type": "text",
                    "text": f"Your previous answer was rejected: {retry_note}\n"
                    f"Call the {TOOL_NAME} tool again with a corrected answer.",
                }
            )
        return {
            "model": self.model,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "system": [{"type": "text", "text": prompt.system, "cache_control": {"type": "ephemeral"}}],
            "tools": [
                {
                    "name": TOOL_NAME,
                    "description": "Record the MITRE ATT&CK techniques this alert shows.",
                    "input_schema": strip_keywords(prompt.schema, _SCHEMA_DROP),
                }
            ],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
            "messages": [{"role": "user", "content": content}],
        }

    def send(self, body: dict[str, Any], timeout: float) -> ProviderReply:
        return self.parse_reply(self.post_json("/v1/messages", body, timeout))

    def parse_reply(self, payload: Any) -> ProviderReply:
        if (bad := malformed_reply(payload)) is not None:
            return bad
        if not isinstance(payload, dict):
            return ProviderReply(None, Usage(), problem="the response was not a JSON object")
        usage = anthropic_usage(payload.get("usage"))
        if payload.get("stop_reason") == "max_tokens":
            return ProviderReply(None, usage, problem="the answer was cut off at max_tokens; answer more briefly")
        for block in payload.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == TOOL_NAME:
                data = block.get("input")
                if not isinstance(data, dict):
                    return ProviderReply(None, usage, problem="the tool input was not a JSON object")
                return ProviderReply(data, usage, raw_id=payload.get("id"))
        return ProviderReply(None, usage, problem=f"no {TOOL_NAME} tool call in the answer")

    # ------------------------------------------------------------ Message Batches

    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": body}

    def submit_batch(self, lines: Sequence[dict[str, Any]]) -> str:
        created = self.post_json("/v1/messages/batches", {"requests": list(lines)})
        return str(created["id"])

    def batch_results(self, batch_id: str) -> list[dict[str, Any]] | None:
        status = self.request("GET", f"/v1/messages/batches/{batch_id}").json()
        if status.get("processing_status") != "ended":
            return None
        url = status.get("results_url") or f"{self.base_url}/v1/messages/batches/{batch_id}/results"
        return parse_jsonl(self.request("GET", url).content)

    def parse_batch_line(self, line: Mapping[str, Any]) -> tuple[str, ProviderReply | ProviderError]:
        custom_id = str(line.get("custom_id"))
        result = line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            return custom_id, self.parse_reply(result.get("message"))
        if kind == "errored":
            err = (result.get("error") or {}).get("error") or result.get("error") or {}
            return custom_id, ProviderError(
                "batch_errored", scrub(f"{err.get('type')}: {err.get('message')}", self.secrets())
            )
        return custom_id, ProviderError(f"batch_{kind or 'unknown'}", f"batch request {kind}")


def create_anthropic_mapper(
    context: MapperContext,
    *,
    env: Mapping[str, str] | None = None,
    resilience: Resilience | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    transport: httpx.BaseTransport | None = None,
    redactor: Any = None,
) -> LLMMapper:
    env = os.environ if env is None else env
    settings = context.settings
    key = env_api_key(env, "ANTHROPIC_API_KEY", NAME)
    base_url = settings.base_url or env.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
    resilience = resilience or Resilience(timeout_s=float(getattr(settings, "timeout_s", 30.0)))
    provider = AnthropicProvider(
        settings.model or DEFAULT_MODEL, base_url, key, resilience.timeout_s, transport=transport
    )
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    if clock is not None:
        kwargs["clock"] = clock
    if redactor is None and getattr(settings, "redact", False):
        from mitre.redact import Redactor

        redactor = Redactor.for_installation()
    return LLMMapper(
        NAME, provider, context.catalog, settings, context.local, resilience=resilience, redactor=redactor, **kwargs
    )
