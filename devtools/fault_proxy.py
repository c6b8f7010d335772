"""A small real HTTP proxy that injects faults in front of a real server (tests and benchmarks).

Requests reach the upstream unchanged unless the test's `plan` says otherwise: answer a status of
its own (a 429 or 503 with the server's own error body), forward a rewritten body and rewrite the
answer (per-item rejections in an Elasticsearch bulk), or drop the connection without an answer (a
node that died mid-request). When the upstream cannot be reached, the client's connection is dropped
too, as a client talking to that server directly would see it.

    with FaultProxy("http://127.0.0.1:9200", plan) as proxy:
        client = Elasticsearch(proxy.url)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "content-encoding",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Drop(Exception):
    """Raised by a plan: close the client's connection without an answer."""


Forward = Callable[[Request], Response]
# plan(request, forward) -> the answer: forward(request) reaches the upstream (with any body).
Plan = Callable[[Request, Forward], Response]


def passthrough(request: Request, forward: Forward) -> Response:
    return forward(request)


class FaultProxy:
    """Listens on a free port of 127.0.0.1; every request goes through `plan`. Counts requests by path."""

    def __init__(self, upstream: str, plan: Plan = passthrough) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, dict(self.headers.items()), body)
                with proxy._lock:
                    proxy.requests.append(f"{self.command} {self.path.split('?')[0]}")
                try:
                    response = proxy.plan(request, proxy._forward)
                except Drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(response.status)
                for name, value in response.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("content-length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def _forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
        try:
            answer = self._client.request(
                request.method, self.upstream + request.path, headers=headers, content=request.body
            )
        except httpx.TransportError as exc:  # upstream down: the client sees a dropped connection
            raise Drop from exc
        return Response(answer.status_code, answer.content, dict(answer.headers.items()))

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.startswith(prefix))

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


@contextmanager
def fault_proxy(upstream: str, plan: Plan = passthrough) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, plan) as proxy:
        yield proxy
