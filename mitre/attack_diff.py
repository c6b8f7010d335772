"""What changed between two ATT&CK catalogs: techniques added, revoked (with their replacement),
deprecated, moved between tactics, renamed; tactics added and renamed.

Tactics are compared by ID: v19 kept TA0005 and renamed it (Defense Evasion → Stealth), so a technique
that stayed under TA0005 has not moved, while one that went to TA0112 Defense Impairment has.
"""

from __future__ import annotations

from mitre.catalog import Catalog
from mitre.models import Contract


class AddedTechnique(Contract):
    id: str
    name: str
    tactics: tuple[str, ...]


class RevokedTechnique(Contract):
    id: str
    name: str
    replaced_by: str | None
    replaced_by_name: str | None


class MovedTechnique(Contract):
    id: str
    name: str
    old_tactics: tuple[str, ...]
    new_tactics: tuple[str, ...]


class Renamed(Contract):
    id: str
    old_name: str
    new_name: str


class AttackDiff(Contract):
    old_version: str
    new_version: str
    added: tuple[AddedTechnique, ...] = ()
    revoked: tuple[RevokedTechnique, ...] = ()
    deprecated: tuple[Renamed, ...] = ()
    moved: tuple[MovedTechnique, ...] = ()
    renamed: tuple[Renamed, ...] = ()
    tactics_added: tuple[AddedTechnique, ...] = ()
    tactics_renamed: tuple[Renamed, ...] = ()

    def counts(self) -> dict[str, int]:
        return {
            name: len(getattr(self, name))
            for name in ("added", "revoked", "deprecated", "moved", "renamed", "tactics_added", "tactics_renamed")
        }


def _tactic_ids(catalog: Catalog, technique_id: str) -> tuple[str, ...]:
    return tuple(t.id for t in catalog.tactics_of(technique_id))


def diff_catalogs(old: Catalog, new: Catalog) -> AttackDiff:
    added, revoked, deprecated, moved, renamed = [], [], [], [], []
    for tid in sorted(new.techniques.keys() - old.techniques.keys()):
        technique = new.techniques[tid]
        added.append(AddedTechnique(id=tid, name=technique.name, tactics=_tactic_ids(new, tid)))
    for tid in sorted(old.techniques.keys() - new.techniques.keys()):
        name = old.techniques[tid].name
        target = new.data.redirects.get(tid)
        if target:
            revoked.append(
                RevokedTechnique(id=tid, name=name, replaced_by=target, replaced_by_name=new.techniques[target].name)
            )
        else:
            deprecated.append(Renamed(id=tid, old_name=name, new_name=""))
    for tid in sorted(old.techniques.keys() & new.techniques.keys()):
        before, after = old.techniques[tid], new.techniques[tid]
        old_tactics, new_tactics = _tactic_ids(old, tid), _tactic_ids(new, tid)
        if set(old_tactics) != set(new_tactics):
            moved.append(MovedTechnique(id=tid, name=after.name, old_tactics=old_tactics, new_tactics=new_tactics))
        if before.name != after.name:
            renamed.append(Renamed(id=tid, old_name=before.name, new_name=after.name))
    old_tactics_by_id = {t.id: t for t in old.tactics}
    return AttackDiff(
        old_version=old.version,
        new_version=new.version,
        added=tuple(added),
        revoked=tuple(revoked),
        deprecated=tuple(deprecated),
        moved=tuple(moved),
        renamed=tuple(renamed),
        tactics_added=tuple(
            AddedTechnique(id=t.id, name=t.name, tactics=()) for t in new.tactics if t.id not in old_tactics_by_id
        ),
        tactics_renamed=tuple(
            Renamed(id=t.id, old_name=old_tactics_by_id[t.id].name, new_name=t.name)
            for t in new.tactics
            if t.id in old_tactics_by_id and old_tactics_by_id[t.id].name != t.name
        ),
    )
