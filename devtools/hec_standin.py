"""A stand-in for Splunk's HTTP Event Collector that enforces the documented protocol, for tests and
benchmarks (no Splunk can be installed here, and the OpenTelemetry Collector's `splunkhec` receiver
cannot be built from the Go module proxy: see README, "Exports").

What it enforces, with Splunk's status codes and JSON bodies (``{"text": …, "code": n}``):

- ``Authorization: Splunk <token>``: missing → 401 code 2; not ``Splunk …`` → 401 code 3; unknown token
  → 403 code 4; a disabled token → 403 code 1;
- ``POST /services/collector/event``: one or more JSON event envelopes back to back; empty → 400 code 5;
  not JSON → 400 code 6 with ``invalid-event-number``; no ``event`` → code 12, blank → code 13; ``time``
  not epoch seconds → code 6; an index outside the allowed list → code 7; ``fields`` not flat → code 15.
  Events before an invalid one are kept, as Splunk does;
- indexer acknowledgement (``--ack``): ``X-Splunk-Request-Channel`` required (400 code 10), a GUID (400
  code 11); the reply carries ``ackId``; ``POST /services/collector/ack`` answers ``{"acks": {id: bool}}``;
- ``GET /services/collector/health`` → 200 code 17;
- fault injection for tests: ``POST /_control/fail`` with ``{"status": 503, "code": 9, "times": 2,
  "retry_after": 1}`` makes the next requests fail that way (429, 503 code 9, 500…).

Accepted events are appended to ``--out`` (NDJSON, flushed before the reply), so a test can count
exactly what arrived, across restarts.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EVENT_PATHS = ("/services/collector/event", "/services/collector/event/1.0", "/services/collector")
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.tokens = set(args.token)
        self.disabled = set(args.disabled_token)
        self.indexes = set(args.index)
        self.ack = args.ack
        self.out = open(args.out, "ab")  # noqa: SIM115 - held for the life of the server
        self.lock = threading.Lock()
        self.next_ack: dict[str, int] = {}
        self.acked: dict[str, set[int]] = {}
        self.faults: list[dict[str, Any]] = []


class Handler(BaseHTTPRequestHandler):
    server_version = "hec-standin/1"
    state: State

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the NDJSON instead
        return

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization")
        if not header:
            self._reply(401, {"text": "Token is required", "code": 2})
            return False
        scheme, _, token = header.partition(" ")
        if scheme != "Splunk" or not token:
            self._reply(401, {"text": "Invalid authorization", "code": 3})
            return False
        if token in self.state.disabled:
            self._reply(403, {"text": "Token disabled", "code": 1})
            return False
        if token not in self.state.tokens:
            self._reply(403, {"text": "Invalid token", "code": 4})
            return False
        return True

    def _channel(self) -> str | None:
        channel = self.headers.get("X-Splunk-Request-Channel")
        if channel is None:
            self._reply(400, {"text": "Data channel is missing", "code": 10})
            return None
        try:
            uuid.UUID(channel)
        except ValueError:
            self._reply(400, {"text": "Invalid data channel", "code": 11})
            return None
        return channel

    def _injected_fault(self) -> bool:
        with self.state.lock:
            if not self.state.faults:
                return False
            fault = self.state.faults[0]
            fault["times"] -= 1
            if fault["times"] <= 0:
                self.state.faults.pop(0)
        headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") is not None else None
        self._reply(
            int(fault["status"]), {"text": fault.get("text", "Server is busy"), "code": fault.get("code", 9)}, headers
        )
        return True

    def do_GET(self) -> None:
        if self.path.split("?")[0] == HEALTH_PATH:
            self._reply(200, {"text": "HEC is healthy", "code": 17})
        else:
            self._reply(404, {"text": "The requested URL was not found on this server.", "code": 404})

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        if path == "/_control/fail":
            fault = json.loads(self._body() or b"{}")
            fault.setdefault("times", 1)
            with self.state.lock:
                self.state.faults.append(fault)
            self._reply(200, {"text": "ok", "code": 0})
            return
        body = self._body()
        if path == ACK_PATH:
            self._ack(body)
        elif path in EVENT_PATHS:
            self._events(body)
        else:
            self._reply(404, {"text": "The requested URL was not found on this server.", "code": 404})

    def _ack(self, body: bytes) -> None:
        if not self._authorised():
            return
        if not self.state.ack:
            self._reply(400, {"text": "ACK is disabled", "code": 14})
            return
        channel = self._channel()
        if channel is None:
            return
        try:
            wanted = [int(a) for a in json.loads(body)["acks"]]
        except (ValueError, KeyError, TypeError):
            self._reply(400, {"text": "Invalid data format", "code": 6})
            return
        with self.state.lock:
            done = self.state.acked.get(channel, set())
            self._reply(200, {"acks": {str(a): a in done for a in wanted}})

    def _events(self, body: bytes) -> None:
        if not self._authorised():
            return
        channel = self._channel() if self.state.ack else None
        if self.state.ack and channel is None:
            return
        if self._injected_fault():
            return
        text = body.decode("utf-8", errors="replace").strip()
        if not text:
            self._reply(400, {"text": "No data", "code": 5})
            return
        decoder = json.JSONDecoder()
        accepted: list[dict[str, Any]] = []
        error: tuple[str, int] | None = None
        position = 0
        while position < len(text):
            while position < len(text) and text[position].isspace():
                position += 1
            if position >= len(text):
                break
            try:
                envelope, position = decoder.raw_decode(text, position)
            except ValueError:
                error = ("Invalid data format", 6)
                break
            error = self._check(envelope)
            if error:
                break
            accepted.append(envelope)
        if accepted:
            with self.state.lock:
                self.state.out.write(b"".join(json.dumps(e).encode() + b"\n" for e in accepted))
                self.state.out.flush()
        if error:
            self._reply(400, {"text": error[0], "code": error[1], "invalid-event-number": len(accepted)})
            return
        reply: dict[str, Any] = {"text": "Success", "code": 0}
        if channel is not None:
            with self.state.lock:
                ack_id = self.state.next_ack.get(channel, 0)
                self.state.next_ack[channel] = ack_id + 1
                self.state.acked.setdefault(channel, set()).add(ack_id)  # indexed as soon as it is written
            reply["ackId"] = ack_id
        self._reply(200, reply)

    def _check(self, envelope: Any) -> tuple[str, int] | None:
        if not isinstance(envelope, dict):
            return ("Invalid data format", 6)
        if "event" not in envelope:
            return ("Event field is required", 12)
        if envelope["event"] in ("", None, {}):
            return ("Event field cannot be blank", 13)
        if "time" in envelope and not isinstance(envelope["time"], int | float):
            try:
                float(envelope["time"])
            except (TypeError, ValueError):
                return ("Invalid data format", 6)
        if self.state.indexes and envelope.get("index") not in (None, *self.state.indexes):
            return ("Incorrect index", 7)
        fields = envelope.get("fields", {})
        if not isinstance(fields, dict) or any(
            isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, dict | list) for i in v))
            for v in fields.values()
        ):
            return ("Error in handling indexed fields", 15)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--token", action="append", default=[], help="a valid token (repeatable)")
    parser.add_argument("--disabled-token", action="append", default=[])
    parser.add_argument("--index", action="append", default=[], help="allowed index (repeatable; none: any)")
    parser.add_argument("--ack", action="store_true", help="indexer acknowledgement on")
    parser.add_argument("--out", required=True, help="NDJSON file the accepted events are appended to")
    args = parser.parse_args(argv)
    Handler.state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
