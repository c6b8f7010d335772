"""STIX 2.1 bundles (strict stix2-validator) and TAXII 2.1 publication to a real medallion server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from stix2validator import ValidationOptions, validate_string

from devtools.receivers import TAXII_PASSWORD, TAXII_USER, Receiver, many_alerts
from mitre.catalog import Catalog, load_catalog
from mitre.io.exports.delivery import Delivery, RetryPolicy
from mitre.io.exports.event import from_enriched
from mitre.io.exports.stix import build_bundle, sighting_ids
from mitre.io.exports.taxii import TaxiiSink, read_collection

STRICT = ValidationOptions(strict=True, version="2.1")


def assert_strictly_valid(bundle_json: str) -> None:
    result = validate_string(bundle_json, STRICT)
    problems = [str(m) for o in (result if isinstance(result, list) else [result]) for m in [*o.errors, *o.warnings]]
    assert result.is_valid and not problems, problems[:5]


def test_bundle_is_strictly_valid_and_carries_the_attack_references(
    enriched_examples: list[dict[str, Any]], catalog: Catalog
) -> None:
    events = [from_enriched(a) for a in enriched_examples]
    bundle = build_bundle(events, catalog, tlp="green")
    serialized = bundle.serialize()
    assert_strictly_valid(serialized)
    objects = orjson.loads(serialized)["objects"]
    kinds = Counter(o["type"] for o in objects)
    with_techniques = [e for e in events if set(e.technique_ids) & set(catalog.techniques)]
    assert kinds["sighting"] == len(with_techniques) and kinds["identity"] == 1 and kinds["indicator"] > 0
    patterns = {o["pattern"] for o in objects if o["type"] == "indicator"}
    assert not any("user-account" in p or "'10." in p or "'172.16." in p for p in patterns)  # the victim's own
    lsass = next(o for o in objects if o["type"] == "attack-pattern" and o["name"].endswith("LSASS Memory"))
    reference = {"source_name": "mitre-attack", "external_id": "T1003.001"}
    assert lsass["external_references"] == [{**reference, "description": catalog.techniques["T1003.001"].reference}]
    assert lsass["kill_chain_phases"] == [{"kill_chain_name": "mitre-attack", "phase_name": "credential-access"}]
    marking = next(o for o in objects if o["type"] == "marking-definition")
    marked = [o for o in objects if o["type"] not in ("marking-definition", "identity")]  # the producer is public
    assert all(o["object_marking_refs"] == [marking["id"]] for o in marked)
    assert {o["relationship_type"] for o in objects if o["type"] == "relationship"} == {"indicates"}
    assert build_bundle(events, catalog, tlp="green").serialize() == serialized  # reproducible


def test_bundle_for_attack_v19_is_strictly_valid(enriched_examples: list[dict[str, Any]], shared_data: Path) -> None:
    v19 = load_catalog(shared_data / "attack-v19" / "enterprise-attack.json")
    events = [from_enriched(a) for a in enriched_examples]
    serialized = build_bundle(events, v19).serialize()
    assert_strictly_valid(serialized)
    names = {o["name"] for o in orjson.loads(serialized)["objects"] if o["type"] == "attack-pattern"}
    phases = {p["phase_name"] for o in orjson.loads(serialized)["objects"] for p in o.get("kill_chain_phases", ())}
    assert "stealth" in phases and "defense-evasion" not in phases  # tactics come from the catalog in use
    assert names


def test_publish_to_a_taxii_collection_and_read_it_back(
    taxii: tuple[Receiver, str], enriched_examples: list[dict[str, Any]], catalog: Catalog, tmp_path: Path
) -> None:
    _, url = taxii
    events = [from_enriched(a) for a in many_alerts(enriched_examples, 150)]
    sink = TaxiiSink(url, catalog, user=TAXII_USER, password=TAXII_PASSWORD, tlp="amber")
    delivery = Delivery(sink, tmp_path / "spool", policy=RetryPolicy(initial_seconds=0.1, batch_size=40))
    delivery.offer(events)
    assert delivery.drain(timeout=60) and delivery.stats.delivered == 150
    objects = list(read_collection(url, user=TAXII_USER, password=TAXII_PASSWORD))
    sightings = [o["id"] for o in objects if o["type"] == "sighting"]
    assert sorted(sightings) == sorted(sighting_ids(events))
    assert_strictly_valid(orjson.dumps({"type": "bundle", "id": "bundle--" + "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                                        "objects": objects}).decode())  # fmt: skip

    again = Delivery(
        TaxiiSink(url, catalog, user=TAXII_USER, password=TAXII_PASSWORD), tmp_path / "again", policy=delivery.policy
    )
    again.offer(events)  # a second publication of the same alerts: already there, not duplicated
    assert again.drain(timeout=60) and again.stats.delivered == 150 and again.stats.dead_lettered == 0
    assert len(list(read_collection(url, user=TAXII_USER, password=TAXII_PASSWORD))) == len(objects)
