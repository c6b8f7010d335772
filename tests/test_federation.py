"""Signed federation over real mutual TLS (a throwaway CA made here): delivery, retry after an outage,
de-duplication, the payloads that must be refused with nothing emitted, and the workflow's federation
export fed by the service layer the flows, the event worker and the webhook path run."""

from __future__ import annotations

import json
import multiprocessing
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.routing import Route
from typer.testing import CliRunner

from devtools.asgi import ThreadedServer, serving
from devtools.tls import Issued, ThrowawayCA
from mitre.assemble import EngineOptions, build_engine
from mitre.cli import app as cli
from mitre.config import FederationOutput, load_workflows
from mitre.io.exports.delivery import Delivery, RetryPolicy
from mitre.io.exports.event import CommonEvent, Provenance
from mitre.io.exports.registry import ExportConfigError, federation_sink
from mitre.io.exports.sink import SendResult
from mitre.io.federation.envelope import Envelope
from mitre.io.federation.inbound import Inbound
from mitre.io.federation.outbound import FederationSink, mtls_client
from mitre.io.federation.signing import (
    Ed25519Signer,
    HmacSigner,
    PeersFile,
    private_key_pem,
    public_key_text,
    signed_headers,
)
from mitre.io.federation.store import ReceiverStore
from mitre.service import Runtime, enrich_bare, make_runtime
from tests.helpers import LSASS_COMMAND, kibana_alert

SECRET = "s" * 32
PATH = "/v1/federation/inbound"


@dataclass
class Receiver:
    server: ThreadedServer
    peers_file: Path
    emitted: list[CommonEvent] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url + PATH


@dataclass
class World:
    ca: ThrowawayCA
    client_cert: Path
    client_key: Path
    signer: Ed25519Signer
    receiver: Receiver

    def client(self) -> httpx.Client:
        return mtls_client(self.ca.ca_file, self.client_cert, self.client_key)


def _peers(path: Path, *keys: dict, tenants: Sequence[str] = ("acme",), max_body: int = 64_000) -> None:
    document = {"peers": [{"name": "east", "tenants": list(tenants), "keys": list(keys), "max_body_bytes": max_body}]}
    path.write_text(yaml.safe_dump(document))


