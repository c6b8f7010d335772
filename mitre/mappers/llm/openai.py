"""OpenAI Chat Completions provider (`openai`) and any OpenAI-compatible server (`openai-compatible`:
Ollama, vLLM, LM Studio), through one code path.

Request: strict structured outputs, `response_format: {"type": "json_schema", "json_schema":
{"name", "strict": true, "schema"}}` (keywords outside the strict subset are stripped for the vendor;
jsonschema still checks the full schema locally); the static instructions go first as the system
message so OpenAI's automatic prefix caching applies, and `prompt_cache_key` routes calls with the
same prefix together. Usage: prompt_tokens − prompt_tokens_details.cached_tokens is the uncached
input, cached_tokens the cache read, completion_tokens the output. Backfills go through the Batch API
(upload a JSONL file with purpose=batch, create a batch on /v1/chat/completions, read the output file).

Transport is the official `openai` SDK. For `openai` it reads OPENAI_API_KEY and OPENAI_BASE_URL (default
https://api.openai.com/v1) itself, with OPENAI_ORG_ID, OPENAI_PROJECT_ID and the rest; `mapper.base_url`
in workflows.yaml wins. `openai-compatible` passes an explicit base URL (mapper.base_url or OPENAI_BASE_URL)
and OPENAI_API_KEY when set, else a placeholder key (local servers need none; the SDK insists on one).
A factory given an explicit `env` mapping (tests) takes these variables from it instead of the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import openai
import orjson

from mitre.mappers.base import MapperContext
from mitre.mappers.llm.errors import ProviderError, env_api_key, missing_api_key, scrub
from mitre.mappers.llm.mapper import LLMMapper, assemble_mapper
from mitre.mappers.llm.resilience import Resilience
from mitre.mappers.llm.transport import (
    ProviderReply,
    SdkErrors,
    SdkProvider,
    json_body,
    jsonl,
    malformed_reply,
    parse_jsonl,
    sdk_http_client,
    strip_keywords,
)
from mitre.models import Usage
from mitre.prompting import RenderedPrompt
from mitre.redact import Redactor

OPENAI = "openai"
COMPATIBLE = "openai-compatible"
DEFAULT_MODEL = "gpt-5-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_TOKENS = 1024
SCHEMA_NAME = "attack_mapping"
NO_KEY = "attackmap-no-key"  # sent to an openai-compatible server when OPENAI_API_KEY is not set
# Keep to the subset every strict json_schema implementation accepts; the full schema is checked locally.
_STRICT_DROP = frozenset({"$schema", "title", "pattern", "minimum", "maximum", "maxItems", "maxLength"})


def openai_usage(raw: Mapping[str, Any] | None) -> Usage:
    raw = raw or {}
    prompt = int(raw.get("prompt_tokens") or 0)
    cached = int(((raw.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    return Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cache_read_tokens=cached,
        calls=1,
    )


class OpenAIProvider(SdkProvider[openai.OpenAI]):
    errors = SdkErrors(openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError)

    def __init__(self, model: str, client: openai.OpenAI, *, compatible: bool = False) -> None:
        super().__init__(model, client)
        self.compatible = compatible
        self.name = COMPATIBLE if compatible else OPENAI

    def secrets(self) -> tuple[str, ...]:
        return (self._client.api_key,) if self._client.api_key else ()

    def build_request(self, prompt: RenderedPrompt, retry_note: str | None = None) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ]
        if retry_note:
            messages.append(
                {
                    "role": "user",
                    "content": f"Your previous answer was rejected: {retry_note}\n"
                    "Answer again with JSON that follows the schema exactly.",
                }
            )
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": SCHEMA_NAME,
                    "strict": True,
                    "schema": strip_keywords(prompt.schema, _STRICT_DROP),
                },
            },
        }
        if self.compatible:
            body.update({"max_tokens": MAX_TOKENS, "temperature": 0})
        else:
            body["prompt_cache_key"] = f"attackmap-{prompt.prompt_hash[:16]}"
            body["max_completion_tokens"] = MAX_TOKENS * 2 if self.model.startswith(("gpt-5", "o")) else MAX_TOKENS
            if self.model.startswith("gpt-5"):
                body["reasoning_effort"] = "minimal"
            else:
                body["temperature"] = 0
        return body

    def send(self, body: dict[str, Any], timeout: float) -> ProviderReply:
        with self.calling():
            raw = self._client.chat.completions.with_raw_response.create(**body, timeout=timeout)
        return self.parse_reply(json_body(raw.http_response))

    def parse_reply(self, payload: Any) -> ProviderReply:
        if (bad := malformed_reply(payload)) is not None:
            return bad
        if not isinstance(payload, dict) or not payload.get("choices"):
            return ProviderReply(None, Usage(), problem="the response had no choices")
        usage = openai_usage(payload.get("usage"))
        choice = payload["choices"][0]
        message = choice.get("message") or {}
        if choice.get("finish_reason") == "length":
            return ProviderReply(None, usage, problem="the answer was cut off (finish_reason=length); answer briefly")
        if message.get("refusal"):
            return ProviderReply(None, usage, problem=f"the model refused: {str(message['refusal'])[:200]}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return ProviderReply(None, usage, problem="the answer had no content")
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            return ProviderReply(None, usage, problem=f"the answer is not valid JSON ({exc})")
        return ProviderReply(data, usage, raw_id=payload.get("id"))

    # ------------------------------------------------------------ Batch API

    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    def submit_batch(self, lines: Sequence[dict[str, Any]]) -> str:
        with self.calling():
            upload = self._client.files.create(
                file=("attackmap-batch.jsonl", jsonl(lines), "application/jsonl"), purpose="batch"
            )
            created = self._client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        return created.id

    def batch_results(self, batch_id: str) -> list[dict[str, Any]] | None:
        with self.calling():
            status = self._client.batches.retrieve(batch_id)
            if status.status in ("failed", "expired", "cancelled"):
                raise ProviderError(f"batch_{status.status}", f"batch {batch_id} {status.status}")
            if status.status != "completed":
                return None
            lines: list[dict[str, Any]] = []
            for file_id in (status.output_file_id, status.error_file_id):
                if file_id:
                    lines += parse_jsonl(self._client.files.content(file_id).content)
        return lines

    def parse_batch_line(self, line: Mapping[str, Any]) -> tuple[str, ProviderReply | ProviderError]:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        if line.get("error") or response.get("status_code") != 200:
            err = line.get("error") or (response.get("body") or {}).get("error") or {}
            return custom_id, ProviderError(
                "batch_errored", scrub(f"{err.get('code')}: {err.get('message')}", self.secrets())
            )
        return custom_id, self.parse_reply(response.get("body"))


def create_openai_mapper(
    context: MapperContext,
    *,
    compatible: bool = False,
    env: Mapping[str, str] | None = None,
    resilience: Resilience | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    transport: httpx.BaseTransport | None = None,
    redactor: Redactor | None = None,
) -> LLMMapper:
    settings = context.settings
    name = COMPATIBLE if compatible else OPENAI
    base_url: str | None = settings.base_url or None
    key: str | None = None  # None: the SDK reads OPENAI_API_KEY (and OPENAI_BASE_URL when base_url is None)
    if compatible:
        source = os.environ if env is None else env
        base_url = base_url or source.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError(
                "mapper 'openai-compatible' needs a base URL: set mapper.base_url in workflows.yaml "
                "or the environment variable OPENAI_BASE_URL (e.g. http://localhost:11434/v1 for Ollama)"
            )
        if not settings.model:
            raise ValueError("mapper 'openai-compatible' needs mapper.model (the model name the server serves)")
        key = (source.get("OPENAI_API_KEY") or "").strip() or NO_KEY
    elif env is not None:
        key = env_api_key(env, "OPENAI_API_KEY", name)
        base_url = base_url or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    resilience = resilience or Resilience(timeout_s=settings.timeout_s)
    try:
        client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            max_retries=0,
            timeout=resilience.timeout_s,
            http_client=sdk_http_client(transport),
        )
    except openai.OpenAIError as exc:  # raised on construction when no credential is found
        raise missing_api_key("OPENAI_API_KEY", name) from exc
    provider = OpenAIProvider(settings.model or DEFAULT_MODEL, client, compatible=compatible)
    return assemble_mapper(name, provider, context, resilience, sleep, clock, redactor)


def create_compatible_mapper(context: MapperContext, **kwargs: Any) -> LLMMapper:
    return create_openai_mapper(context, compatible=True, **kwargs)
