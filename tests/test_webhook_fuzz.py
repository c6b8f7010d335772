"""The webhook (mitre/io/webhook.py) under hostile input: property-based requests (any body bytes, any
JSON, any headers, duplicated or huge ones, other encodings), bodies at and past the size limit, and
slow clients against a real uvicorn server (a request head or a body trickled a byte at a time).

The property: the receiver answers every request with a deliberate status — 202, or a 4xx saying why
— never a 500, and emits events only for a 202, one per distinct alert it accepted."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from mitre.config import Trigger, WebhookSettings, Workflow, WorkflowsFile
from mitre.io.webhook import create_app, signed_headers, slow_client_guard
from tests.alert_strategies import json_values, mutated_alerts

SECRET = b"fuzz-secret-0123456789abcdef"
LIMIT = 4096
DELIBERATE = {202, 400, 401, 404, 408, 409, 413, 422}


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, events: Sequence[dict[str, Any]]) -> None:
        self.events.extend(events)


def config(**webhook: Any) -> WorkflowsFile:
    settings_ = {"max_body_bytes": LIMIT, **webhook}
    return WorkflowsFile(workflows=[Workflow(name="soc", trigger=Trigger(webhook=WebhookSettings(**settings_)))])


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[TestClient, Recorder]]:
    recorder = Recorder()
    with TestClient(create_app(config(), recorder, {"soc": SECRET}), raise_server_exceptions=False) as client:
        yield client, recorder


def examples(ci_count: int) -> int:
    return max(10, ci_count * settings.default.max_examples // 1000)


def _check(response: Any, recorder: Recorder, before: int) -> None:
    assert response.status_code in DELIBERATE, (response.status_code, response.text)
    emitted = len(recorder.events) - before
    if response.status_code == 202:
        assert emitted == response.json()["accepted"] > 0
    else:
        assert emitted == 0 and response.json()["error"]


header_names = st.sampled_from(
    [
        "x-attackmap-timestamp",
        "x-attackmap-signature",
        "x-attackmap-nonce",
        "x-attackmap-tenant",
        "content-type",
        "x-other",
    ]
)


def as_body(value: Any) -> bytes:
    """JSON where JSON can hold the value, else what a careless sender would post."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return repr(value).encode("utf-8", "surrogatepass")


header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(["", "sha256=" + "0" * 64, "1800000000", "nan", "-1e309", "x" * 8000]),
)


@settings(max_examples=examples(600))
@given(
    body=st.one_of(st.binary(max_size=600), st.builds(as_body, json_values)),
    sign=st.booleans(),
    extra=st.lists(st.tuples(header_names, header_values), max_size=4),
)
def test_any_body_and_headers_get_a_deliberate_answer(hook, body: bytes, sign: bool, extra: list[tuple[str, str]]):
    client, recorder = hook
    headers = list(signed_headers(SECRET, body).items()) if sign else []
    headers += extra  # may duplicate or contradict the signed ones
    before = len(recorder.events)
    _check(client.post("/hooks/soc", content=body, headers=headers), recorder, before)


alert_items = st.one_of(
    st.fixed_dictionaries({"_index": st.text(max_size=12), "_id": st.text(max_size=12)}),
    st.fixed_dictionaries({"kibana.alert.uuid": st.text(max_size=20)}),
    st.text(max_size=40),
    mutated_alerts(max_mutations=2),
    json_values,
)
payloads = st.one_of(
    st.builds(lambda items: {"alerts": items}, st.lists(alert_items, max_size=4)),
    st.lists(alert_items, max_size=4),
    st.builds(lambda items: {"context": {"alerts": items}}, st.lists(alert_items, max_size=3)),
    alert_items,
)


@settings(max_examples=examples(600))
@given(payload=payloads, tenant=st.one_of(st.none(), st.text(max_size=10)))
def test_signed_payloads_of_any_shape_get_a_deliberate_answer(hook, payload: Any, tenant: str | None):
    client, recorder = hook
    body = as_body(payload)
    headers = signed_headers(SECRET, body)
    if tenant is not None:
        headers["x-attackmap-tenant"] = tenant.encode("ascii", "ignore").decode() or "t"
    before = len(recorder.events)
    response = client.post("/hooks/soc", content=body, headers=headers)
    _check(response, recorder, before)


def _padded(size: int) -> bytes:
    """A valid one-alert body of exactly `size` bytes."""
    stem = orjson.dumps({"alerts": [{"_index": "alerts-1", "_id": "a1"}], "pad": ""})
    return stem[:-2] + b"x" * (size - len(stem)) + stem[-2:]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_at_the_limit_is_accepted_and_one_byte_more_is_not(chunked: bool):
    recorder = Recorder()
    client = TestClient(create_app(config(), recorder, {"soc": SECRET}))
    for size, status in ((LIMIT, 202), (LIMIT + 1, 413)):
        body = _padded(size)
        assert len(body) == size
        headers = signed_headers(SECRET, body)
        content: Any = iter([body[:100], body[100:]]) if chunked else body
        response = client.post("/hooks/soc", content=content, headers=headers)
        assert response.status_code == status, response.text
    assert len(recorder.events) == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1", "utf-8-sig"])
