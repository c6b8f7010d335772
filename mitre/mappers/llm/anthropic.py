"""Anthropic Messages API provider: structured output through a forced tool, cached static prefix.

Request: `system` is one text block with `cache_control: {"type": "ephemeral"}` (plus `"ttl": "1h"` when
`mapper.prompt_cache_ttl` says so; tools and system form the cached prefix, the per-alert user message
follows), `tools` holds the response schema as
`input_schema`, `tool_choice: {"type": "tool", "name": ...}` forces it. Usage maps 1:1:
input_tokens (uncached), output_tokens, cache_creation_input_tokens, cache_read_input_tokens.
No `temperature`: the API version the SDK sends (2026-10-21) rejects sampling parameters with a 400.
Backfills go through the Message Batches API (`client.messages.batches`).

Transport is the official `anthropic` SDK. It resolves the credentials (ANTHROPIC_API_KEY, then
ANTHROPIC_AUTH_TOKEN or a profile) and the base URL (ANTHROPIC_BASE_URL, default https://api.anthropic.com)
itself; `mapper.base_url` in workflows.yaml wins. A factory given an explicit `env` mapping (tests) takes
ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from it instead of the process environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anthropic
import httpx

from mitre.mappers.base import MapperContext
from mitre.mappers.llm.errors import ProviderError, env_api_key, missing_api_key, scrub
from mitre.mappers.llm.mapper import LLMMapper, assemble_mapper
from mitre.mappers.llm.resilience import Resilience
from mitre.mappers.llm.transport import (
    ProviderReply,
    SdkErrors,
    SdkProvider,
    json_body,
    malformed_reply,
    sdk_http_client,
    strip_keywords,
)
from mitre.models import Usage
from mitre.prompting import TOOL_NAME, RenderedPrompt
from mitre.redact import Redactor

NAME = "anthropic"
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_BASE_URL = "https://api.anthropic.com"
MAX_TOKENS = 1024
_SCHEMA_DROP = frozenset({"$schema", "title"})


def anthropic_usage(raw: Mapping[str, Any] | None) -> Usage:
    raw = raw or {}
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cache_write_tokens=int(raw.get("cache_creation_input_tokens") or 0),
        cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
        calls=1,
    )


class AnthropicProvider(SdkProvider[anthropic.Anthropic]):
    name = NAME
    errors = SdkErrors(anthropic.APIStatusError, anthropic.APITimeoutError, anthropic.APIConnectionError)

    def __init__(self, model: str, client: anthropic.Anthropic, cache_ttl: str = "5m") -> None:
        super().__init__(model, client)
        self.cache_ttl = cache_ttl

    def secrets(self) -> tuple[str, ...]:
        return tuple(v for v in (self._client.api_key, self._client.auth_token) if v)

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
            "system": [{"type": "text", "text": prompt.system, "cache_control": self.cache_control()}],
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

    def cache_control(self) -> dict[str, str]:
        """The breakpoint after tools + system: 5 minutes is the API's default, 1 hour is asked for."""
        return {"type": "ephemeral"} if self.cache_ttl == "5m" else {"type": "ephemeral", "ttl": self.cache_ttl}

    def send(self, body: dict[str, Any], timeout: float) -> ProviderReply:
        with self.calling():
            raw = self._client.messages.with_raw_response.create(**body, timeout=timeout)
        return self.parse_reply(json_body(raw.http_response))

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
        with self.calling():
            created = self._client.messages.batches.create(requests=list(lines))  # type: ignore[arg-type]
        return created.id

    def batch_results(self, batch_id: str) -> list[dict[str, Any]] | None:
        with self.calling():
            if self._client.messages.batches.retrieve(batch_id).processing_status != "ended":
                return None
            return [line.model_dump() for line in self._client.messages.batches.results(batch_id)]

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


def anthropic_client(
    base_url: str | None,
    env: Mapping[str, str] | None,
    timeout_s: float,
    transport: httpx.BaseTransport | None = None,
) -> anthropic.Anthropic:
    """The SDK client. Without `env` the SDK reads the environment itself; a missing credential is an error
    naming ANTHROPIC_API_KEY now rather than at the first alert."""
    key: str | None = None
    if env is not None:
        key = env_api_key(env, "ANTHROPIC_API_KEY", NAME)
        base_url = base_url or env.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
    try:
        client = anthropic.Anthropic(
            api_key=key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
            http_client=sdk_http_client(transport),
        )
    except anthropic.AnthropicError as exc:  # e.g. a profile named by ANTHROPIC_PROFILE that is not there
        raise missing_api_key("ANTHROPIC_API_KEY", NAME) from exc
    if client.api_key is None and client.auth_token is None and client.credentials is None:
        client.close()
        raise missing_api_key("ANTHROPIC_API_KEY", NAME)
    return client


def create_anthropic_mapper(
    context: MapperContext,
    *,
    env: Mapping[str, str] | None = None,
    resilience: Resilience | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    transport: httpx.BaseTransport | None = None,
    redactor: Redactor | None = None,
) -> LLMMapper:
    settings = context.settings
    resilience = resilience or Resilience(timeout_s=settings.timeout_s)
    client = anthropic_client(settings.base_url, env, resilience.timeout_s, transport)
    provider = AnthropicProvider(settings.model or DEFAULT_MODEL, client, settings.prompt_cache_ttl)
    return assemble_mapper(NAME, provider, context, resilience, sleep, clock, redactor)
