"""The engine: alert → features → decide → map (cache first) → validate → enrich.

Plain classes, no orchestration: the CLI, Prefect flows and the webhook all call `Engine`.
Every input ends as exactly one Outcome: enriched, skipped (with a reason) or dead-lettered.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mitre.cache import DAY_SECONDS, MappingCache
from mitre.cachekey import IDENTITY_FIELDS, cache_key
from mitre.catalog import Catalog, load_catalog
from mitre.config import Environment, WorkflowsFile
from mitre.decision import decide, skip_early
from mitre.enrich import (
    Enrichment,
    apply_enrichment,
    build_enrichment,
    enrich_alert,
    mark_skipped,
    skip_provenance,
    timestamp,
)
from mitre.features import (
    ALERT_ID_FIELDS,
    extract_features,
    features_from_flat,
    flatten_alert,
    has_text,
)
from mitre.indicators import IndicatorSet, load_indicators
from mitre.mappers import default_registry
from mitre.mappers.base import Mapper, MapperContext, MapperRegistry
from mitre.mappers.local import LocalMapper
from mitre.models import (
    AlertFeatures,
    Decision,
    DecisionKind,
    MappingResult,
    Outcome,
    OutcomeStatus,
    ValidatedMapping,
)
from mitre.validate import validate_mapping

if TYPE_CHECKING:  # scikit-learn loads only when a knowledge base is actually used
    from mitre.knowledge import KnowledgeBase, LabelReport

VALIDATED_MEMO_ENTRIES = 20_000
OUTCOME_MEMO_ENTRIES = 20_000
# A long-running worker forgets remembered outcomes this often, so none outlives the cache's own
# expiry by more than this.
OUTCOME_MEMO_SECONDS = 3600.0


@dataclass
class RunSummary:
    """Counts for one run; the CLI prints it and flows return it."""

    enriched: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    dead_letter: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    tactics: Counter[str] = field(default_factory=Counter)
    techniques: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    cache_misses: int = 0
    warnings: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if outcome.decision is not None:
            self.decisions[f"{outcome.decision.kind.value}:{outcome.decision.reason}"] += 1
        if outcome.status is OutcomeStatus.ENRICHED:
            self.enriched += 1
            if outcome.cache_hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            if outcome.mapping is not None:
                for t in outcome.mapping.result.techniques:
                    self.techniques[t.technique_id] += 1
                    for tactic in t.tactic_ids:
                        self.tactics[tactic] += 1
        elif outcome.status is OutcomeStatus.SKIPPED:
            self.skipped[outcome.reason] += 1
        else:
            self.dead_letter[outcome.reason.split(":")[0]] += 1

    @property
    def total(self) -> int:
        return self.enriched + sum(self.skipped.values()) + sum(self.dead_letter.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "enriched": self.enriched,
            "skipped": dict(self.skipped),
            "dead_letter": dict(self.dead_letter),
            "decisions": dict(self.decisions),
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "tactics": dict(self.tactics),
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class Explanation:
    features: AlertFeatures
    decision: Decision
    mapping: ValidatedMapping | None
    enriched: dict[str, Any] | None


@dataclass(frozen=True)
class RawAlert:
    """One input record: already-parsed JSON, or raw bytes from a line of NDJSON."""

    line: int | None
    raw: bytes | None = None
    alert: Any = None


@dataclass(frozen=True)
class _Remembered:
    """What every alert with one outcome signature becomes (see Engine._signature): the outcome
    less its alert and line, and what to add to the alert."""

    outcome: Outcome
    enrichment: Enrichment | None = None
    skip_provenance: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Todo:
    """An alert of a batch on its way through the full pipeline."""

    index: int
    alert: dict[str, Any]
    flat: dict[str, Any]
    signature: bytes | None


def signature_fields(indicators: IndicatorSet) -> tuple[frozenset[str], tuple[str, ...]]:
    """(feature inputs an outcome cannot depend on, identity fields where only presence counts).

    An outcome (decision, mapping, threat.*, provenance) is a function of the feature inputs,
    less the alert's own id and the identity fields the cache key leaves out (user, host, source
    port) — unless an indicator reads one of those, which makes it a decision input again. Whether
    an identity field is present still counts: it alone can make a document an alert at all."""
    read = {name for ind in indicators.indicators for name in (*ind.fields, *ind.requires)}
    presence_only = tuple(sorted(IDENTITY_FIELDS - read))
    return frozenset({*ALERT_ID_FIELDS, *presence_only}), presence_only


class Engine:
    def __init__(
        self,
        catalog: Catalog,
        indicators: IndicatorSet,
        config: WorkflowsFile,
        workflow_name: str | None,
        mapper: Mapper,
        cache: MappingCache | None,
        warnings: Sequence[str] = (),
    ) -> None:
        self.catalog = catalog
        self.indicators = indicators
        self.config = config
        self.workflow = config.workflow(workflow_name)
        self.mapper = mapper
        self.cache = cache
        self.warnings = list(warnings)
        # The indicator catalog shapes every mapping (decisions, evidence, the local mapper's ranks).
        identity = f"{mapper.settings_hash()}:{indicators.fingerprint}"
        self._settings_hash = hashlib.sha256(identity.encode()).hexdigest()[:16]
        # Called with each batch's outcomes (e.g. the LLM budget's decision/cache telemetry).
        self.observers: list[Callable[[Sequence[Outcome]], None]] = []
        self._validated_memo: OrderedDict[str, tuple[MappingResult, ValidatedMapping]] = OrderedDict()
        # Outcome signature → outcome, so the thousandth copy of an alert costs a parse and a
        # lookup. Only with a cache: it holds what the cache would return for the same key.
        self._unsigned_fields, presence = signature_fields(indicators)
        self._presence_fields = frozenset(presence)
        self._outcomes: OrderedDict[bytes, _Remembered] = OrderedDict()
        self.outcome_memo_seconds = OUTCOME_MEMO_SECONDS
        self._outcomes_since = time.monotonic()

    # ------------------------------------------------------------ stages

    def _parse(self, item: RawAlert) -> dict[str, Any] | Outcome:
        alert = item.alert
        if item.raw is not None:
            try:
                alert = orjson.loads(item.raw)
            except orjson.JSONDecodeError as exc:
                return self._dead(item, f"invalid_json: {exc}")
        if not isinstance(alert, dict):
            return self._dead(item, f"not_an_object: expected a JSON object, got {type(alert).__name__}")
        return alert

    def _signature(self, flat: dict[str, Any]) -> bytes | None:
        """The inputs an outcome depends on (see signature_fields), as bytes; None when not memoised.
        `flat` holds only feature inputs (flatten_alert), so it is the signature less a few fields."""
        if self.cache is None:
            return None
        signed = flat
        if unsigned := flat.keys() & self._unsigned_fields:
            signed = dict(flat)
            for name in unsigned:
                value = signed.pop(name)
                if name in self._presence_fields:
                    signed[name] = has_text(value)
        try:
            return orjson.dumps(signed, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # a value JSON cannot hold (alerts handed in as Python objects)
            return None

    def _prepare(
        self, item: RawAlert, alert: dict[str, Any], flat: dict[str, Any]
    ) -> tuple[dict[str, Any], AlertFeatures, Decision] | Outcome:
        try:
            features = features_from_flat(flat)
        except ValueError as exc:
            return self._dead(item, f"invalid_alert: {exc}")
        decision = skip_early(features, self.workflow.decision) or decide(
            features, self.indicators.evaluate(features), self.workflow.decision, self.catalog
        )
        if decision.kind is DecisionKind.SKIP:
            return Outcome(
                status=OutcomeStatus.SKIPPED,
                reason=decision.reason,
                alert=mark_skipped(alert, skip_provenance(decision, self.catalog)),
                decision=decision,
                line=item.line,
            )
        return alert, features, decision

    def _remember(self, signature: bytes, remembered: _Remembered) -> None:
        self._outcomes[signature] = remembered
        if len(self._outcomes) > OUTCOME_MEMO_ENTRIES:
            self._outcomes.popitem(last=False)

    @staticmethod
    def _replay(remembered: _Remembered, alert: dict[str, Any], line: int | None, now: str) -> Outcome:
        """The remembered outcome applied to another alert with the same signature (a cache hit)."""
        if remembered.enrichment is not None:
            enriched = apply_enrichment(alert, remembered.enrichment, cache_hit=True, now=now)
        else:
            enriched = mark_skipped(alert, remembered.skip_provenance or {})
        return remembered.outcome.model_copy(update={"alert": enriched, "line": line})

    def _dead(self, item: RawAlert, reason: str) -> Outcome:
        raw = item.raw.decode("utf-8", "replace") if item.raw is not None else orjson.dumps(item.alert).decode()
        return Outcome(status=OutcomeStatus.DEAD_LETTER, reason=reason, line=item.line, raw=raw)

    def _key(self, features: AlertFeatures) -> str:
        return cache_key(
            features,
            catalog_version=self.catalog.fingerprint,
            mapper=self.mapper.name,
            model=self.mapper.model,
            prompt_hash=self.mapper.prompt_hash,
            settings_hash=self._settings_hash,
        )

    def _map_uncached(self, features: Sequence[AlertFeatures], decisions: Sequence[Decision]) -> list[MappingResult]:
        if isinstance(self.mapper, LocalMapper):
            return self.mapper.map_many(features, decisions)
        return [self.mapper.map(f, d) for f, d in zip(features, decisions, strict=True)]

    def _validated(self, key: str | None, result: MappingResult) -> ValidatedMapping:
        """Validation is deterministic per cache key, so a warm key skips it."""
        if key is None:
            return validate_mapping(result, self.catalog)
        found = self._validated_memo.get(key)
        if found is None or found[0] is not result:
            found = (result, validate_mapping(result, self.catalog))
            self._validated_memo[key] = found
            if len(self._validated_memo) > VALIDATED_MEMO_ENTRIES:
                self._validated_memo.popitem(last=False)
        return found[1]

    def _map(
        self, prepared: list[tuple[dict[str, Any], AlertFeatures, Decision]]
    ) -> list[tuple[ValidatedMapping, bool]]:
        """Cache first; misses of the same key within the batch are computed once."""
        if self.cache is None:
            results = self._map_uncached([p[1] for p in prepared], [p[2] for p in prepared])
            return [(self._validated(None, r), False) for r in results]
        keys = [self._key(p[1]) for p in prepared]
        found: dict[str, tuple[MappingResult, bool]] = {}
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in found or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is not None:
                found[key] = (cached, True)
            else:
                todo[key] = i
        if isinstance(self.mapper, LocalMapper) and todo:
            idx = list(todo.values())
            fresh = self._map_uncached([prepared[i][1] for i in idx], [prepared[i][2] for i in idx])
            for key, result in zip(todo, fresh, strict=True):
                self.cache.put(key, result)
                found[key] = (result, False)
        else:
            for key, i in todo.items():
                _, feat, decision = prepared[i]

                def compute(feat: AlertFeatures = feat, decision: Decision = decision) -> tuple[MappingResult, bool]:
                    result = self.mapper.map(feat, decision)
                    return result, result.fallback_reason is None

                found[key] = self.cache.get_or_compute(key, compute)
        out = []
        seen: set[str] = set()
        for key in keys:
            result, hit = found[key]
            # Within a batch the second copy of a key is served from the first: a cache hit.
            out.append((self._validated(key, result), hit or key in seen))
            seen.add(key)
        return out

    # ------------------------------------------------------------ public

    def _run(self, items: Sequence[RawAlert], todo: list[_Todo], outcomes: list[Outcome | None], now: str) -> None:
        """The full pipeline for alerts the outcome memo could not answer; remembers what it may."""
        prepared: list[tuple[dict[str, Any], AlertFeatures, Decision]] = []
        mapped_todo: list[_Todo] = []
        for entry in todo:
            item = items[entry.index]
            result = self._prepare(item, entry.alert, entry.flat)
            if isinstance(result, Outcome):
                outcomes[entry.index] = result
                if entry.signature is not None and result.status is OutcomeStatus.SKIPPED and result.decision:
                    provenance = skip_provenance(result.decision, self.catalog)
                    bare = result.model_copy(update={"alert": None, "line": None})
                    self._remember(entry.signature, _Remembered(bare, skip_provenance=provenance))
            else:
                prepared.append(result)
                mapped_todo.append(entry)
        if not prepared:
            return
        for entry, (alert, features, decision), (mapping, hit) in zip(
            mapped_todo, prepared, self._map(prepared), strict=True
        ):
            enrichment = build_enrichment(
                alert, features, decision, mapping, self.catalog, settings_hash=self._settings_hash
            )
            outcome = Outcome(
                status=OutcomeStatus.ENRICHED,
                reason=decision.reason,
                alert=apply_enrichment(alert, enrichment, cache_hit=hit, now=now),
                decision=decision,
                mapping=mapping,
                cache_hit=hit,
                line=items[entry.index].line,
            )
            outcomes[entry.index] = outcome
            # A mapping the cache did not keep (an LLM fallback) must be asked for again next time.
            if entry.signature is not None and (hit or mapping.result.fallback_reason is None):
                bare = outcome.model_copy(update={"alert": None, "line": None, "cache_hit": True})
                self._remember(entry.signature, _Remembered(bare, enrichment=enrichment))

    def process_batch(self, items: Sequence[RawAlert]) -> list[Outcome]:
        now = timestamp()
        if time.monotonic() - self._outcomes_since >= self.outcome_memo_seconds:
            self._outcomes.clear()
            self._outcomes_since = time.monotonic()
        outcomes: list[Outcome | None] = [None] * len(items)
        todo: list[_Todo] = []
        # Later copies of a signature first seen in this batch wait for its outcome.
        pending: set[bytes] = set()
        waiting: list[_Todo] = []
        for i, item in enumerate(items):
            alert = self._parse(item)
            if isinstance(alert, Outcome):
                outcomes[i] = alert
                continue
            flat = flatten_alert(alert)
            signature = self._signature(flat)
            if signature is not None:
                if (remembered := self._outcomes.get(signature)) is not None:
                    self._outcomes.move_to_end(signature)
                    outcomes[i] = self._replay(remembered, alert, item.line, now)
                    continue
                if signature in pending:
                    waiting.append(_Todo(i, alert, flat, signature))
                    continue
                pending.add(signature)
            todo.append(_Todo(i, alert, flat, signature))
        self._run(items, todo, outcomes, now)
        if waiting:
            again = []
            for entry in waiting:
                assert entry.signature is not None
                if (remembered := self._outcomes.get(entry.signature)) is not None:
                    outcomes[entry.index] = self._replay(remembered, entry.alert, items[entry.index].line, now)
                else:  # its first copy was not remembered (an LLM fallback): map it in its own right
                    again.append(_Todo(entry.index, entry.alert, entry.flat, None))
            self._run(items, again, outcomes, now)
        done = [o for o in outcomes if o is not None]
        for observer in self.observers:
            observer(done)
        return done

    def process(self, alert: dict[str, Any]) -> Outcome:
        return self.process_batch([RawAlert(line=None, alert=alert)])[0]

    def explain(self, alert: dict[str, Any]) -> Explanation:
        """Everything behind one alert's mapping, computed fresh (the cache is not consulted)."""
        features = extract_features(alert)
        hits = self.indicators.evaluate(features)
        decision = decide(features, hits, self.workflow.decision, self.catalog)
        # Explain maps even skipped alerts, so an analyst can see what a mapping would say.
        shown = decision if decision.kind is not DecisionKind.SKIP else decision.model_copy(update={"indicators": hits})
        result = self._map_uncached([features], [shown])[0]
        mapping = validate_mapping(result, self.catalog)
        enriched = None
        if decision.kind is not DecisionKind.SKIP:
            enriched = enrich_alert(
                alert, features, decision, mapping, self.catalog, cache_hit=False, settings_hash=self._settings_hash
            )
        return Explanation(features=features, decision=decision, mapping=mapping, enriched=enriched)