def test_a_body_in_another_encoding_is_rejected_as_invalid_json(encoding: str):
    recorder = Recorder()
    client = TestClient(create_app(config(), recorder, {"soc": SECRET}))
    body = '{"alerts": [{"_index": "alertes-é", "_id": "ü1"}]}'.encode(encoding)
    response = client.post("/hooks/soc", content=body, headers=signed_headers(SECRET, body))
    assert response.status_code == 400 and response.json()["error"] == "invalid_json", response.text
    assert recorder.events == []


def test_an_authentication_header_sent_twice_is_rejected():
    recorder = Recorder()
    client = TestClient(create_app(config(), recorder, {"soc": SECRET}))
    body = orjson.dumps({"alerts": [{"_index": "alerts-1", "_id": "a1"}]})
    good = signed_headers(SECRET, body)
    doubled = [*good.items(), ("x-attackmap-signature", "sha256=" + "ab" * 32)]
    response = client.post("/hooks/soc", content=body, headers=doubled)
    assert response.status_code == 400 and response.json()["error"] == "duplicate_header"
    assert recorder.events == []


# --------------------------------------------------------------------------- a real server, slow clients


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, Recorder]]:
    """The webhook on a real uvicorn server (h11 with the slow-client guard), in a thread."""
    import uvicorn

    recorder = Recorder()
    app = create_app(config(body_timeout_seconds=1.0), recorder, {"soc": SECRET})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=slow_client_guard(1.0), log_level="critical")
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port, recorder
    uv.should_exit = True
    thread.join(timeout=10)


def _trickle(port: int, data: bytes, pause: float, budget: float) -> tuple[bytes, float]:
    """Send `data` a byte at a time every `pause` s; (what the server answered, seconds until it closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # closed under us
                break
            time.sleep(pause)
            if time.monotonic() - started > budget:
                break
        sock.settimeout(max(0.1, budget - (time.monotonic() - started)))
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.monotonic() - started


def _served_normally(port: int) -> int:
    import httpx

    body = orjson.dumps({"alerts": [{"_index": "alerts-1", "_id": f"n-{time.monotonic_ns()}"}]})
    url = f"http://127.0.0.1:{port}/hooks/soc"
    return httpx.post(url, content=body, headers=signed_headers(SECRET, body)).status_code


def test_slowloris_request_head_is_cut_by_the_header_timeout(server):
    port, _ = server
    head = b"POST /hooks/soc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    results: list[tuple[bytes, float]] = []
    slow = threading.Thread(target=lambda: results.append(_trickle(port, head, 0.05, budget=8.0)))
    slow.start()
    time.sleep(0.3)
    assert _served_normally(port) == 202, "others are served while a slow client trickles"
    slow.join()
    answer, seconds = results[0]
    assert answer == b"" and seconds < 3.0, (answer[:200], seconds)


def test_a_trickled_body_gets_408_after_the_body_timeout(server):
    port, recorder = server
    body = orjson.dumps({"alerts": [{"_index": "alerts-1", "_id": "slow-1"}]})
    headers = signed_headers(SECRET, body)
    head = b"POST /hooks/soc HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in {**headers, "content-length": str(len(body))}.items()
    )
    before = len(recorder.events)
    with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
        sock.sendall(head + b"\r\n")
        started = time.monotonic()
        answer = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(4096)
            if answer:
                break
        seconds = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert seconds < 3.0 and len(recorder.events) == before


def test_huge_headers_are_refused_by_the_real_server(server):
    port, _ = server
    head = b"POST /hooks/soc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: " + b"h" * 200_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer[:200]
    assert _served_normally(port) == 202


def test_the_guard_closes_a_connection_that_sends_nothing(server):
    port, _ = server
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert sock.recv(16) == b""
    assert time.monotonic() - started < 3.0


def test_a_bad_item_is_reported_and_the_good_alerts_beside_it_accepted():
    recorder = Recorder()
    client = TestClient(create_app(config(), recorder, {"soc": SECRET}))
    items = [{"_index": "alerts-1", "_id": "a1"}, 42, {"no": "id"}, "attackmap.alert/alerts-1/a2"]
    body = orjson.dumps({"alerts": items})
    response = client.post("/hooks/soc", content=body, headers=signed_headers(SECRET, body))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2 and len(recorder.events) == 2
    assert [r["item"] for r in response.json()["rejected"]] == [1, 2]
    assert "no _index/_id" in response.json()["rejected"][1]["reason"]
