"""The engine: alert → features → decide → map (cache first) → validate → enrich.

Plain classes, no orchestration: the CLI, the evals, Prefect flows, the worker and the webhook all
call `Engine` (built from workflows.yaml by `mitre.assemble`). Every input ends as exactly one
Outcome: enriched, skipped (with a reason) or dead-lettered. An exception while processing a batch
never loses it: the batch is bisected until the alert that raises is alone, and that alert is
dead-lettered with an error id (its traceback logged under it, see `mitre.failures`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from mitre.cache_guard import Store
from mitre.cachekey import cache_key
from mitre.catalog import Catalog
from mitre.compliance import ComplianceMap
from mitre.config import DecisionSettings, OptOuts, WorkflowsFile
from mitre.decision import OPTED_OUT, decide, skip_early
from mitre.enrich import (
    PROVENANCE_FIELD,
    Enrichment,
    WorkflowRef,
    apply_enrichment,
    build_enrichment,
    enrich_alert,
    mark_skipped,
    skip_provenance,
    timestamp,
)
from mitre.failures import FailureLog, describe, new_error_id
from mitre.features import extract_features, features_from_flat, flatten_alert
from mitre.feedback.loop import FeedbackLoop
from mitre.indicators import IndicatorSet
from mitre.mappers.base import Mapper, map_all, maps_in_batches
from mitre.models import (
    AlertFeatures,
    Decision,
    DecisionKind,
    MappingResult,
    Outcome,
    OutcomeStatus,
    RawAlert,
    ValidatedMapping,
)
from mitre.signature import OutcomeSignature
from mitre.tool_events import ToolEvent, ToolEventTable
from mitre.validate import validate_mapping

log = logging.getLogger("attackmap.engine")

VALIDATED_MEMO_ENTRIES = 20_000
OUTCOME_MEMO_ENTRIES = 20_000
# A long-running worker forgets remembered outcomes this often, so none outlives the cache's own
# expiry by more than this.
OUTCOME_MEMO_SECONDS = 3600.0


@dataclass(frozen=True)
class EngineConfiguration:
    """What an engine runs with, as run summaries, provenance and eval reports state it."""

    workflows: str  # the workflows file in effect, or that the built-in defaults are
    workflow: str
    catalog_version: str
    catalog_fingerprint: str
    catalog_source: str
    knowledge_sources: tuple[str, ...]
    knowledge_fingerprint: str
    mapper: str
    model: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflows": self.workflows,
            "workflow": self.workflow,
            "catalog": {
                "version": self.catalog_version,
                "fingerprint": self.catalog_fingerprint,
                "source": self.catalog_source,
            },
            "knowledge_base": {"sources": list(self.knowledge_sources), "fingerprint": self.knowledge_fingerprint},
            "mapper": self.mapper,
            "model": self.model,
        }


@dataclass(frozen=True)
class Explanation:
    features: AlertFeatures
    decision: Decision
    mapping: ValidatedMapping | None
    enriched: dict[str, Any] | None


@dataclass(frozen=True)
class _Remembered:
    """What every alert with one outcome signature becomes (see mitre.signature): the outcome
    less its alert and line, and what to add to the alert."""

    outcome: Outcome
    enrichment: Enrichment | None = None
    skip_provenance: dict[str, Any] | None = None


@dataclass(frozen=True)
class Prepared:
    """An alert that passed the decision and is to be mapped: the alert, its features, the verdict."""

    alert: dict[str, Any]
    features: AlertFeatures
    decision: Decision


@dataclass(frozen=True)
class _Todo:
    """An alert of a batch on its way through the full pipeline."""

    index: int
    alert: dict[str, Any]
    flat: dict[str, Any]
    signature: bytes | None


def with_tenant(alert: dict[str, Any], tenant: str) -> dict[str, Any]:
    """A copy of the alert stamped as the tenant's (``attackmap.tenant``, the first tenant field features
    read); enrichment rewrites the provenance object and keeps the stamp."""
    provenance = alert.get(PROVENANCE_FIELD)
    stamped = {**provenance, "tenant": tenant} if isinstance(provenance, dict) else {"tenant": tenant}
    return {**alert, PROVENANCE_FIELD: stamped}


class Engine:
    """One workflow's pipeline over a loaded catalog, indicator set, mapper and (optional) cache."""

    def __init__(
        self,
        catalog: Catalog,
        indicators: IndicatorSet,
        config: WorkflowsFile,
        workflow_name: str | None,
        mapper: Mapper,
        cache: Store | None,
        warnings: Sequence[str] = (),
        configuration: EngineConfiguration | None = None,
        tool_events: ToolEventTable | None = None,
        compliance: ComplianceMap | None = None,
        feedback: FeedbackLoop | None = None,
    ) -> None:
        self.catalog = catalog
        self.indicators = indicators
        self.config = config
        self.workflow = config.workflow(workflow_name)
        self.mapper = mapper
        self.cache = cache
        self.warnings = list(warnings)
        self.tool_events = tool_events
        self._decision_settings: dict[str | None, DecisionSettings] = {}
        self.compliance = compliance
        self.feedback = feedback
        self._feedback_version = feedback.version() if feedback is not None else 0
        self.failures = FailureLog()
        configuration = configuration or EngineConfiguration(
            workflows=config.describe_source(),
            workflow=self.workflow.name,
            catalog_version=catalog.version,
            catalog_fingerprint=catalog.fingerprint,
            catalog_source=catalog.source,
            knowledge_sources=(),
            knowledge_fingerprint="",
            mapper=mapper.name,
            model=mapper.model,
        )
        self.configuration = configuration
        self._origin = WorkflowRef(configuration.workflows, configuration.workflow)
        # The indicator catalog shapes every mapping (decisions, evidence, the local mapper's ranks).
        identity = f"{mapper.settings_hash()}:{indicators.fingerprint}"
        self._settings_hash = hashlib.sha256(identity.encode()).hexdigest()[:16]
        # Called with each batch's outcomes (e.g. the LLM budget's decision/cache telemetry).
        self.observers: list[Callable[[Sequence[Outcome]], None]] = []
        self._validated_memo: OrderedDict[str, tuple[MappingResult, ValidatedMapping]] = OrderedDict()
        # Outcome signature → outcome, so the thousandth copy of an alert costs a parse and a
        # lookup. Only with a cache: it holds what the cache would return for the same key.
        self._sign = OutcomeSignature(indicators)
        self._outcomes: OrderedDict[bytes, _Remembered] = OrderedDict()
        self.outcome_memo_seconds = OUTCOME_MEMO_SECONDS
        self._outcomes_since = time.monotonic()
        # Mappings already made for this run by cache key (a vendor batch's answers and fallbacks):
        # consulted before the cache and the mapper.
        self.precomputed: dict[str, MappingResult] = {}

    # ------------------------------------------------------------ stages

    def decision_settings(self, tenant: str | None) -> DecisionSettings:
        """The workflow's hybrid rule with the tenant's own opt-outs added, from workflows.yaml and from the
        review page (one tenant's never apply to another's alerts)."""
        found = self._decision_settings.get(tenant)
        if found is None:
            found = self.workflow.decision
            own = self.workflow.tenants.get(tenant) if tenant is not None else None
            from_page = sorted(self.feedback.opted_out(tenant)) if self.feedback is not None else []
            if own is not None or from_page:
                opt = found.opt_outs
                mine = own.opt_outs if own is not None else OptOuts()
                merged = OptOuts(
                    rule_ids=[*opt.rule_ids, *mine.rule_ids, *from_page],
                    rule_name_patterns=[*opt.rule_name_patterns, *mine.rule_name_patterns],
                )
                found = found.model_copy(update={"opt_outs": merged})
            self._decision_settings[tenant] = found
        return found

    def _parse(self, item: RawAlert) -> dict[str, Any] | Outcome:
        if item.rejected is not None:
            return self._dead(item, item.rejected)
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
        """What the alert's outcome depends on (mitre.signature); None when outcomes are not remembered."""
        return None if self.cache is None else self._sign(flat)

    def decide(self, features: AlertFeatures) -> Decision:
        """The workflow's hybrid decision for an alert, under its tenant's settings."""
        settings = self.decision_settings(features.tenant)
        return skip_early(features, settings) or decide(
            features, self.indicators.evaluate(features), settings, self.catalog
        )

    def _prepare(self, item: RawAlert, alert: dict[str, Any], flat: dict[str, Any]) -> Prepared | Outcome:
        try:
            features = features_from_flat(flat)
        except ValueError as exc:
            return self._dead(item, f"invalid_alert: {exc}")
        decision = self.decide(features)
        if decision.kind is DecisionKind.SKIP:
            return Outcome(
                status=OutcomeStatus.SKIPPED,
                reason=decision.reason,
                alert=mark_skipped(alert, skip_provenance(decision, self.catalog, self._origin, features.tenant)),
                decision=decision,
                line=item.line,
            )
        return Prepared(alert, features, decision)

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
        return remembered.outcome.model_copy(update={"alert": enriched, "line": line, "remembered": True})

    def _dead(self, item: RawAlert, reason: str, error_id: str | None = None) -> Outcome:
        """A dead letter keeps its input: the text, and the original bytes when they are not UTF-8."""
        raw_b64 = None
        if item.raw is None:
            raw = item.text()
        else:
            try:
                raw = item.raw.decode("utf-8")
            except UnicodeDecodeError:
                raw = item.raw.decode("utf-8", "replace")
                raw_b64 = base64.b64encode(item.raw).decode()
        return Outcome(
            status=OutcomeStatus.DEAD_LETTER, reason=reason, line=item.line, raw=raw, raw_b64=raw_b64, error_id=error_id
        )

    def _failed(self, item: RawAlert, exc: Exception) -> Outcome:
        where = f"alert at line {item.line}" if item.line is not None else "alert"
        error_id, reason = self.failures.record(exc, where)
        return self._dead(item, reason, error_id)

    def mapping_key(self, features: AlertFeatures, decision: Decision) -> str:
        """The cache key of an alert's mapping under its decision (see mitre.cachekey)."""
        return cache_key(
            features,
            catalog_version=self.catalog.fingerprint,
            mapper=self.mapper.name,
            model=self.mapper.model,
            prompt_hash=self.mapper.prompt_hash,
            settings_hash=self._settings_hash,
            tenant=features.tenant,
            decision=decision,
        )

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

    def keys_of(self, features: Sequence[AlertFeatures], decisions: Sequence[Decision]) -> list[str] | None:
        """Cache keys of the alerts, when anything is keyed on them (the cache, analysts' corrections)."""
        if self.cache is None and self.feedback is None:
            return None
        return [self.mapping_key(f, d) for f, d in zip(features, decisions, strict=True)]

    def map_decided(
        self, features: Sequence[AlertFeatures], decisions: Sequence[Decision]
    ) -> list[tuple[ValidatedMapping, bool]]:
        """(validated mapping, cache hit) for alerts already decided to be mapped: the map and
        validate stages alone, cache first, without the outcome memo. The evals score through this."""
        return self._map_keyed(features, decisions, self.keys_of(features, decisions))

    def _map_keyed(
        self, features: Sequence[AlertFeatures], decisions: Sequence[Decision], keys: list[str] | None
    ) -> list[tuple[ValidatedMapping, bool]]:
        if keys is None:
            results = map_all(self.mapper, features, decisions)
            return [(self._validated(None, r), False) for r in results]
        found: dict[str, tuple[MappingResult, bool]] = {}
        if self.feedback is not None:  # an analyst's verdict wins over any mapper and any cache
            for key, verdict in self.feedback.overrides(keys).items():
                found[key] = (self.feedback.result_for(verdict), False)
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in found or key in todo:
                continue
            if (done := self.precomputed.get(key)) is not None:
                found[key] = (done, False)
                continue
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                found[key] = (cached, True)
            else:
                todo[key] = i
        if todo and (self.cache is None or maps_in_batches(self.mapper)):
            idx = list(todo.values())
            fresh = map_all(self.mapper, [features[i] for i in idx], [decisions[i] for i in idx])
            for key, result in zip(todo, fresh, strict=True):
                if self.cache is not None:
                    self.cache.put(key, result)
                found[key] = (result, False)
        else:
            assert self.cache is not None or not todo
            for key, i in todo.items():

                def compute(
                    feat: AlertFeatures = features[i], decision: Decision = decisions[i]
                ) -> tuple[MappingResult, bool]:
                    result = self.mapper.map(feat, decision)
                    return result, result.fallback_reason is None

                assert self.cache is not None
                found[key] = self.cache.get_or_compute(key, compute)
        out = []
        seen: set[str] = set()
        for key in keys:
            result, hit = found[key]
            # Within a batch the second copy of a key is served from the first: a cache hit.
            out.append((self._validated(key, result), hit or key in seen))
            seen.add(key)
        return out

    def _tool_outcome(self, item: RawAlert, alert: dict[str, Any], event: ToolEvent, now: str) -> Outcome:
        """A tool event: its decision and mapping come from the tool-event table, not the mapper."""
        assert self.tool_events is not None
        features = event.features()
        decision, result = self.tool_events.map(event, self.workflow.tool_events)
        if (skip := skip_early(features, self.decision_settings(features.tenant))) and skip.reason == OPTED_OUT:
            decision, result = skip, None
        if result is None:
            skipped = mark_skipped(alert, skip_provenance(decision, self.catalog, self._origin, features.tenant))
            return Outcome(
                status=OutcomeStatus.SKIPPED, reason=decision.reason, alert=skipped, decision=decision, line=item.line
            )
        mapping = validate_mapping(result, self.catalog)
        settings = f"{self._settings_hash}:{self.tool_events.fingerprint}"
        enrichment = build_enrichment(
            alert,
            features,
            decision,
            mapping,
            self.catalog,
            settings_hash=settings,
            compliance=self.compliance,
            workflow=self._origin,
        )
        return Outcome(
            status=OutcomeStatus.ENRICHED,
            reason=decision.reason,
            alert=apply_enrichment(alert, enrichment, cache_hit=False, now=now),
            decision=decision,
            mapping=mapping,
            line=item.line,
        )

    # ------------------------------------------------------------ public

    def _run(
        self,
        items: Sequence[RawAlert],
        todo: list[_Todo],
        outcomes: list[Outcome | None],
        now: str,
        this_batch: dict[bytes, _Remembered] | None = None,
    ) -> None:
        """The full pipeline for alerts the outcome memo could not answer; remembers what it may.
        An outcome it may not remember (an LLM fallback) goes to `this_batch`: the copies of the alert
        waiting in the same batch share it rather than asking the vendor again."""
        prepared: list[Prepared] = []
        mapped_todo: list[_Todo] = []
        for entry in todo:
            item = items[entry.index]
            result = self._prepare(item, entry.alert, entry.flat)
            if isinstance(result, Outcome):
                outcomes[entry.index] = result
                if entry.signature is not None and result.status is OutcomeStatus.SKIPPED and result.decision:
                    provenance = cast(dict[str, Any], (result.alert or {}).get(PROVENANCE_FIELD))
                    bare = result.model_copy(update={"alert": None, "line": None})
                    self._remember(entry.signature, _Remembered(bare, skip_provenance=provenance))
            else:
                prepared.append(result)
                mapped_todo.append(entry)
        if not prepared:
            return
        keys = self.keys_of([p.features for p in prepared], [p.decision for p in prepared])
        mapped = self._map_keyed([p.features for p in prepared], [p.decision for p in prepared], keys)
        for n, (entry, done, (mapping, hit)) in enumerate(zip(mapped_todo, prepared, mapped, strict=True)):
            enrichment = build_enrichment(
                done.alert,
                done.features,
                done.decision,
                mapping,
                self.catalog,
                settings_hash=self._settings_hash,
                compliance=self.compliance,
                mapping_key=keys[n] if keys is not None else None,
                workflow=self._origin,
            )
            outcome = Outcome(
                status=OutcomeStatus.ENRICHED,
                reason=done.decision.reason,
                alert=apply_enrichment(done.alert, enrichment, cache_hit=hit, now=now),
                decision=done.decision,
                mapping=mapping,
                cache_hit=hit,
                line=items[entry.index].line,
            )
            outcomes[entry.index] = outcome
            # A mapping the cache did not keep (an LLM fallback) must be asked for again next time.
            if entry.signature is not None:
                bare = outcome.model_copy(update={"alert": None, "line": None, "cache_hit": True})
                if hit or mapping.result.fallback_reason is None:
                    self._remember(entry.signature, _Remembered(bare, enrichment=enrichment))
                elif this_batch is not None:
                    this_batch[entry.signature] = _Remembered(bare, enrichment=enrichment)

    def _sync_feedback(self) -> None:
        """When analysts have said something since the last batch, forget every remembered outcome and
        decision setting: a correction overrides the next mapping of its key, an opt-out the next alert."""
        if self.feedback is None:
            return
        version = self.feedback.version()
        if version != self._feedback_version:
            self._feedback_version = version
            self._outcomes.clear()
            self._validated_memo.clear()
            self._decision_settings.clear()

    def process_batch(self, items: Sequence[RawAlert], tenant: str | None = None) -> list[Outcome]:
        """Every item's outcome, in order. `tenant`: who the batch belongs to when the caller knows better
        than the alerts (an API key's tenant, a webhook's header); it wins over the alerts' own.
        Never raises for an alert's sake (see _isolated)."""
        now = timestamp()
        self._sync_feedback()
        if time.monotonic() - self._outcomes_since >= self.outcome_memo_seconds:
            self._outcomes.clear()
            self._outcomes_since = time.monotonic()
        done = self._isolated(items, now, tenant)
        for observer in self.observers:
            try:
                observer(done)
            except Exception as exc:  # telemetry must not cost the batch its outcomes
                log.warning("an outcome observer failed [error %s]: %s", new_error_id(), describe(exc))
        return done

    def _isolated(self, items: Sequence[RawAlert], now: str, tenant: str | None) -> list[Outcome]:
        """The batch's outcomes; when processing it raises, each half is processed on its own until
        the alert that raises is alone (k bad alerts cost ~2k·log2(n) extra passes, not n)."""
        try:
            return self._process(items, now, tenant)
        except Exception as exc:
            if len(items) == 1:
                return [self._failed(items[0], exc)]
        middle = len(items) // 2
        return self._isolated(items[:middle], now, tenant) + self._isolated(items[middle:], now, tenant)

    def _process(self, items: Sequence[RawAlert], now: str, tenant: str | None) -> list[Outcome]:
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
            if tenant is not None:
                alert = with_tenant(alert, tenant)
            if self.tool_events is not None and (event := self.tool_events.recognise(alert)) is not None:
                outcomes[i] = self._tool_outcome(item, alert, event, now)
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
        this_batch: dict[bytes, _Remembered] = {}
        self._run(items, todo, outcomes, now, this_batch)
        if waiting:
            again = []
            for entry in waiting:
                assert entry.signature is not None
                remembered = self._outcomes.get(entry.signature) or this_batch.get(entry.signature)
                if remembered is not None:
                    outcomes[entry.index] = self._replay(remembered, entry.alert, items[entry.index].line, now)
                else:  # its first copy was dead-lettered: judge it in its own right
                    again.append(_Todo(entry.index, entry.alert, entry.flat, None))
            self._run(items, again, outcomes, now)
        done = [o for o in outcomes if o is not None]
        if len(done) != len(items):
            raise RuntimeError(f"{len(items) - len(done)} of {len(items)} alerts got no outcome")
        return done

    def process(self, alert: dict[str, Any], tenant: str | None = None) -> Outcome:
        return self.process_batch([RawAlert(line=None, alert=alert)], tenant=tenant)[0]

    def explain(self, alert: dict[str, Any]) -> Explanation:
        """Everything behind one alert's mapping, computed fresh (the cache is not consulted)."""
        features = extract_features(alert)
        hits = self.indicators.evaluate(features)
        decision = decide(features, hits, self.decision_settings(features.tenant), self.catalog)
        # Explain maps even skipped alerts, so an analyst can see what a mapping would say.
        shown = decision if decision.kind is not DecisionKind.SKIP else decision.model_copy(update={"indicators": hits})
        result = map_all(self.mapper, [features], [shown])[0]
        mapping = validate_mapping(result, self.catalog)
        enriched = None
        if decision.kind is not DecisionKind.SKIP:
            enriched = enrich_alert(
                alert,
                features,
                decision,
                mapping,
                self.catalog,
                cache_hit=False,
                settings_hash=self._settings_hash,
                compliance=self.compliance,
            )
        return Explanation(features=features, decision=decision, mapping=mapping, enriched=enriched)
