"""`attackmap export`: enriched NDJSON → the common event format, STIX 2.1, Navigator layers, an HTML
matrix, or straight to Splunk HEC, a TAXII 2.1 collection or Elasticsearch.

Every input line ends exported, not exported with a reason (a STIX bundle has nothing to share for
an alert without a technique), or dead-lettered (not JSON, not an enriched alert, refused by the
receiver). Exit codes: 0 all done; 3 something was dead-lettered; 4 a receiver stayed unreachable for
``--retry-for`` seconds: the rest is spooled and the next export to it sends it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from mitre.assemble import resolve_catalog
from mitre.catalog import Catalog, CatalogError
from mitre.cli.common import EXIT_DEAD_LETTERS, EXIT_OK, CatalogOpt, WorkflowsOpt, err, fail, load_config
from mitre.config import ElasticsearchOutput, ExportOutput, HecOutput, TaxiiOutput
from mitre.io.exports.coverage import Coverage, coverage_of_events
from mitre.io.exports.delivery import Delivery, RetryPolicy
from mitre.io.exports.event import CommonEvent, NotAnEnrichedAlert, from_enriched
from mitre.io.exports.registry import ExportConfigError, build_sink
from mitre.io.ndjson import open_input, open_output

EXIT_SPOOLED = 4
BATCH = 500


class Format(StrEnum):
    EVENT = "event"
    STIX = "stix"
    NAVIGATOR = "navigator"
    MATRIX = "matrix"
    HEC = "hec"
    TAXII = "taxii"
    ELASTICSEARCH = "elasticsearch"


_STREAMING = {Format.HEC, Format.TAXII, Format.ELASTICSEARCH}


class _Input:
    """Enriched alerts read line by line; what is not one goes to the dead-letter file."""

    def __init__(self, path: str, dead_letter: Path) -> None:
        self.path = path
        self.dead_letter = dead_letter
        self.read = 0
        self.dead = 0
        self._handle: Any = None

    def events(self) -> Iterator[CommonEvent]:
        with open_input(self.path) as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                self.read += 1
                try:
                    alert = orjson.loads(line)
                    if not isinstance(alert, dict):
                        raise NotAnEnrichedAlert(f"expected a JSON object, got {type(alert).__name__}")
                    yield from_enriched(alert)
                except (orjson.JSONDecodeError, NotAnEnrichedAlert) as exc:
                    reason = f"not JSON: {exc}" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
                    self._reject(number, reason, line)

    def _reject(self, line: int, reason: str, raw: bytes) -> None:
        self.dead += 1
        if self._handle is None:
            self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.dead_letter.open("ab")
        record = {"source": self.path, "line": line, "reason": reason, "raw": raw.decode("utf-8", "replace").rstrip()}
        self._handle.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _rule_coverage(catalog: Catalog, paths: list[Path]) -> Coverage:
    coverage = Coverage(catalog, f"Rule coverage: {', '.join(p.name for p in paths)}", counted="rules")
    for path in paths:
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = orjson.loads(line)
                if isinstance(row, dict):
                    coverage.add_rule(row)
    return coverage


def _streaming_settings(
    fmt: Format, url: str | None, index: str | None, ack: bool, tlp: str, verify_tls: bool, ca_file: Path | None
) -> ExportOutput:
    if not url and fmt is not Format.ELASTICSEARCH:
        raise fail(f"--format {fmt.value} needs --url")
    if fmt is Format.HEC:
        return HecOutput(type="hec", url=url or "", index=index, ack=ack, verify_tls=verify_tls, ca_file=ca_file)
    if fmt is Format.TAXII:
        return TaxiiOutput(type="taxii", collection_url=url or "", tlp=tlp, verify_tls=verify_tls, ca_file=ca_file)
    return ElasticsearchOutput(type="elasticsearch", url=url, target=index or "logs-attackmap.events-default")


def export(
    input_path: Annotated[str, typer.Argument(metavar="INPUT", help="enriched NDJSON (what `enrich` writes), or -")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="what to produce or where to send")],
    output: Annotated[str, typer.Option("--output", "-o", help="file formats: the file, or - for stdout")] = "-",
    dead_letter: Annotated[
        Path, typer.Option("--dead-letter", help="lines that are not enriched alerts, events a receiver refused")
    ] = Path("export-dead-letter.ndjson"),
    rules: Annotated[
        list[Path] | None, typer.Option("--rules", help="navigator/matrix: also a layer of these rules' coverage")
    ] = None,
    score: Annotated[str, typer.Option(help="navigator: count (alerts per technique) or confidence")] = "count",
    title: Annotated[str, typer.Option(help="navigator/matrix: layer title")] = "attackmap: enriched alerts",
    tlp: Annotated[str, typer.Option(help="stix/taxii: TLP marking (clear, green, amber, red)")] = "amber",
    url: Annotated[
        str | None, typer.Option(help="hec: base URL; taxii: collection URL; elasticsearch: node URL")
    ] = None,
    index: Annotated[str | None, typer.Option(help="hec: index; elasticsearch: data stream or index")] = None,
    ack: Annotated[bool, typer.Option(help="hec: wait for indexer acknowledgement")] = False,
    verify_tls: Annotated[bool, typer.Option(help="verify the receiver's TLS certificate")] = True,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for the receiver's certificate")] = None,
    retry_for: Annotated[float, typer.Option(help="seconds to keep retrying an unreachable receiver")] = 60.0,
    spool_dir: Annotated[Path | None, typer.Option(help="spool for undelivered events ($ATTACKMAP_HOME/spool)")] = None,
    workflows: WorkflowsOpt = None,
    catalog: CatalogOpt = None,
) -> None:
    """Export enriched alerts for SIEMs and sharing communities (credentials from the environment:
    ATTACKMAP_HEC_TOKEN, ATTACKMAP_TAXII_USER / ATTACKMAP_TAXII_PASSWORD)."""
    if input_path != "-" and not Path(input_path).is_file():
        raise fail(f"{input_path}: no such file")
    if score not in ("count", "confidence") or tlp not in ("clear", "green", "amber", "red"):
        raise fail("--score is count or confidence; --tlp is clear, green, amber or red")
    config, env = load_config(workflows)
    try:
        active = resolve_catalog(config, env, catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from exc
    source = _Input(input_path, dead_letter)
    exported = skipped = spooled_left = 0
    try:
        if fmt in _STREAMING:
            settings = _streaming_settings(fmt, url, index, ack, tlp, verify_tls, ca_file)
            try:
                sink = build_sink(settings, active)
            except ExportConfigError as exc:
                raise fail(str(exc)) from exc
            delivery = Delivery(sink, spool_dir or env.home / "spool", policy=RetryPolicy(), dead_letter=dead_letter)
            delivery.start()
            batch: list[CommonEvent] = []
            for event in source.events():
                batch.append(event)
                if len(batch) >= BATCH:
                    delivery.offer(batch)
                    batch = []
            delivery.offer(batch)
            empty = delivery.close(timeout=retry_for)
            stats = delivery.stats
            exported, skipped = stats.delivered, sum(stats.skipped.values())
            source.dead += stats.dead_lettered
            if not empty:
                spooled_left = stats.offered - stats.delivered - stats.dead_lettered - skipped
                err.print(
                    f"[yellow]{sink.name} unreachable ({stats.last_error}); {spooled_left} event(s) stay spooled "
                    f"under {delivery.root} and are sent by the next export to it[/]"
                )
        else:
            exported, skipped = _write_file(fmt, source, output, active, rules or [], score, title, tlp)
    finally:
        source.close()
    err.print(
        f"export {fmt.value}: {source.read} read, {exported} exported, {skipped} not exported (nothing for this "
        f"format), {source.dead} dead-lettered" + (f" to {dead_letter}" if source.dead else "")
    )
    if source.dead:
        raise typer.Exit(EXIT_DEAD_LETTERS)
    raise typer.Exit(EXIT_SPOOLED if spooled_left else EXIT_OK)


def _write_file(
    fmt: Format,
    source: _Input,
    output: str,
    catalog: Catalog,
    rules: list[Path],
    score: str,
    title: str,
    tlp: str,
) -> tuple[int, int]:
    """(exported, skipped) for the formats written to a file."""
    with open_output(output) as out:
        assert out is not None
        if fmt is Format.EVENT:
            n = 0
            for event in source.events():
                out.write(event.to_json() + b"\n")
                n += 1
            return n, 0
        if fmt is Format.STIX:
            from mitre.io.exports.stix import BundleBuilder

            builder = BundleBuilder(catalog, tlp=tlp)  # type: ignore[arg-type]
            shared = [builder.add(e) for e in source.events()]
            out.write(builder.bundle().serialize(pretty=False).encode() + b"\n")
            return sum(shared), len(shared) - sum(shared)
        coverages = [coverage_of_events(catalog, source.events(), title)]
        if rules:
            coverages.append(_rule_coverage(catalog, rules))
        if fmt is Format.NAVIGATOR:
            from mitre.io.exports.navigator import build_layers

            layers = build_layers(coverages, score=score)  # type: ignore[arg-type]
            out.write(orjson.dumps(layers, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            from mitre.io.exports.matrix import render_matrices

            out.write(render_matrices(coverages).encode())
        return coverages[0].total, 0
