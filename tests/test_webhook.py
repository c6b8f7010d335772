"""The signed-webhook receiver (mitre/io/webhook.py): authentication, limits, payload shapes, emission."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mitre.config import Trigger, WebhookSettings, Workflow, WorkflowsFile
from mitre.io.events import AlertRef, alert_event, alert_event_id, parse_ref
from mitre.io.webhook import create_app, extract_refs, sign, signed_headers

SECRET = b"test-secret-0123456789abcdef"
NOW = 1_800_000_000.0


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    async def __call__(self, events: Sequence[dict[str, Any]]) -> None:
        if self.fail:
            raise ConnectionError("prefect down")
        self.events.extend(events)


def config(**webhook: Any) -> WorkflowsFile:
    return WorkflowsFile(
        workflows=[Workflow(name="soc", trigger=Trigger(webhook=WebhookSettings(**webhook))), Workflow(name="other")]
    )


def client(recorder: Recorder, clock: list[float] | None = None, **webhook: Any) -> TestClient:
    now = clock or [NOW]
    app = create_app(config(**webhook), recorder, {"soc": SECRET, "other": SECRET}, clock=lambda: now[0])
    return TestClient(app)


def body_for(*ids: str, index: str = "alerts-1") -> bytes:
    return orjson.dumps({"alerts": [{"_index": index, "_id": i, "kibana.alert.risk_score": 80} for i in ids]})


def post(c: TestClient, body: bytes, headers: dict[str, str], path: str = "/hooks/soc") -> Any:
    return c.post(path, content=body, headers=headers)


def test_signed_request_emits_one_event_per_alert_with_derived_ids() -> None:
    rec = Recorder()
    body = body_for("a1", "a2", "a1")
    resp = post(client(rec), body, {**signed_headers(SECRET, body, timestamp=NOW), "X-Attackmap-Tenant": "soc-space"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == 2
    assert [e["id"] for e in rec.events] == [
        str(alert_event_id("alerts-1", "a1")),
        str(alert_event_id("alerts-1", "a2")),
    ]
    event = rec.events[0]
    assert event["event"] == "security.alert.high-risk"
    assert event["resource"]["prefect.resource.id"] == "attackmap.alert/alerts-1/a1"
    assert event["resource"]["attackmap.tenant"] == "soc-space"
    assert event["payload"] == {"index": "alerts-1", "id": "a1", "tenant": "soc-space", "workflow": "soc"}


def test_event_ids_are_stable_across_processes() -> None:
    # uuid5 over a fixed namespace: a retry from another process produces the same id.
    assert alert_event_id("i", "x") == uuid.uuid5(uuid.UUID("6f1c7a52-3b1e-5f0c-9a57-2d0f8e4c1b90"), "i/x")
    assert alert_event("e", AlertRef("i", "x"))["id"] == str(alert_event_id("i", "x"))


@pytest.mark.parametrize(
    "mutate, status, code",
    [
        (lambda h, b: {**h, "x-attackmap-signature": "sha256=" + "0" * 64}, 401, "bad_signature"),
        (lambda h, b: {**h, "x-attackmap-signature": sign(b"wrong-secret-xxxxxx", h["x-attackmap-timestamp"], b)},
         401, "bad_signature"),
        (lambda h, b: {k: v for k, v in h.items() if k != "x-attackmap-signature"}, 401, "unsigned"),
        (lambda h, b: {k: v for k, v in h.items() if k != "x-attackmap-nonce"}, 401, "no_nonce"),
        (lambda h, b: {**h, "x-attackmap-timestamp": "yesterday"}, 401, "bad_timestamp"),
    ],
)  # fmt: skip
def test_forged_or_incomplete_requests_are_rejected_and_emit_nothing(mutate: Any, status: int, code: str) -> None:
    rec = Recorder()
    body = body_for("a1")
    resp = post(client(rec), body, mutate(signed_headers(SECRET, body, timestamp=NOW), body))
    assert resp.status_code == status
    assert resp.json()["error"] == code
    assert rec.events == []


def test_tampered_body_is_rejected() -> None:
    rec = Recorder()
    headers = signed_headers(SECRET, body_for("a1"), timestamp=NOW)
    resp = post(client(rec), body_for("a2"), headers)
    assert resp.status_code == 401 and rec.events == []


@pytest.mark.parametrize("skew", [-301, 301, -86400])
def test_stale_timestamps_are_rejected(skew: float) -> None:
    rec = Recorder()
    body = body_for("a1")
    resp = post(client(rec), body, signed_headers(SECRET, body, timestamp=NOW + skew))
    assert resp.status_code == 401 and resp.json()["error"] == "stale"
    assert rec.events == []


def test_window_is_configurable() -> None:
    rec = Recorder()
    body = body_for("a1")
    resp = post(client(rec, tolerance_seconds=30), body, signed_headers(SECRET, body, timestamp=NOW - 60))
    assert resp.status_code == 401
    resp = post(client(rec, tolerance_seconds=120), body, signed_headers(SECRET, body, timestamp=NOW - 60))
    assert resp.status_code == 202


def test_replayed_nonce_and_replayed_signature_are_rejected() -> None:
    rec = Recorder()
    c = client(rec)
    body = body_for("a1")
    headers = signed_headers(SECRET, body, timestamp=NOW, nonce="n-1")
    assert post(c, body, headers).status_code == 202
    assert len(rec.events) == 1
    again = post(c, body, headers)
    assert again.status_code == 409 and again.json()["error"] == "replay"
    # Same captured request with a fresh nonce: the signature was seen → still a replay.
    assert post(c, body, {**headers, "x-attackmap-nonce": "n-2"}).status_code == 409
    # Same nonce on a different, validly signed body: the nonce was used.
    other = body_for("a2")
    assert post(c, other, signed_headers(SECRET, other, timestamp=NOW, nonce="n-1")).status_code == 409
    assert len(rec.events) == 1


def test_nonces_expire_after_the_window() -> None:
    rec = Recorder()
    clock = [NOW]
    c = client(rec, clock, tolerance_seconds=10)
    body = body_for("a1")
    assert post(c, body, signed_headers(SECRET, body, timestamp=NOW, nonce="n")).status_code == 202
    clock[0] = NOW + 100
    other = body_for("a2")
    assert post(c, other, signed_headers(SECRET, other, timestamp=NOW + 100, nonce="n")).status_code == 202


def test_oversized_bodies_get_413_before_anything_else() -> None:
    rec = Recorder()
    c = client(rec, max_body_bytes=1000)
    body = body_for(*[f"alert-{i}" for i in range(100)])
    assert len(body) > 1000
    resp = post(c, body, signed_headers(SECRET, body, timestamp=NOW))
    assert resp.status_code == 413
    # Streamed without Content-Length: cut off while reading.
    resp = c.post(
        "/hooks/soc", content=iter([body[:600], body[600:]]), headers=signed_headers(SECRET, body, timestamp=NOW)
    )
    assert resp.status_code == 413
    assert rec.events == []


def test_too_many_alerts_get_413() -> None:
    rec = Recorder()
    body = body_for("a", "b", "c")
    resp = post(client(rec, max_alerts=2), body, signed_headers(SECRET, body, timestamp=NOW))
    assert resp.status_code == 413 and rec.events == []


def test_unknown_workflow_invalid_json_and_empty_payloads() -> None:
    rec = Recorder()
    c = client(rec)
    body = body_for("a1")
    assert post(c, body, signed_headers(SECRET, body, timestamp=NOW), "/hooks/nope").status_code == 404
    bad = b"{not json"
    assert post(c, bad, signed_headers(SECRET, bad, timestamp=NOW)).status_code == 400
    empty = b'{"alerts": []}'
    assert post(c, empty, signed_headers(SECRET, empty, timestamp=NOW)).status_code == 422
    noid = b'{"alerts": [{"message": "x"}]}'
    assert post(c, noid, signed_headers(SECRET, noid, timestamp=NOW)).status_code == 422
    assert rec.events == []


def test_default_route_uses_the_first_enabled_workflow() -> None:
    rec = Recorder()
    body = body_for("a1")
    assert post(client(rec), body, signed_headers(SECRET, body, timestamp=NOW), "/hooks").status_code == 202
    assert rec.events[0]["payload"]["workflow"] == "soc"


def test_emit_failure_is_503_so_the_sender_retries() -> None:
    rec = Recorder(fail=True)
    body = body_for("a1")
    assert post(client(rec), body, signed_headers(SECRET, body, timestamp=NOW)).status_code == 503


def test_secret_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    c = client(rec)
    body = body_for("a1")
    post(c, body, signed_headers(SECRET, body, timestamp=NOW))
    post(c, body, {**signed_headers(SECRET, body, timestamp=NOW), "x-attackmap-signature": "sha256=00"})
    assert SECRET.decode() not in caplog.text
    assert "rejected" in caplog.text


def test_kibana_payload_shapes_and_tenant() -> None:
    kibana = {
        "alerts": [
            {"_id": "u1", "_index": ".internal.alerts-security.alerts-soc-000001", "kibana.space_ids": ["soc"]},
            {"kibana": {"alert": {"uuid": "u2"}, "space_ids": ["blue"]}},
        ]
    }
    refs = extract_refs(kibana, None)
    assert refs == [
        AlertRef(".internal.alerts-security.alerts-soc-000001", "u1", "soc"),
        AlertRef(".alerts-security.alerts-blue", "u2", "blue"),
    ]
    assert extract_refs(["attackmap.alert/idx/a/b"], "t") == [AlertRef("idx", "a/b", "t")]
    assert extract_refs({"index": "i", "id": "x"}, None) == [AlertRef("i", "x")]
    assert extract_refs({"context": {"alerts": [{"_index": "i", "_id": "y"}]}}, "t") == [AlertRef("i", "y", "t")]
    with pytest.raises(ValueError):
        parse_ref("nonsense")


def test_tenant_from_query_and_body() -> None:
    rec = Recorder()
    c = client(rec)
    body = orjson.dumps({"tenant": "body-space", "alerts": [{"_index": "i", "_id": "x"}]})
    assert post(c, body, signed_headers(SECRET, body, timestamp=NOW)).status_code == 202
    assert rec.events[-1]["payload"]["tenant"] == "body-space"
    body2 = body_for("z")
    assert post(c, body2, signed_headers(SECRET, body2, timestamp=NOW), "/hooks/soc?tenant=q").status_code == 202
    assert rec.events[-1]["payload"]["tenant"] == "q"


def test_healthz() -> None:
    assert client(Recorder()).get("/healthz").json() == {"status": "ok", "workflows": ["other", "soc"]}


def test_serve_cli_refuses_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitre.cli import app

    monkeypatch.delenv("ATTACKMAP_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    result = CliRunner().invoke(app, ["serve", "--workflows", "workflows.yaml"])
    assert result.exit_code == 2
    assert "ATTACKMAP_WEBHOOK_SECRET" in result.output
    result = CliRunner().invoke(app, ["serve", "--workflows", "workflows.yaml", "--no-signature"])
    assert result.exit_code == 2 and "mutual TLS" in result.output


def test_signature_format_is_documented_hmac() -> None:
    import hashlib
    import hmac

    ts, body = str(int(time.time())), b'{"a":1}'
    expected = "sha256=" + hmac.new(SECRET, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, ts, body) == expected


def _certs(tmp: Any) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, k: Any, issuer: str, ik: Any, *, ca: bool = False, san: bool = False) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(ik, hashes.SHA256())

    ca_key, server_key, client_key = key(), key(), key()
    files = {
        "ca": cert("attackmap test CA", ca_key, "attackmap test CA", ca_key, ca=True),
        "server": cert("127.0.0.1", server_key, "attackmap test CA", ca_key, san=True),
        "client": cert("kibana", client_key, "attackmap test CA", ca_key),
    }
    out: dict[str, str] = {}
    for label, c in files.items():
        path = tmp / f"{label}.pem"
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[label] = str(path)
    for label, k in (("server_key", server_key), ("client_key", client_key)):
        path = tmp / f"{label}.pem"
        path.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out[label] = str(path)
    return out


def test_serve_with_mutual_tls_requires_a_client_certificate(tmp_path: Any) -> None:
    import os
    import socket
    import ssl
    import subprocess
    import sys

    import httpx

    certs = _certs(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    args = [
        sys.executable, "-c", "from mitre.cli import main; main()", "serve", "--workflows", "workflows.yaml",
        "--port", str(port), "--ssl-certfile", certs["server"], "--ssl-keyfile", certs["server_key"],
        "--ssl-ca-certs", certs["ca"], "--no-signature", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}/healthz"

    def context(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=certs["ca"])
        if with_cert:
            ctx.load_cert_chain(certs["client"], certs["client_key"])
        return ctx

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(url, verify=context(True), timeout=2)
                break
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
        assert resp.status_code == 200
        with pytest.raises(httpx.HTTPError):  # no client certificate: the TLS handshake is refused
            httpx.get(url, verify=context(False), timeout=5).raise_for_status()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_receivers_on_several_machines_share_their_replay_memory_in_redis(redis_client: Any) -> None:
    """Two receivers behind a load balancer: a request accepted by one is a replay at the other."""
    from mitre.io.replay import RedisClaims

    def receiver(rec: Recorder) -> TestClient:
        claims = lambda namespace, window: RedisClaims(redis_client, namespace, window)  # noqa: E731
        return TestClient(create_app(config(), rec, {"soc": SECRET, "other": SECRET}, clock=lambda: NOW, claims=claims))

    east, west = Recorder(), Recorder()
    body = body_for("a1")
    headers = signed_headers(SECRET, body, timestamp=NOW, nonce="n-shared")
    assert post(receiver(east), body, headers).status_code == 202
    again = post(receiver(west), body, headers)
    assert again.status_code == 409 and again.json()["error"] == "replay"
    assert post(receiver(west), body, {**headers, "x-attackmap-nonce": "n-fresh"}).status_code == 409
    assert len(east.events) == 1 and west.events == []
    # The memory expires with the window (2 × tolerance): nothing is kept for ever.
    ttl = redis_client.pttl("attackmap:hook-nonce:soc:n-shared") / 1000
    assert 0 < ttl <= 2 * WebhookSettings().tolerance_seconds