# ---------------------------------------------------------------- construction


@dataclass(frozen=True)
class EngineOptions:
    """Command-line overrides on top of workflows.yaml and the environment."""

    workflow: str | None = None
    mapper: str | None = None
    catalog: Path | None = None
    knowledge_base: tuple[Path, ...] | None = None
    cache: bool = True
    cache_dir: Path | None = None


def resolve_catalog(config: WorkflowsFile, env: Environment, override: Path | None = None) -> Catalog:
    """Explicit path → ATTACKMAP_CATALOG → workflows.yaml → installed active catalog → bundled package."""
    path = override or env.catalog or config.catalog.path
    if path is None and (env.home / "catalog.json").is_file():
        path = env.home / "catalog.json"
    return load_catalog(path, config.catalog.crosswalks)


KNOWLEDGE_STORE_FORMAT = 1


@dataclass(frozen=True)
class _KnowledgeStore:
    """Where a trained knowledge base for these files, catalog and code version is kept."""

    present: list[Path]
    fingerprint: str
    warnings: list[str]
    pickle: Path | None

    @property
    def notes(self) -> Path | None:
        """Its load warnings, readable without unpickling it."""
        return self.pickle.with_suffix(".json") if self.pickle is not None else None


def _knowledge_store(paths: Iterable[Path], catalog: Catalog, store: Path | None) -> _KnowledgeStore:
    present = [p for p in paths if p.is_file()]
    fallback = "the ATT&CK catalog's own examples only" if catalog.data.examples else "without it"
    warnings = [f"knowledge base {p} not found: mapping with {fallback}" for p in paths if not p.is_file()]
    if not present and not catalog.data.examples:
        return _KnowledgeStore(present, "", warnings, None)
    stats = sorted((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in present)
    # The fingerprint is part of every mapping's cache key: it changes with the files and with the
    # knowledge-base code, so a mapping made by an older knowledge base is never served.
    fingerprint = hashlib.sha256(orjson.dumps([stats, _code_version()])).hexdigest()[:16]
    key = hashlib.sha256(orjson.dumps([fingerprint, catalog.fingerprint, KNOWLEDGE_STORE_FORMAT])).hexdigest()[:24]
    return _KnowledgeStore(present, fingerprint, warnings, store / f"kb-{key}.pickle" if store is not None else None)


def load_knowledge(
    paths: Iterable[Path], catalog: Catalog, store: Path | None = None
) -> tuple[KnowledgeBase | None, str, list[str]]:
    """(knowledge base or None, content fingerprint, warnings).

    A full ATT&CK bundle's procedure examples and detection analytics are always part of it
    (mitre.knowledge.catalog_examples), so with such a catalog there is one even without files.

    Building the vectorisers and classifiers over a few thousand rules takes seconds, so a trained
    knowledge base is pickled under `store` (a directory the user owns), keyed by the files, the
    catalog and the code version, and reloaded by later runs; only the newest one is kept.
    """
    from mitre.knowledge import KnowledgeBase, load_examples

    where = _knowledge_store(paths, catalog, store)
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
            if old not in (stored, where.notes):
                old.unlink(missing_ok=True)
    return knowledge, where.fingerprint, where.warnings + label_warnings


def defer_knowledge(
    paths: Iterable[Path], catalog: Catalog, store: Path | None
) -> tuple[KnowledgeBase | Callable[[], KnowledgeBase | None] | None, str, list[str]]:
    """load_knowledge, except that a stored knowledge base is returned as a loader to call on
    first use: only its warnings are read now. A run answered from the cache never pays for it."""
    paths = list(paths)
    where = _knowledge_store(paths, catalog, store)
    if where.pickle is None or where.notes is None or not (where.pickle.is_file() and where.notes.is_file()):
        return load_knowledge(paths, catalog, store)
    try:
        kept_warnings = [str(w) for w in orjson.loads(where.notes.read_bytes())]
    except (OSError, orjson.JSONDecodeError):
        return load_knowledge(paths, catalog, store)

    def load() -> KnowledgeBase | None:
        return load_knowledge(paths, catalog, store)[0]

    return load, where.fingerprint, where.warnings + kept_warnings


def _code_version() -> str:
    """Changes whenever the knowledge-base code changes, so stored objects never outlive their class."""
    here = Path(__file__).parent
    # Example text comes from corpora (rows as alerts), features and text; the model from knowledge.
    source = b"".join(
        (here / name).read_bytes()
        for name in (
            "knowledge.py",
            "text.py",
            "corpora.py",
            "features.py",
            "data/field_semantics.yaml",
            "data/event_fields.yaml",
        )
    )
    return hashlib.sha256(source).hexdigest()[:16]


def _short(report: LabelReport) -> str:
    items = sorted(report.unmapped.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{k}×{v}" for k, v in items)


def build_engine(
    config: WorkflowsFile,
    env: Environment | None = None,
    options: EngineOptions | None = None,
    registry: MapperRegistry | None = None,
) -> Engine:
    env = env or Environment()
    options = options or EngineOptions()
    catalog = resolve_catalog(config, env, options.catalog)
    indicators = load_indicators(catalog)
    workflow = config.workflow(options.workflow)
    settings = workflow.mapper
    if options.mapper:
        settings = settings.model_copy(update={"provider": options.mapper})
    kb_paths: tuple[Path, ...] = (
        options.knowledge_base
        if options.knowledge_base is not None
        else tuple(settings.knowledge_base) + ((env.knowledge_base,) if env.knowledge_base else ())
    )
    if settings.provider == LocalMapper.name:
        knowledge, kb_fingerprint, warnings = defer_knowledge(kb_paths, catalog, env.home / "knowledge")
    else:  # an LLM provider shortlists candidates with the local mapper on every call
        knowledge, kb_fingerprint, warnings = load_knowledge(kb_paths, catalog, env.home / "knowledge")
    local = (
        LocalMapper(catalog, indicators, settings, load_knowledge=knowledge, knowledge_fingerprint=kb_fingerprint)
        if callable(knowledge)
        else LocalMapper(catalog, indicators, settings, knowledge=knowledge, knowledge_fingerprint=kb_fingerprint)
    )
    registry = registry or default_registry()
    mapper: Mapper = (
        local
        if settings.provider == local.name
        else registry.create(settings.provider, MapperContext(catalog=catalog, settings=settings, local=local))
    )
    observer = None
    if mapper is not local:
        from mitre.mappers.budgeted import with_budget

        mapper, observer = with_budget(mapper, local, workflow, env)
    cache = None
    if options.cache:
        directory = options.cache_dir or env.cache_dir or config.cache.directory or env.home / "cache"
        cache = MappingCache(
            directory,
            size_limit_bytes=config.cache.size_limit_mb * 2**20,
            ttl_seconds=config.cache.ttl_days * DAY_SECONDS,
        )
    engine = Engine(catalog, indicators, config, options.workflow, mapper, cache, warnings)
    if observer is not None:
        engine.observers.append(observer)
    return engine
