"""Trained knowledge bases, kept on disk between runs.

Building the vectorisers and classifiers over a few thousand rules takes seconds, so a trained
knowledge base is pickled under a store directory (a directory the user owns), keyed by its files,
the catalog and the code version, and reloaded by later runs; only the newest one is kept.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from mitre.catalog import Catalog

if TYPE_CHECKING:  # scikit-learn loads only when a knowledge base is actually used
    from mitre.knowledge import KnowledgeBase, LabelReport

KNOWLEDGE_STORE_FORMAT = 1
KnowledgeLoader = Callable[[], "KnowledgeBase | None"]


@dataclass(frozen=True)
class LoadedKnowledge:
    """A knowledge base as the local mapper receives it: built, a loader to call on first use, or
    none; with the fingerprint that goes into cache keys and the sources it learned from."""

    base: KnowledgeBase | KnowledgeLoader | None
    fingerprint: str
    sources: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def open_knowledge(
    paths: Iterable[Path], catalog: Catalog, store: Path | None, *, lazy: bool, notify: Notify | None = None
) -> LoadedKnowledge:
    """The knowledge base of these files (and the catalog's own examples). `lazy`: a stored one is
    unpickled only when first used (the local mapper maps rarely when the cache answers). `notify`
    hears what takes long (training) before it starts."""
    paths = list(paths)
    load = defer_knowledge if lazy else load_knowledge
    base, fingerprint, warnings = load(paths, catalog, store, notify)
    sources = tuple(str(p) for p in paths if p.is_file())
    if catalog.data.examples:
        sources += (f"ATT&CK {catalog.version} procedure examples and analytics",)
    return LoadedKnowledge(base, fingerprint, sources, tuple(warnings))


@dataclass(frozen=True)
class KnowledgeStore:
    """Where a trained knowledge base for these files, catalog and code version is kept."""

    present: list[Path]
    fingerprint: str
    warnings: list[str]
    pickle: Path | None

    @property
    def notes(self) -> Path | None:
        """Its load warnings, readable without unpickling it."""
        return self.pickle.with_suffix(".json") if self.pickle is not None else None


def knowledge_store(paths: Iterable[Path], catalog: Catalog, store: Path | None) -> KnowledgeStore:
    present = [p for p in paths if p.is_file()]
    fallback = "the ATT&CK catalog's own examples only" if catalog.data.examples else "without it"
    warnings = [f"knowledge base {p} not found: mapping with {fallback}" for p in paths if not p.is_file()]
    if not present and not catalog.data.examples:
        return KnowledgeStore(present, "", warnings, None)
    stats = sorted((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in present)
    # The fingerprint is part of every mapping's cache key: it changes with the files and with the
    # knowledge-base code, so a mapping made by an older knowledge base is never served.
    fingerprint = hashlib.sha256(orjson.dumps([stats, code_version()])).hexdigest()[:16]
    key = hashlib.sha256(orjson.dumps([fingerprint, catalog.fingerprint, KNOWLEDGE_STORE_FORMAT])).hexdigest()[:24]
    return KnowledgeStore(present, fingerprint, warnings, store / f"kb-{key}.pickle" if store is not None else None)


Notify = Callable[[str], None]


def load_knowledge(
    paths: Iterable[Path], catalog: Catalog, store: Path | None = None, notify: Notify | None = None
) -> tuple[KnowledgeBase | None, str, list[str]]:
    """(knowledge base or None, content fingerprint, warnings).

    A full ATT&CK bundle's procedure examples and detection analytics are always part of it
    (mitre.knowledge.catalog_examples), so with such a catalog there is one even without files.
    """
    from mitre.knowledge import KnowledgeBase, load_examples

    where = knowledge_store(paths, catalog, store)
    if not where.present and not catalog.data.examples:
        return None, "", where.warnings
    stored = where.pickle
    if stored is not None and stored.is_file():
        try:
            with stored.open("rb") as handle:
                knowledge, kept_warnings = pickle.load(handle)
            if where.notes is not None and not where.notes.is_file():
                where.notes.write_bytes(orjson.dumps(kept_warnings))  # stored before notes existed
            return knowledge, where.fingerprint, where.warnings + kept_warnings
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            stored.unlink(missing_ok=True)  # unreadable or from other code: rebuild below
    if notify is not None:
        names = ", ".join(p.name for p in where.present) or "the ATT&CK catalog's examples"
        kept = f"; kept in {store} for later runs" if store is not None else ""
        notify(f"training the knowledge base from {names} (about 10-20 s, once{kept})")
    examples, report = load_examples(where.present, catalog)
    label_warnings = (
        [f"knowledge base labels not in ATT&CK {catalog.version}: {_short(report)}"] if report.unmapped else []
    )
    knowledge = KnowledgeBase(examples) if examples else None
    if knowledge is not None and stored is not None and where.notes is not None:
        knowledge.warm()
        stored.parent.mkdir(parents=True, exist_ok=True)
        staging = stored.with_suffix(f".{os.getpid()}.tmp")
        with staging.open("wb") as handle:
            pickle.dump((knowledge, label_warnings), handle, protocol=pickle.HIGHEST_PROTOCOL)
        staging.replace(stored)
        where.notes.write_bytes(orjson.dumps(label_warnings))
        for old in stored.parent.glob("kb-*"):
            # Another process may be staging its copy right now (two workers started on one home):
            # only a staging file nobody has touched for an hour is left over from a crash.
            if old not in (stored, where.notes) and (old.suffix != ".tmp" or _idle_for(old, STALE_STAGING_SECONDS)):
                old.unlink(missing_ok=True)
    return knowledge, where.fingerprint, where.warnings + label_warnings


STALE_STAGING_SECONDS = 3600.0


def _idle_for(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def defer_knowledge(
    paths: Iterable[Path], catalog: Catalog, store: Path | None, notify: Notify | None = None
) -> tuple[KnowledgeBase | Callable[[], KnowledgeBase | None] | None, str, list[str]]:
    """load_knowledge, except that a stored knowledge base is returned as a loader to call on
    first use: only its warnings are read now. A run answered from the cache never pays for it."""
    paths = list(paths)
    where = knowledge_store(paths, catalog, store)
    if where.pickle is None or where.notes is None or not (where.pickle.is_file() and where.notes.is_file()):
        return load_knowledge(paths, catalog, store, notify)
    try:
        kept_warnings = [str(w) for w in orjson.loads(where.notes.read_bytes())]
    except (OSError, orjson.JSONDecodeError):
        return load_knowledge(paths, catalog, store, notify)

    def load() -> KnowledgeBase | None:
        return load_knowledge(paths, catalog, store)[0]

    return load, where.fingerprint, where.warnings + kept_warnings


def code_version() -> str:
    """Changes whenever the knowledge-base code changes, so stored objects never outlive their class."""
    here = Path(__file__).parent
    # Example text comes from corpora (rows as alerts), features and text (with the field vocabulary and
    # the event fields they read); the model from knowledge.
    names = (
        "knowledge.py",
        "text.py",
        "corpora.py",
        "features.py",
        "data/field_semantics.yaml",
        "data/event_fields.yaml",
    )
    source = b"".join((here / name).read_bytes() for name in names)
    return hashlib.sha256(source).hexdigest()[:16]


def _short(report: LabelReport) -> str:
    items = sorted(report.unmapped.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{k}×{v}" for k, v in items)
