"""An ASGI app served by a real uvicorn in a background thread, on a free port, optionally with TLS
and mutual TLS: what tests and benchmarks talk to over real sockets."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from devtools.es_node import free_port


class ThreadedServer:
    def __init__(
        self,
        app: Any,
        *,
        port: int | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        ca_certs: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
            ssl_ca_certs=str(ca_certs) if ca_certs else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if ca_certs else ssl.CERT_NONE,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.url = f"{'https' if certfile else 'http'}://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.server.should_exit = False
        self.server.started = False
        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


@contextlib.contextmanager
def serving(app: Any, **kwargs: Any) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
