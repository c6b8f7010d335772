"""Run `medallion` (a TAXII 2.1 server from PyPI) with its memory backend, keeping the collections
across a restart: on SIGTERM it stops accepting requests, lets those in flight finish, and saves the
backend's data to the file it was loaded from. Tests and benchmarks use it to really stop and restart
the TAXII server in the middle of a publication.

    python -m devtools.taxii_server --port 6100 --data taxii-data.json --user attackmap --password secret

The data file is created with one API root (``api1``) and one writable collection when missing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

COLLECTION_ID = "5e7f3c9a-2b1d-4c8e-9f6a-1d3b5c7e9a0b"


def initial_data(base_url: str) -> dict[str, object]:
    return {
        "/discovery": {
            "title": "attackmap TAXII 2.1 (medallion)",
            "description": "test and benchmark server",
            "default": f"{base_url}/api1/",
            "api_roots": [f"{base_url}/api1/"],
        },
        "api1": {
            "information": {
                "title": "api1",
                "description": "attackmap exports",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 104857600,
            },
            "status": [],
            "collections": [
                {
                    "id": COLLECTION_ID,
                    "title": "attackmap",
                    "description": "ATT&CK-enriched alerts",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }


def collection_url(base_url: str) -> str:
    return f"{base_url}/api1/collections/{COLLECTION_ID}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="memory backend data file (created if missing)")
    parser.add_argument("--user", default="attackmap")
    parser.add_argument("--password", required=True)
    args = parser.parse_args(argv)

    from medallion import application_instance, register_blueprints, set_config
    from werkzeug.serving import make_server

    if not args.data.is_file():
        args.data.write_text(json.dumps(initial_data(f"http://{args.host}:{args.port}")))
    config = {
        "users": {args.user: args.password},
        "taxii": {"max_page_size": 1000},
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(args.data),
        },
    }
    for part in ("users", "taxii", "backend"):
        set_config(application_instance, part, config)
    register_blueprints(application_instance)
    server = make_server(args.host, args.port, application_instance, threaded=True)
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        threading.Thread(target=server.shutdown).start()  # shutdown() waits for serve_forever: not here

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    if stopping.is_set():
        time.sleep(0.5)  # requests already accepted finish before the data is saved
        application_instance.medallion_backend.save_data_to_file(str(args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