def _ed_key(key_id: str, signer_key: Ed25519PrivateKey) -> dict:
    return {"key_id": key_id, "algorithm": "ed25519", "public_key": public_key_text(signer_key)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("federation")
    ca = ThrowawayCA(root / "pki")
    server_cert = ca.issue("receiver", server=True)
    client = ca.issue("east", server=False)
    key = Ed25519PrivateKey.generate()
    peers_file = root / "peers.yaml"
    _peers(peers_file, _ed_key("east-1", key), {"key_id": "east-hmac", "algorithm": "hmac-sha256", "secret_env": "X"})
    emitted: list[CommonEvent] = []
    inbound = Inbound(
        PeersFile(peers_file, environ={"X": SECRET}, check_every=0),
        ReceiverStore(root / "receiver.sqlite"),
        lambda peer, findings: emitted.extend(findings),
    )
    app = Starlette(routes=[Route(PATH, inbound.handle, methods=["POST"])])
    server = ThreadedServer(app, certfile=server_cert.cert, keyfile=server_cert.key, ca_certs=ca.ca_file)
    server.start()
    try:
        yield World(ca, client.cert, client.key, Ed25519Signer("east-1", key), Receiver(server, peers_file, emitted))
    finally:
        server.stop()


def _finding(n: int, tenant: str | None = "acme") -> CommonEvent:
    return CommonEvent(
        id=f"alert-{n}",
        tenant=tenant,
        timestamp="2026-12-01T10:00:00Z",  # type: ignore[arg-type]
        technique_ids=("T1003.001",),
        provenance=Provenance(provenance_hash=f"h{n}"),
    )


def _body(*findings: CommonEvent) -> bytes:
    return Envelope(findings=findings).model_dump_json().encode()


def test_findings_are_delivered_once_over_mutual_tls(world: World) -> None:
    before = len(world.receiver.emitted)
    sink = FederationSink(world.receiver.url, world.signer, world.client(), max_request_bytes=2048)
    findings = [_finding(i) for i in range(12)]
    assert sink.send(findings) == SendResult(), "all delivered (in several requests: 2 KiB each at most)"
    assert [f.id for f in world.receiver.emitted[before:]] == [f"alert-{i}" for i in range(12)]
    assert world.receiver.emitted[-1] == findings[-1], "the common event arrives as it was sent"
    # The answer was lost and the batch is sent again: the receiver keeps keys, nothing is emitted twice.
    assert not sink.send(findings).rejected
    assert len(world.receiver.emitted) == before + 12
    sink.close()


def test_a_client_without_a_certificate_of_the_ca_gets_no_connection(world: World, tmp_path: Path) -> None:
    stranger = ThrowawayCA(tmp_path / "other").issue("mallory", server=False)
    body = _body(_finding(99))
    headers = signed_headers(world.signer, "acme", body)
    for client in (
        httpx.Client(verify=ssl.create_default_context(cafile=str(world.ca.ca_file))),
        mtls_client(world.ca.ca_file, stranger.cert, stranger.key),
    ):
        with client, pytest.raises(httpx.HTTPError):
            client.post(world.receiver.url, content=body, headers=headers).raise_for_status()


def test_forged_stale_replayed_oversized_and_wrong_tenant_payloads_are_refused(world: World) -> None:
    before = len(world.receiver.emitted)
    url = world.receiver.url
    forger = Ed25519Signer("east-1", Ed25519PrivateKey.generate())
    body = _body(_finding(100))
    good = signed_headers(world.signer, "acme", body)
    attempts = {
        "forged": (body, signed_headers(forger, "acme", body), 401, "bad_signature"),
        "tampered": (_body(_finding(101)), good, 401, "bad_signature"),
        "unknown key": (body, signed_headers(Ed25519Signer("west-9", forger.private_key), "acme", body), 401, None),
        "stale": (body, signed_headers(world.signer, "acme", body, timestamp=time.time() - 3600), 401, "stale"),
        "oversized": (
            big := _body(*(_finding(i) for i in range(2000))),
            signed_headers(world.signer, "acme", big),
            413,
            None,
        ),
        "wrong tenant header": (
            (other := _body(_finding(102, tenant="globex"))),
            signed_headers(world.signer, "globex", other),
            403,
            "wrong_tenant",
        ),
        "wrong tenant inside": (other, signed_headers(world.signer, "acme", other), 403, "wrong_tenant"),
        "no tenant inside": (
            (untenanted := _body(_finding(104, tenant=None))),
            signed_headers(world.signer, "acme", untenanted),
            403,
            "wrong_tenant",
        ),
        "hmac forged": (body, signed_headers(HmacSigner("east-hmac", b"x" * 32), "acme", body), 401, None),
    }
    with world.client() as client:
        for name, (payload, headers, status, code) in attempts.items():
            response = client.post(url, content=payload, headers=headers)
            assert response.status_code == status, (name, response.text)
            if code:
                assert response.json()["error"] == code, name
        first = client.post(url, content=body, headers=good)
        replay = client.post(url, content=body, headers=good)
        assert first.status_code == 200 and replay.status_code == 409 and replay.json()["error"] == "replay"
        hmac_body = _body(_finding(103))
        accepted = client.post(
            url, content=hmac_body, headers=signed_headers(HmacSigner("east-hmac", SECRET.encode()), "acme", hmac_body)
        )
        assert accepted.status_code == 200
    assert [f.id for f in world.receiver.emitted[before:]] == ["alert-100", "alert-103"], "only the genuine ones"


def test_keys_rotate_without_a_restart(world: World) -> None:
    new_key = Ed25519PrivateKey.generate()
    old_entry = _ed_key("east-1", world.signer.private_key)
    hmac_entry = {"key_id": "east-hmac", "algorithm": "hmac-sha256", "secret_env": "X"}
    body = _body(_finding(200))
    new_signer = Ed25519Signer("east-2", new_key)
    with world.client() as client:
        assert (
            client.post(world.receiver.url, content=body, headers=signed_headers(new_signer, "acme", body)).status_code
            == 401
        )
        _peers(world.receiver.peers_file, old_entry, _ed_key("east-2", new_key), hmac_entry)
        time.sleep(0.01)
        both = [signed_headers(s, "acme", body) for s in (world.signer, new_signer)]
        assert [client.post(world.receiver.url, content=body, headers=h).status_code for h in both] == [200, 200]
        _peers(world.receiver.peers_file, _ed_key("east-2", new_key), hmac_entry)
        time.sleep(0.01)
        retired = client.post(world.receiver.url, content=body, headers=signed_headers(world.signer, "acme", body))
        assert retired.status_code == 401 and retired.json()["error"] == "unknown_key"
        _peers(world.receiver.peers_file, old_entry, hmac_entry)  # as the other tests expect it


def _late_receiver(world: World, tmp_path: Path) -> tuple[Starlette, ThreadedServer, Issued, list[CommonEvent]]:
    """An inbound endpoint on a free port, not started yet: a peer that is down."""
    emitted: list[CommonEvent] = []
    inbound = Inbound(
        PeersFile(world.receiver.peers_file, environ={"X": SECRET}),
        ReceiverStore(tmp_path / "r.sqlite"),
        lambda peer, findings: emitted.extend(findings),
    )
    app = Starlette(routes=[Route(PATH, inbound.handle, methods=["POST"])])
    server_cert = world.ca.issue("late", server=True)
    down = ThreadedServer(app, certfile=server_cert.cert, keyfile=server_cert.key, ca_certs=world.ca.ca_file)
    return app, down, server_cert, emitted


def test_a_peer_that_is_down_gets_the_spool_when_it_is_back(world: World, tmp_path: Path) -> None:
    app, down, cert, emitted = _late_receiver(world, tmp_path)
    sink = FederationSink(down.url + PATH, world.signer, world.client())
    delivery = Delivery(sink, tmp_path / "spool", policy=RetryPolicy(initial_seconds=0.05, max_seconds=0.2))
    delivery.offer([_finding(i) for i in range(300, 320)])
    assert not delivery.drain(timeout=0.5), "nothing lost while the peer is down"
    assert delivery.stats.delivered == 0 and delivery.stats.transient_failures >= 1
    with serving(app, port=down.port, certfile=cert.cert, keyfile=cert.key, ca_certs=world.ca.ca_file):
        assert delivery.drain(timeout=10)
        assert delivery.close(timeout=5)
    assert len(emitted) == 20 and delivery.stats.delivered == 20 and delivery.stats.dead_lettered == 0


# ------------------------------------------------- the workflow's federation export, fed by the service layer


def _federating_runtime(world: World, tmp_path: Path, url: str) -> Runtime:
    """What a flow, the event worker or the webhook path runs, with `outputs.exports` naming the peer."""
    private = tmp_path / "east-1.pem"
    private.write_bytes(private_key_pem(world.signer.private_key))
    peer = {
        "type": "federation",
        "url": url,
        "key_id": "east-1",
        "private_key": str(private),
        "ca_file": str(world.ca.ca_file),
        "cert_file": str(world.client_cert),
        "key_file": str(world.client_key),
        "tenants": ["acme"],
    }
    outputs = {"exports": [peer], "delivery": {"spool_dir": str(tmp_path / "spool"), "max_retry_seconds": 0.2}}
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text(
        yaml.safe_dump(
            {"version": 1, "workflows": [{"name": "fed", "mapper": {"knowledge_base": []}, "outputs": outputs}]}
        )
    )
    engine = build_engine(load_workflows(workflows), options=EngineOptions(cache_dir=tmp_path / "cache"))
    return make_runtime(engine, es=None)


def _alert(n: int, tenant: str = "acme") -> dict:
    alert = kibana_alert(rule_name="Dump", command_line=LSASS_COMMAND, process_name="rundll32.exe")
    alert["kibana.alert.uuid"] = f"fed-{tenant}-{n}"
    alert["kibana.space_ids"] = [tenant]
    return alert


def test_an_alert_enriched_by_the_service_reaches_the_peer_signed_once(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    runtime = _federating_runtime(world, tmp_path, world.receiver.url)
    before = len(world.receiver.emitted)
    first = enrich_bare(runtime, [_alert(1), _alert(1, tenant="globex")])
    again = enrich_bare(runtime, [_alert(1)])  # the same alert enriched again: the same finding
    assert first.summary.enriched == 2 and again.summary.enriched == 1
    assert runtime.exports is not None and runtime.exports.close(timeout=30)
    (finding,) = world.receiver.emitted[before:]  # verified by the peer (key east-1), emitted once
    assert (finding.id, finding.tenant) == ("fed-acme-1", "acme") and "T1003.001" in finding.technique_ids
    enriched = first.alerts[0]["attackmap"]
    assert finding.execution_fingerprint == enriched["execution_fingerprint"]
    assert finding.nist_800_53_controls == tuple(enriched.get("compliance", {}).get("nist_800_53_controls", ()))
    (delivery,) = runtime.exports.deliveries
    assert delivery.stats.skipped == {"tenant 'globex' is not federated to this peer": 1}


def test_a_peer_down_and_back_loses_nothing_the_service_enriched(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    app, down, cert, emitted = _late_receiver(world, tmp_path)
    runtime = _federating_runtime(world, tmp_path, down.url + PATH)
    assert runtime.exports is not None
    (delivery,) = runtime.exports.deliveries
    result = enrich_bare(runtime, [_alert(n) for n in range(15)])
    assert result.summary.enriched == 15, "mapping did not wait for the peer"
    deadline = time.monotonic() + 10
    while delivery.stats.transient_failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delivery.stats.transient_failures >= 2 and delivery.stats.delivered == 0
    with serving(app, port=down.port, certfile=cert.cert, keyfile=cert.key, ca_certs=world.ca.ca_file):
        assert runtime.exports.close(timeout=20)
    assert sorted(f.id for f in emitted) == sorted(f"fed-acme-{n}" for n in range(15))
    assert delivery.stats.dead_lettered == 0


def _store(where: str) -> Any:
    """A receiver's memory: the SQLite file (one host) or Redis (every host); opened in the receiver's process."""
    if where.startswith("redis://"):
        from mitre.cache_redis import redis_client
        from mitre.io.replay import RedisReceiverStore

        return RedisReceiverStore(redis_client(where))
    return ReceiverStore(Path(where))


def _claim(where: str, nonce: str, results: multiprocessing.Queue) -> None:
    results.put(_store(where).claim_nonce("east", nonce, time.time(), 60))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_nonce_store_is_shared_by_receiver_processes(kind: str, tmp_path: Path, request) -> None:
    if kind == "redis":
        request.getfixturevalue("redis_client")  # an empty database
        where = request.getfixturevalue("redis_url")
    else:
        where = str(tmp_path / "nonces.sqlite")
    _store(where)
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_claim, args=(where, "n-1", results)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert sorted(results.get(timeout=5) for _ in workers) == [False, False, False, True]
    store = _store(where)
    assert store.new_keys("east", ["f1", "f2", "f1"]) == {"f1", "f2"}
    assert store.new_keys("west", ["f2", "f3"]) == {"f3"}
    store.forget(["f3"])
    assert store.new_keys("west", ["f3"]) == {"f3"}


def test_cli_keygen_and_send(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path))
    runner = CliRunner()
    private = tmp_path / "east-cli.pem"
    made = runner.invoke(cli, ["federation", "keygen", "--key-id", "east-cli", "--out", str(private)])
    assert made.exit_code == 0, made.output
    entry = yaml.safe_load(made.stdout)[0]
    assert entry["key_id"] == "east-cli" and oct(private.stat().st_mode)[-3:] == "600"
    old_entry = _ed_key("east-1", world.signer.private_key)
    hmac_entry = {"key_id": "east-hmac", "algorithm": "hmac-sha256", "secret_env": "X"}
    _peers(world.receiver.peers_file, old_entry, hmac_entry, entry)
    enriched = tmp_path / "enriched.ndjson"
    alert = {
        "kibana.alert.uuid": "cli-1",
        "@timestamp": "2026-12-01T10:00:00Z",
        "threat": {"technique": {"id": ["T1059"]}, "tactic": {"id": ["TA0002"]}},
        "attackmap": {"tenant": "acme", "provenance_hash": "cli", "techniques": []},
    }
    enriched.write_text(json.dumps(alert) + "\nnot json\n")
    before = len(world.receiver.emitted)
    time.sleep(0.01)
    args = ["federation", "send", str(enriched), "--url", world.receiver.url, "--key-id", "east-cli"]
    args += ["--ca", str(world.ca.ca_file), "--cert", str(world.client_cert), "--key", str(world.client_key)]
    sent = runner.invoke(cli, [*args, "--private-key", str(private), "--timeout", "10"])
    assert sent.exit_code == 0, sent.output
    assert [f.id for f in world.receiver.emitted[before:]] == ["cli-1"]
    _peers(world.receiver.peers_file, old_entry, hmac_entry)


def test_a_federation_export_needs_https_one_signing_key_and_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"type": "federation", "url": "https://peer.example/v1/federation/inbound", "key_id": "k"}
    for wrong, message in (
        ({}, "exactly one"),
        ({"private_key": "k.pem", "hmac_secret_env": "S"}, "exactly one"),
        ({"hmac_secret_env": "S", "url": "http://peer.example/"}, "https"),
        ({"hmac_secret_env": "S", "key_file": "me.key"}, "cert_file"),
    ):
        with pytest.raises(ValidationError, match=message):
            FederationOutput.model_validate({**base, **wrong})
    monkeypatch.setenv("SHORT_SECRET", "too-short")
    with pytest.raises(ExportConfigError, match="16"):
        federation_sink(FederationOutput.model_validate({**base, "hmac_secret_env": "SHORT_SECRET"}))
