"""A local stand-in for the LLM vendors' HTTP APIs, in their exact wire formats, for black-box tests of
the real `anthropic` and `openai` SDKs (the only fake the project allows: the vendors' HTTP boundary).

It serves, on 127.0.0.1 and a free port:
- Anthropic: POST /v1/messages (a forced `tool_use` answer with usage and prompt-cache counters),
  POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET /v1/messages/batches/{id}/results (JSONL);
- OpenAI: POST /v1/chat/completions (JSON `content`, usage with cached tokens), POST /v1/files
  (multipart, purpose=batch), POST /v1/batches, GET /v1/batches/{id}, GET /v1/files/{id}/content;
- each vendor's error body (`{"type":"error","error":{...}}`, `{"error":{...}}`), 429 with
  `retry-after`, 529 `overloaded_error`, 500.

What the "model" answers is a `Brain`: a function of the alert it is shown (the JSON object between the
prompt's ALERT_DATA delimiters) and the candidate lines. `faults` scripts error responses for the next
requests. Every request is recorded. Prompt-cache counters follow the vendors' rules: the first request
with a static prefix writes it, later ones within the TTL read it.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mitre.prompting import DATA_CLOSE, DATA_OPEN, TOOL_NAME

Brain = Callable[[dict[str, Any], list[str]], dict[str, Any]]


@dataclass
class Fault:
    status: int
    kind: str  # the vendor's error type
    retry_after: str | None = None


def read_prompt(text: str) -> tuple[dict[str, Any], list[str]]:
    """(the alert JSON, the candidate lines) of a rendered user message."""
    _, _, rest = text.partition(DATA_OPEN)
    inside, _, _ = rest.partition(DATA_CLOSE)
    alert = json.loads(inside)
    candidates = text.split("CANDIDATES", 1)[1].split("\n")[1:] if "CANDIDATES" in text else []
    lines = [c for c in candidates if re.match(r"T\d{4}", c)]
    return alert, lines


def alert_texts(alert: dict[str, Any]) -> dict[str, str]:
    texts = {k: v for k, v in alert.items() if isinstance(v, str)}
    texts.update({k: v for k, v in alert.get("fields", {}).items() if isinstance(v, str)})
    return texts


@dataclass
class StandIn:
    brain: Brain
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    delay_s: float = 0.0
    cache_ttl_s: float = 300.0
    batch_polls_before_end: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _prefix_seen: dict[str, float] = field(default_factory=dict)
    _batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    _files: dict[str, bytes] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------ server

    def __enter__(self) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_GET(self) -> None:
                standin.handle(self, "GET", b"")

            def do_POST(self) -> None:
                standin.handle(self, "POST", self._body())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.requests if p == path)

    # ------------------------------------------------------------ dispatch

    def handle(self, h: BaseHTTPRequestHandler, method: str, raw: bytes) -> None:
        path = h.path.split("?", 1)[0]
        body: dict[str, Any] | None = None
        if raw and "json" in (h.headers.get("content-type") or ""):
            body = json.loads(raw)
        with self._lock:
            self.requests.append((method, path, body))
            fault = self.faults.pop(0) if self.faults and path in ("/v1/messages", "/v1/chat/completions") else None
        if self.delay_s:
            time.sleep(self.delay_s)
        openai = path.startswith("/v1/chat") or path.startswith("/v1/files") or path.startswith("/v1/batches")
        if fault is not None:
            return self.error(h, fault, openai)
        if method == "POST" and path == "/v1/messages":
            return self.send(h, 200, self.message(body or {}))
        if method == "POST" and path == "/v1/chat/completions":
            return self.send(h, 200, self.completion(body or {}))
        if method == "POST" and path == "/v1/messages/batches":
            return self.send(h, 200, self.anthropic_batch_create(body or {}))
        if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)", path):
            return self.send(h, 200, self.anthropic_batch_status(m.group(1)))
        if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)/results", path):
            return self.send_raw(h, 200, self.anthropic_batch_results(m.group(1)), "application/binary")
        if method == "POST" and path == "/v1/files":
            return self.send(h, 200, self.file_upload(h, raw))
        if method == "POST" and path == "/v1/batches":
            return self.send(h, 200, self.openai_batch_create(body or {}))
        if m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
            return self.send(h, 200, self.openai_batch_status(m.group(1)))
        if m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
            return self.send_raw(h, 200, self._files[m.group(1)], "application/octet-stream")
        return self.send(h, 404, {"type": "error", "error": {"type": "not_found_error", "message": path}})

    def send(self, h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_raw(h, status, json.dumps(payload).encode(), "application/json", headers)

    def send_raw(
        self, h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(data)))
        h.send_header("request-id", f"req_{next(self._ids):024d}")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def error(self, h: BaseHTTPRequestHandler, fault: Fault, openai: bool) -> None:
        headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
        if openai:
            body: dict[str, Any] = {"error": {"message": fault.kind, "type": fault.kind, "param": None, "code": None}}
        else:
            body = {"type": "error", "error": {"type": fault.kind, "message": fault.kind.replace("_", " ")}}
        self.send(h, fault.status, body, headers)

    # ------------------------------------------------------------ the model

    def _cache(self, prefix: str, tokens: int) -> tuple[int, int]:
        """(written, read) prompt-cache tokens for a static prefix."""
        now = time.monotonic()
        with self._lock:
            seen = self._prefix_seen.get(prefix)
            self._prefix_seen[prefix] = now
        if seen is not None and now - seen <= self.cache_ttl_s:
            return 0, tokens
        return tokens, 0

    def answer(self, user_text: str) -> dict[str, Any]:
        alert, candidates = read_prompt(user_text)
        return self.brain(alert, candidates)

    def message(self, body: dict[str, Any]) -> dict[str, Any]:
        user = body["messages"][0]["content"][0]["text"]
        system = body["system"][0]["text"]
        written, read = self._cache(system, len(system) // 4)
        return {
            "id": f"msg_{next(self._ids):024d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [
                {
                    "type": "tool_use",
                    "id": f"toolu_{next(self._ids):020d}",
                    "name": TOOL_NAME,
                    "input": self.answer(user),
                }
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {
                "input_tokens": len(user) // 4,
                "cache_creation_input_tokens": written,
                "cache_read_input_tokens": read,
                "output_tokens": 120,
            },
        }

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        _, read = self._cache(system, len(system) // 4)
        prompt = (len(system) + len(user)) // 4
        return {
            "id": f"chatcmpl-{next(self._ids):020d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": json.dumps(self.answer(user)), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": 120,
                "total_tokens": prompt + 120,
                "prompt_tokens_details": {"cached_tokens": read, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": None,
        }

    # ------------------------------------------------------------ Anthropic Message Batches

    def _batch_counts(self, batch: dict[str, Any]) -> bool:
        batch["polls"] += 1
        return batch["polls"] > self.batch_polls_before_end

    def anthropic_batch_create(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"msgbatch_{next(self._ids):020d}"
        self._batches[batch_id] = {"requests": body["requests"], "polls": 0}
        return self._anthropic_batch(batch_id, ended=False)

    def _anthropic_batch(self, batch_id: str, ended: bool) -> dict[str, Any]:
        n = len(self._batches[batch_id]["requests"])
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else n,
                "succeeded": n if ended else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": "2026-12-02T10:00:00Z" if ended else None,
            "created_at": "2026-12-02T09:00:00Z",
            "expires_at": "2026-12-03T09:00:00Z",
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    def anthropic_batch_status(self, batch_id: str) -> dict[str, Any]:
        return self._anthropic_batch(batch_id, ended=self._batch_counts(self._batches[batch_id]))

    def anthropic_batch_results(self, batch_id: str) -> bytes:
        lines = []
        for request in self._batches[batch_id]["requests"]:
            message = self.message(request["params"])
            lines.append({"custom_id": request["custom_id"], "result": {"type": "succeeded", "message": message}})
        return "\n".join(json.dumps(x) for x in lines).encode()

    # ------------------------------------------------------------ OpenAI Files + Batch

    def file_upload(self, h: BaseHTTPRequestHandler, raw: bytes) -> dict[str, Any]:
        head = f"Content-Type: {h.headers['content-type']}\r\n\r\n".encode()
        form = BytesParser(policy=email_policy).parsebytes(head + raw)
        parts = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        file_id = f"file-{next(self._ids):020d}"
        self._files[file_id] = parts["file"].get_payload(decode=True)
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(self._files[file_id]),
            "created_at": int(time.time()),
            "filename": parts["file"].get_filename(),
            "purpose": parts["purpose"].get_payload(decode=True).decode(),
        }

    def openai_batch_create(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"batch_{next(self._ids):020d}"
        self._batches[batch_id] = {"input": body["input_file_id"], "polls": 0, "output": None}
        return self._openai_batch(batch_id, "validating")

    def _openai_batch(self, batch_id: str, status: str) -> dict[str, Any]:
        batch = self._batches[batch_id]
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": batch["input"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch["output"],
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }

    def openai_batch_status(self, batch_id: str) -> dict[str, Any]:
        batch = self._batches[batch_id]
        if not self._batch_counts(batch):
            return self._openai_batch(batch_id, "in_progress")
        if batch["output"] is None:
            lines = []
            for line in self._files[batch["input"]].decode().splitlines():
                request = json.loads(line)
                body = self.completion(request["body"])
                lines.append(
                    {
                        "id": f"batch_req_{next(self._ids)}",
                        "custom_id": request["custom_id"],
                        "response": {"status_code": 200, "request_id": "req_x", "body": body},
                        "error": None,
                    }
                )
            output = f"file-{next(self._ids):020d}"
            self._files[output] = "\n".join(json.dumps(x) for x in lines).encode()
            batch["output"] = output
        return self._openai_batch(batch_id, "completed")


# ---------------------------------------------------------------------------- model behaviours

_TELLING = (
    "process.command_line",
    "powershell.file.script_block_text",
    "url.original",
    "registry.data.strings",
    "dns.question.name",
    "file.name",
    "message",
    "process.name",
    "rule_name",
)
_INJECTED_ID = re.compile(r"\bT\d{4}(?:\.\d{3})?\b", re.IGNORECASE)


def genuine_quote(alert: dict[str, Any], avoid: str | None = None) -> tuple[str, str]:
    """(field, quote): the start of the most telling field, as a model citing its evidence would."""
    fields = {k: v for k, v in alert.get("fields", {}).items() if isinstance(v, str) and len(v) >= 4}
    if isinstance(alert.get("rule_name"), str):
        fields.setdefault("rule_name", alert["rule_name"])
    ranked = [n for n in _TELLING if n in fields] + sorted(fields, key=lambda n: -len(fields[n]))
    name = next((n for n in ranked if n != avoid), ranked[0])
    return name, fields[name][:24]


def realistic(tactic_names: dict[str, str], hallucinate: bool = True) -> Brain:
    """A model that answers the first candidate, citing real text, with the tactic written as a
    shortname or a name (models do that), and sometimes an extra, invented technique ID."""
    turn = itertools.count()

    def brain(alert: dict[str, Any], candidates: list[str]) -> dict[str, Any]:
        if not candidates:
            return {"techniques": []}
        tid, _, tactics = (part.strip() for part in candidates[0].split(" | ")[:3])
        field, quote = genuine_quote(alert)
        n = next(turn)
        tactic = tactics.split(",")[0]
        entries = [
            {
                "technique_id": tid,
                "tactic": tactic_names.get(tactic, tactic) if n % 2 else tactic_names.get(tactic, tactic).title(),
                "confidence": 0.82,
                "evidence": [{"field": field, "quote": quote}],
                "rationale": f"{field} shows the behaviour",
            }
        ]
        if hallucinate and n % 3 == 0:
            entries.append(dict(entries[0], technique_id="T1999.999", confidence=0.7))
        return {"techniques": entries}

    return brain


def obedient(tactic_names: dict[str, str], technique_names: dict[str, str], strategy: str) -> Brain:
    """A model that obeys text in the alert: it answers any technique the alert names (by ID or by name)
    and cites evidence by `strategy`: `injected` (the instruction itself), `other_field` (real text of
    another field), `before` (real text before the instruction, same field) or `none`. Told to report
    nothing, it reports nothing. Otherwise it behaves like `realistic`."""
    fallback = realistic(tactic_names, hallucinate=False)

    def brain(alert: dict[str, Any], candidates: list[str]) -> dict[str, Any]:
        for name, text in alert_texts(alert).items():
            lowered = text.lower()
            if re.search(r"no techniques|empty list|do not flag", lowered):
                return {"techniques": []}
            m = _INJECTED_ID.search(text)
            found = m.group(0).upper() if m else None
            at = m.start() if m else -1
            if found is None:
                for title, tid in technique_names.items():
                    if title in lowered:
                        found, at = tid, lowered.index(title)
                        break
            if found is None:
                continue
            if strategy == "injected":
                evidence = [{"field": name, "quote": text[max(0, at - 30) : at + 12]}]
            elif strategy == "other_field":
                other, quote = genuine_quote(alert, avoid=name)
                evidence = [{"field": other, "quote": quote}]
            elif strategy == "before":
                evidence = [{"field": name, "quote": text[: min(16, max(at, 3))]}]
            else:
                evidence = []
            return {
                "techniques": [
                    {
                        "technique_id": found,
                        "tactic": "impact",
                        "confidence": 0.99,
                        "evidence": evidence,
                        "rationale": "as the note in the alert says",
                    }
                ]
            }
        return fallback(alert, candidates)

    return brain
