"""Vendor API payloads for respx fakes, shaped exactly like the real responses (ids, usage, errors)."""

from __future__ import annotations

from typing import Any

import httpx

from mitre.prompting import TOOL_NAME


def answer(
    *items: tuple[str, str, float], quote: str = "-EncodedCommand", field: str = "process.command_line"
) -> dict[str, Any]:
    """A reply in the schema of prompts/map_alert.schema.json: each technique cites `quote` from `field`."""
    return {
        "techniques": [
            {
                "technique_id": tid,
                "tactic": tactic,
                "confidence": conf,
                "evidence": [{"field": field, "quote": quote}],
                "rationale": f"{field} shows {quote}",
            }
            for tid, tactic, conf in items
        ]
    }


def anthropic_message(tool_input: Any, stop_reason: str = "tool_use", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": TOOL_NAME, "input": tool_input}
        ],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("input_tokens", 812),
            "cache_creation_input_tokens": usage.get("cache_creation_input_tokens", 0),
            "cache_read_input_tokens": usage.get("cache_read_input_tokens", 4096),
            "output_tokens": usage.get("output_tokens", 97),
        },
    }


def anthropic_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return httpx.Response(status, json=body, headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", **(headers or {})})


def chat_completion(content: str, finish_reason: str = "stop", prompt: int = 1400, cached: int = 1024) -> dict:
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-5-mini-2025-08-07",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": 120,
            "total_tokens": prompt + 120,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }


def openai_error(status: int, message: str, kind: str, code: str | None, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": kind, "param": None, "code": code}}, headers=headers or {}
    )
