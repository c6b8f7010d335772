"""STIX 2.1 bundles of enriched alerts, built with the `stix2` library.

Per bundle: an identity for the producer, a TLP marking on every other object, an ``attack-pattern`` per
technique (name and kill-chain phases from the active catalog, the ``mitre-attack`` external reference
with its ID and URL), an ``indicator`` per shareable observable with a STIX pattern, ``indicates``
relationships from each indicator to the techniques of its alerts, and a ``sighting`` per alert.

What is shared: IPs (public ones only), domains, URLs, file hashes and file paths. Users, host names,
process names and private addresses are the victim's, not the attacker's: they stay in the common
event and out of a bundle meant for a sharing community.

Ids are UUIDv5 over the content (observable pattern, technique, alert key), and an object's
timestamps come from the alerts it describes, so exporting the same alerts twice yields the same
objects — a TAXII server recognises the second publication as a copy instead of a new version.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import stix2

from mitre.catalog import Catalog
from mitre.io.exports.event import CommonEvent
from mitre.io.exports.observables import RelatedIndicator

NAMESPACE = uuid.UUID("8d0c6a4e-3b1f-5c7e-9a2d-4f6b8e0c1a3d")
PRODUCER_NAME = "attackmap"
# When the producer identity was defined: a fixed time keeps that object identical across bundles.
PRODUCER_CREATED = datetime(2026, 1, 1, tzinfo=UTC)
Tlp = Literal["clear", "green", "amber", "red"]
TLP_MARKINGS: dict[str, stix2.MarkingDefinition] = {
    "clear": stix2.TLP_WHITE,
    "green": stix2.TLP_GREEN,
    "amber": stix2.TLP_AMBER,
    "red": stix2.TLP_RED,
}


def _id(kind: str, *parts: str) -> str:
    """A content-derived id in UUIDv4 form: STIX 2.1 asks for v4 on SDOs and SROs (the validator's
    strict mode holds to it), and a digest with the version bits set is one, yet stays reproducible."""
    digest = hashlib.sha256(NAMESPACE.bytes + chr(0).join((kind, *parts)).encode()).digest()
    return f"{kind}--{uuid.UUID(bytes=digest[:16], version=4)}"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _split_path(path: str) -> tuple[str | None, str]:
    cut = max(path.rfind("\\"), path.rfind("/"))
    return (path[:cut] or None, path[cut + 1 :]) if cut >= 0 else (None, path)


def pattern_for(indicator: RelatedIndicator) -> str | None:
    """The STIX pattern for a shareable observable, or None for what is not shared."""
    value = indicator.value
    if indicator.type == "ip":
        address = ipaddress.ip_address(value)
        if not address.is_global:
            return None
        return f"[{'ipv4' if address.version == 4 else 'ipv6'}-addr:value = {_quote(value)}]"
    if indicator.type == "domain":
        return f"[domain-name:value = {_quote(value)}]"
    if indicator.type == "url":
        return f"[url:value = {_quote(value)}]"
    if indicator.type == "hash" and indicator.hash_algorithm:
        return f"[file:hashes.{_quote(indicator.hash_algorithm)} = {_quote(value)}]"
    if indicator.type == "file_path":
        directory, name = _split_path(value)
        if directory is None:
            return f"[file:name = {_quote(name)}]"
        return f"[file:name = {_quote(name)} AND file:parent_directory_ref.path = {_quote(directory)}]"
    return None


class BundleBuilder:
    """Accumulates the objects of one bundle; each object once, with its earliest alert time."""

    def __init__(self, catalog: Catalog, *, tlp: Tlp = "amber", producer: str = PRODUCER_NAME) -> None:
        self.catalog = catalog
        self.marking = TLP_MARKINGS[tlp]
        self.identity = stix2.Identity(
            id=_id("identity", producer),
            name=producer,
            identity_class="system",
            description="ATT&CK enrichment of security alerts",
            created=PRODUCER_CREATED,
            modified=PRODUCER_CREATED,
        )
        self._patterns: dict[str, tuple[datetime, str, set[str]]] = {}  # pattern → (first seen, name, techniques)
        self._techniques: dict[str, datetime] = {}
        self._sightings: list[stix2.Sighting] = []

    def _common(self, when: datetime) -> dict[str, Any]:
        return {
            "created": when,
            "modified": when,
            "created_by_ref": self.identity.id,
            "object_marking_refs": [self.marking.id],
        }

    def add(self, event: CommonEvent) -> bool:
        """Add one alert; False when it names no technique active in the catalog (nothing to share)."""
        techniques = [t for t in event.technique_ids if t in self.catalog.techniques]
        if not techniques:
            return False
        when = event.timestamp.astimezone(UTC)
        for tid in techniques:
            self._techniques[tid] = min(when, self._techniques.get(tid, when))
        for indicator in event.related_indicators:
            pattern = pattern_for(indicator)
            if pattern is None:
                continue
            first, name, linked = self._patterns.get(pattern, (when, f"{indicator.type}: {indicator.value}", set()))
            self._patterns[pattern] = (min(first, when), name, linked | set(techniques))
        best = max(techniques, key=lambda t: event.technique_confidence.get(t, 0.0))
        self._sightings.append(
            stix2.Sighting(
                id=_id("sighting", event.key),
                sighting_of_ref=_id("attack-pattern", best),
                first_seen=when,
                last_seen=when,
                count=1,
                where_sighted_refs=[self.identity.id],
                description=(event.description or event.rule.name if event.rule else event.description) or None,
                external_references=[{"source_name": "attackmap-alert", "external_id": event.id}],
                confidence=round(event.confidence * 100) if event.confidence is not None else None,
                **self._common(when),
            )
        )
        return True

    def _attack_pattern(self, tid: str, when: datetime) -> stix2.AttackPattern:
        technique = self.catalog.techniques[tid]
        parent = self.catalog.techniques.get(technique.parent) if technique.parent else None
        name = f"{parent.name}: {technique.name}" if parent else technique.name
        return stix2.AttackPattern(
            id=_id("attack-pattern", tid),
            name=name,
            description=f"MITRE ATT&CK {self.catalog.version} technique {tid}.",
            # The page's URL rides in the reference's description: a `url` without `hashes` of the page
            # breaks the STIX 2.1 SHOULD that stix2-validator enforces in strict mode, and ATT&CK
            # publishes no hashes of its pages.
            external_references=[
                {"source_name": "mitre-attack", "external_id": tid, "description": technique.reference}
            ],
            kill_chain_phases=[{"kill_chain_name": "mitre-attack", "phase_name": s} for s in technique.tactics],
            **self._common(when),
        )

    def objects(self) -> list[Any]:
        objects: list[Any] = [self.marking, self.identity]
        objects += [self._attack_pattern(tid, when) for tid, when in sorted(self._techniques.items())]
        for pattern, (when, name, techniques) in sorted(self._patterns.items()):
            indicator_id = _id("indicator", pattern)
            objects.append(
                stix2.Indicator(
                    id=indicator_id,
                    name=name,
                    description=f"Seen in alerts mapped to {', '.join(sorted(techniques))}.",
                    pattern=pattern,
                    pattern_type="stix",
                    valid_from=when,
                    indicator_types=["malicious-activity"],
                    **self._common(when),
                )
            )
            objects += [
                stix2.Relationship(
                    id=_id("relationship", indicator_id, tid),
                    relationship_type="indicates",
                    source_ref=indicator_id,
                    target_ref=_id("attack-pattern", tid),
                    **self._common(max(when, self._techniques[tid])),
                )
                for tid in sorted(techniques)
            ]
        return objects + self._sightings

    def bundle_id(self) -> str:
        return _id("bundle", *(s.id for s in self._sightings))

    def bundle(self) -> stix2.Bundle:
        return stix2.Bundle(objects=self.objects(), id=self.bundle_id())


def build_bundle(events: Iterable[CommonEvent], catalog: Catalog, *, tlp: Tlp = "amber") -> stix2.Bundle:
    builder = BundleBuilder(catalog, tlp=tlp)
    for event in events:
        builder.add(event)
    return builder.bundle()


def sighting_ids(events: Sequence[CommonEvent]) -> list[str]:
    """The sighting id each event becomes (for read-back checks)."""
    return [_id("sighting", e.key) for e in events]
