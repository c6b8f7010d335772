"""From exporter settings (`outputs.exports` in workflows.yaml, or the CLI's options) to sinks, and the
fan-out the flows and the event worker hand their enriched alerts to.

Adding a destination is a settings model in `mitre.config`, a sink class, and one entry in
`SINK_BUILDERS`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mitre.catalog import Catalog
from mitre.config import (
    DeliverySettings,
    ElasticsearchOutput,
    EventsFileOutput,
    ExportOutput,
    FederationOutput,
    HecOutput,
    TaxiiOutput,
)
from mitre.io.exports.delivery import Delivery, RetryPolicy
from mitre.io.exports.event import CommonEvent, NotAnEnrichedAlert, from_enriched
from mitre.io.exports.sink import SendResult, Sink

log = logging.getLogger("attackmap.exports")


class ExportConfigError(ValueError):
    """An exporter cannot be built from its settings (a token variable unset, …)."""


class EventsFileSink:
    """Common events appended to an NDJSON file (a local file: only a full disk stops it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        return f"events-{self.path.name}"

    def send(self, events: Iterable[CommonEvent]) -> SendResult:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(b"".join(e.to_json() + b"\n" for e in events))
        return SendResult()

    def close(self) -> None:
        return None


def _secret(variable: str | None, what: str, *, required: bool) -> str | None:
    if not variable:
        return None
    value = os.environ.get(variable)
    if required and not value:
        raise ExportConfigError(f"{what}: environment variable {variable} is not set")
    return value


def _verify(verify_tls: bool, ca_file: Path | None) -> bool | str:
    return str(ca_file) if ca_file is not None else verify_tls


def _hec(settings: HecOutput, catalog: Catalog) -> Sink:
    from mitre.io.exports.hec import HecSink

    token = _secret(settings.token_env, "HEC", required=True) or ""
    return HecSink(
        settings.url,
        token,
        index=settings.index,
        source=settings.source,
        sourcetype=settings.sourcetype,
        host=settings.host,
        ack=settings.ack,
        verify=_verify(settings.verify_tls, settings.ca_file),
    )


def _taxii(settings: TaxiiOutput, catalog: Catalog) -> Sink:
    from mitre.io.exports.taxii import TaxiiSink

    return TaxiiSink(
        settings.collection_url,
        catalog,
        user=_secret(settings.user_env, "TAXII user", required=False),
        password=_secret(settings.password_env, "TAXII password", required=False),
        tlp=settings.tlp,
        verify=_verify(settings.verify_tls, settings.ca_file),
    )


def _elasticsearch(settings: ElasticsearchOutput, catalog: Catalog) -> Sink:
    from mitre.io.elastic import es_client
    from mitre.io.exports.elastic import ElasticExportSink

    return ElasticExportSink(es_client(settings.url), settings.target, data_stream=settings.data_stream)


def _events_file(settings: EventsFileOutput, catalog: Catalog) -> Sink:
    return EventsFileSink(settings.path)


def federation_sink(settings: FederationOutput) -> Sink:
    """A peer's signed feed (`attackmap federation send` builds it from its options, the flows from
    `outputs.exports`): signing key, mutual TLS, tenant filter."""
    from mitre.io.federation.outbound import FederationSink, mtls_client
    from mitre.io.federation.signing import Ed25519Signer, HmacSigner, Signer

    signer: Signer
    if settings.private_key is None:
        secret = _secret(settings.hmac_secret_env, "federation HMAC secret", required=True) or ""
        if len(secret) < 16:
            raise ExportConfigError(f"federation: {settings.hmac_secret_env} must hold 16+ characters")
        signer = HmacSigner(settings.key_id, secret.encode())
    try:
        if settings.private_key is not None:
            signer = Ed25519Signer.from_pem(settings.key_id, settings.private_key)
        client = mtls_client(settings.ca_file, settings.cert_file, settings.key_file)
    except (OSError, ValueError) as exc:  # a key or certificate file missing or not what it should be
        raise ExportConfigError(f"federation: {exc}") from exc
    return FederationSink(
        settings.url, signer, client, tenants=settings.tenants, max_request_bytes=settings.max_request_bytes
    )


def _federation(settings: FederationOutput, catalog: Catalog) -> Sink:
    return federation_sink(settings)


SINK_BUILDERS: Mapping[str, Callable[[Any, Catalog], Sink]] = {
    "hec": _hec,
    "taxii": _taxii,
    "elasticsearch": _elasticsearch,
    "events": _events_file,
    "federation": _federation,
}


def build_sink(settings: ExportOutput, catalog: Catalog) -> Sink:
    return SINK_BUILDERS[settings.type](settings, catalog)


def retry_policy(delivery: DeliverySettings) -> RetryPolicy:
    return RetryPolicy(
        max_seconds=delivery.max_retry_seconds,
        give_up_after=delivery.give_up_after_hours * 3600,
        batch_size=delivery.batch_size,
    )


class Exports:
    """Every configured export of a workflow, each spooled and sent in the background.

    `offer_alerts` converts enriched alerts to common events once and hands them to every delivery;
    it only writes to local spool files, so the caller (a flow mapping a batch) never waits on a sink.
    """

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self.not_exported: dict[str, int] = {}

    def offer_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> int:
        events: list[CommonEvent] = []
        for alert in alerts:
            try:
                events.append(from_enriched(alert))
            except NotAnEnrichedAlert as exc:
                reason = str(exc).split(":")[0]
                self.not_exported[reason] = self.not_exported.get(reason, 0) + 1
        for delivery in self.deliveries:
            delivery.offer(events)
        return len(events)

    def close(self, timeout: float = 10.0) -> bool:
        return all([d.close(timeout=timeout) for d in self.deliveries])


def open_exports(
    exports: Iterable[ExportOutput], delivery: DeliverySettings, catalog: Catalog, home: Path
) -> Exports | None:
    """Start a background delivery per configured export; None when there is none."""
    settings = list(exports)
    if not settings:
        return None
    spool = delivery.spool_dir or home / "spool"
    deliveries = [Delivery(build_sink(s, catalog), spool, policy=retry_policy(delivery)) for s in settings]
    for item in deliveries:
        item.start()
    return Exports(deliveries)
