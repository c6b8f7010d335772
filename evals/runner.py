"""Run a mapper over eval cases and score it.

Two modes:
- knowledge base from a different corpus (or none): one pass over every case;
- grouped k-fold CV, when the knowledge base and the eval set come from the same corpus: the
  cases are grouped (evals.grouping), whole groups go to folds, and for each fold a LocalMapper
  is built with a KnowledgeBase of the other folds only.

Knowledge-base examples are built from cases with the same text function the mapper applies
to alerts (`alert_text(extract_features(alert))`), so training and query text agree.

What is scored: by default the product's output — each alert goes through the workflow's hybrid
rule (`mitre.decision.decide`), a skipped tagged rule keeps its own tags, an extended or mapped
alert gets the `threat.*` that `mitre.enrich.enrich_alert` writes, plus the rule's own tags, which
the user sees on the alert anyway. The risk threshold and opt-outs are not applied: they choose
which alerts are enriched at all, not how well. With `decision=None` every alert is mapped and
only the mapper's own output is scored (to compare mappers independent of the rule's tags).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evals.datasets import Case, LoadReport, load_dataset, select_split
from evals.grouping import GroupingSettings, fold_assignment, group_cases
from evals.labels import LabelStats, normalise_cases
from evals.metrics import Prediction, Truth, score
from mitre.cache import MappingCache
from mitre.cachekey import cache_key
from mitre.catalog import Catalog
from mitre.config import DecisionSettings, MapperSettings, OptOuts
from mitre.decision import MODE_ALWAYS, decide
from mitre.enrich import build_threat, enrich_alert
from mitre.features import extract_features
from mitre.indicators import IndicatorSet
from mitre.knowledge import Example, KnowledgeBase, row_examples
from mitre.mappers.base import Mapper
from mitre.mappers.local import LocalMapper, LocalWeights
from mitre.models import AlertFeatures, Decision, DecisionKind, MappingResult, ValidatedMapping
from mitre.retrieval import CatalogRetriever
from mitre.text import alert_text
from mitre.validate import validate_mapping

BATCH = 256
MapperFactory = Callable[[LocalMapper], Mapper]

# USD per million tokens (input, output) for priced providers; the local mapper costs nothing.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4": (5.0, 25.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
}


@dataclass
class Dataset:
    spec: str
    kind: str
    cases: list[Case]
    load: LoadReport
    labels: LabelStats
    split: str | None = None


@dataclass
class RunResult:
    dataset: Dataset
    mode: str  # "cv-5", "kb", "no-kb"
    mapper: str
    knowledge: list[str]
    metrics: dict[str, Any]
    predictions: list[Prediction]
    folds: list[int] | None = None
    groups: int | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    kb_examples: int = 0


def prepare(spec: str, catalog: Catalog, split: str | None = None) -> Dataset:
    kind, cases, load = load_dataset(spec)
    normalised, stats = normalise_cases(select_split(cases, split), catalog)
    return Dataset(spec=spec, kind=kind, cases=normalised, load=load, labels=stats, split=split)


def scoring_decision(settings: DecisionSettings) -> DecisionSettings:
    """The workflow's hybrid rule without the filters that choose which alerts are enriched at all."""
    return settings.model_copy(update={"min_risk_score": 0.0, "opt_outs": OptOuts()})


def case_features(case: Case) -> AlertFeatures:
    return extract_features(case.alert)


def case_examples(cases: Sequence[Case], features: Sequence[AlertFeatures] | None = None) -> list[tuple[int, Example]]:
    """(case index, example) for every labelled case: its alert's text and, when it has some, its prose
    (as `mitre.knowledge.load_examples` learns from the same corpus rows)."""
    feats = features if features is not None else [case_features(c) for c in cases]
    return [
        (i, example)
        for i, (c, f) in enumerate(zip(cases, feats, strict=True))
        if c.techniques
        for example in row_examples(
            c.id,
            alert_text(f),
            c.prose,
            techniques=c.techniques,
            tactics=c.tactics,
            source=c.source,
            author=c.author,
            title=c.title,
        )
    ]


def examples_from_cases(cases: Sequence[Case], features: Sequence[AlertFeatures] | None = None) -> list[Example]:
    return [e for _, e in case_examples(cases, features)]


def _cost(result: MappingResult) -> float | None:
    if result.usage is None or result.model is None:
        return 0.0 if result.mapper == "local" else None
    for prefix, (inp, out) in PRICES_PER_MTOK.items():
        if result.model.startswith(prefix):
            u = result.usage
            return (u.input_tokens * inp + u.output_tokens * out + u.cache_write_tokens * inp * 1.25) / 1e6 + (
                u.cache_read_tokens * inp * 0.1
            ) / 1e6
    return None


def to_prediction(
    case: Case,
    result: MappingResult,
    mapping: ValidatedMapping,
    catalog: Catalog,
    latency: float,
    cache_hit: bool = False,
) -> Prediction:
    """The mapper's own output (`mapping` is `result` validated), with the raw IDs it returned."""
    raw = tuple(t.technique_id for t in result.techniques)
    invalid = tuple(t for t in raw if t not in catalog.techniques)
    validated = mapping.result
    tactics = list(validated.tactic_ids)
    for t in validated.techniques:
        tactics.extend(t.tactic_ids)
    return Prediction(
        case_id=case.id,
        techniques=tuple(t.technique_id for t in validated.techniques),
        confidences={t.technique_id: t.confidence for t in validated.techniques},
        tactics=tuple(dict.fromkeys(tactics)),
        raw_ids=raw,
        invalid_ids=invalid,
        latency_s=latency,
        cost_usd=_cost(result),
        cache_hit=cache_hit,
        evidence={
            t.technique_id: [f"{e.source}{'@' + e.field if e.field else ''}: {e.detail}" for e in t.evidence[:4]]
            for t in (*validated.techniques, *validated.candidates[:5])
        },
        fallback_reason=validated.fallback_reason,
    )


def _threat_ids(threat: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Technique and tactic IDs of an ECS threat object; a parent listed for its sub-technique is implied."""
    technique = threat.get("technique") or {}
    subs = list((technique.get("subtechnique") or {}).get("id") or [])
    parents = [t for t in technique.get("id") or [] if not any(s.startswith(t + ".") for s in subs)]
    return tuple(subs + parents), tuple((threat.get("tactic") or {}).get("id") or [])


def user_prediction(
    base: Prediction,
    case: Case,
    features: AlertFeatures,
    decision: Decision,
    mapping: ValidatedMapping | None,
    catalog: Catalog,
) -> Prediction:
    """What the user receives for this alert: the enriched `threat.*` (none when the alert was
    skipped) plus the rule's own tags. Mapper confidences are kept; a rule tag counts as certain."""
    refs = features.rule_threat + features.existing_threat
    techniques = [r.technique_id for r in refs if r.technique_id]
    tactics = [r.tactic_id for r in refs if r.tactic_id]
    if mapping is not None:
        enriched = enrich_alert(case.alert, features, decision, mapping, catalog, cache_hit=False, settings_hash="")
        shown_t, shown_ta = _threat_ids(enriched["threat"])
        techniques.extend(shown_t)
        tactics.extend(shown_ta)
    ids, tactic_ids = _threat_ids(build_threat(catalog, techniques, tactics))
    return replace(
        base,
        techniques=ids,
        tactics=tactic_ids,
        confidences={t: base.confidences.get(t, 1.0) for t in ids},
        evidence={**{t: ["rule tag"] for t in ids if t not in base.techniques}, **base.evidence},
    )


class Runner:
    def __init__(
        self,
        catalog: Catalog,
        indicators: IndicatorSet,
        settings: MapperSettings,
        weights: LocalWeights | None = None,
        mapper_factory: MapperFactory | None = None,
        cache_dir: Path | None = None,
        progress: bool = True,
        decision: DecisionSettings | None = None,
    ) -> None:
        """`decision`: score the user's output under this hybrid rule (see `scoring_decision`);
        None scores the mapper's own output on every alert."""
        self.catalog = catalog
        self.indicators = indicators
        self.settings = settings
        self.weights = weights
        self.mapper_factory = mapper_factory
        self.cache_dir = cache_dir
        self.progress = progress
        self.decision = decision
        self._retriever: CatalogRetriever | None = None

    @property
    def retriever(self) -> CatalogRetriever:
        if self._retriever is None:
            self._retriever = CatalogRetriever(self.catalog)
        return self._retriever

    def local_mapper(self, examples: Sequence[Example]) -> LocalMapper:
        kb = KnowledgeBase(examples) if examples else None
        return LocalMapper(
            self.catalog,
            self.indicators,
            self.settings,
            knowledge=kb,
            retriever=self.retriever,
            weights=self.weights,
            knowledge_fingerprint=f"eval-{len(examples)}",
        )

    def _map(
        self,
        mapper: Mapper,
        cases: Sequence[Case],
        features: Sequence[AlertFeatures],
        tick: Callable[[int], None],
        cache: MappingCache | None,
    ) -> list[Prediction]:
        decisions = [self._decide(f) for f in features]
        todo = [i for i, d in enumerate(decisions) if d.kind is not DecisionKind.SKIP]
        mapped = self._map_cases(
            mapper, [cases[i] for i in todo], [features[i] for i in todo], [decisions[i] for i in todo], tick, cache
        )
        results: dict[int, tuple[Prediction, ValidatedMapping | None]] = dict(zip(todo, mapped, strict=True))
        out = []
        for i, (case, feat, decision) in enumerate(zip(cases, features, decisions, strict=True)):
            base, mapping = results.get(i) or (Prediction(case_id=case.id, cost_usd=0.0), None)
            if self.decision is None:
                out.append(base)
            else:
                out.append(user_prediction(base, case, feat, decision, mapping, self.catalog))
        tick(len(cases) - len(todo))
        return out

    def _decide(self, features: AlertFeatures) -> Decision:
        hits = self.indicators.evaluate(features)
        if self.decision is None:
            return Decision(kind=DecisionKind.MAP, reason=MODE_ALWAYS, detail="eval", indicators=hits)
        return decide(features, hits, self.decision, self.catalog)

    def _map_cases(
        self,
        mapper: Mapper,
        cases: Sequence[Case],
        features: Sequence[AlertFeatures],
        decisions: Sequence[Decision],
        tick: Callable[[int], None],
        cache: MappingCache | None,
    ) -> list[tuple[Prediction, ValidatedMapping]]:
        """The mapper's prediction and validated mapping for each alert it is asked about."""
        out: list[tuple[Prediction, ValidatedMapping]] = []
        if isinstance(mapper, LocalMapper) and cache is None:
            for start in range(0, len(cases), BATCH):
                t0 = time.perf_counter()
                results = mapper.map_many(features[start : start + BATCH], decisions[start : start + BATCH])
                per = (time.perf_counter() - t0) / max(1, len(results))
                for c, r in zip(cases[start : start + BATCH], results, strict=True):
                    mapping = validate_mapping(r, self.catalog)
                    out.append((to_prediction(c, r, mapping, self.catalog, per), mapping))
                tick(len(results))
            return out
        settings_hash = mapper.settings_hash()
        for case, feat, decision in zip(cases, features, decisions, strict=True):
            t0 = time.perf_counter()
            hit = False
            if cache is not None:
                key = cache_key(
                    feat,
                    catalog_version=self.catalog.fingerprint,
                    mapper=mapper.name,
                    model=mapper.model,
                    prompt_hash=mapper.prompt_hash,
                    settings_hash=settings_hash,
                )

                def compute(feat: AlertFeatures = feat, decision: Decision = decision) -> tuple[MappingResult, bool]:
                    result = mapper.map(feat, decision)
                    return result, result.fallback_reason is None

                result, hit = cache.get_or_compute(key, compute)
            else:
                result = mapper.map(feat, decision)
            mapping = validate_mapping(result, self.catalog)
            out.append((to_prediction(case, result, mapping, self.catalog, time.perf_counter() - t0, hit), mapping))
            tick(1)
        return out

    def run(
        self,
        dataset: Dataset,
        knowledge: Sequence[Dataset] = (),
        cv: int | None = None,
        seed: int = 0,
        grouping: GroupingSettings | None = None,
        label: str = "",
    ) -> RunResult:
        started = time.perf_counter()
        cases = dataset.cases
        features = [case_features(c) for c in cases]
        kb_examples: list[Example] = []
        for kb in knowledge:
            kb_examples.extend(examples_from_cases(kb.cases))
        cache = MappingCache(self.cache_dir) if self.cache_dir is not None else None
        predictions: list[Prediction | None] = [None] * len(cases)
        folds: list[int] | None = None
        n_groups: int | None = None
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not self.progress,
            transient=False,
        )
        with progress:
            task = progress.add_task(label or f"eval {dataset.spec}", total=len(cases))

            def tick(n: int) -> None:
                progress.advance(task, n)

            if cv:
                groups = group_cases(cases, grouping)
                n_groups = len(set(groups))
                folds = fold_assignment(groups, cv, seed)
                own = case_examples(cases, features)
                for fold in range(cv):
                    idx = [i for i, f in enumerate(folds) if f == fold]
                    train = [e for i, e in own if folds[i] != fold] + kb_examples
                    mapper = self._mapper(train)
                    preds = self._map(mapper, [cases[i] for i in idx], [features[i] for i in idx], tick, cache)
                    for i, p in zip(idx, preds, strict=True):
                        predictions[i] = p
            else:
                mapper = self._mapper(kb_examples)
                for i, p in enumerate(self._map(mapper, cases, features, tick, cache)):
                    predictions[i] = p
        if cache is not None:
            cache.close()
        final = [p for p in predictions if p is not None]
        truths = [Truth(c.id, c.techniques, c.tactics, c.hard_negative) for c in cases]
        metrics = score(truths, final)
        mode = f"cv-{cv}" if cv else ("kb" if kb_examples else "no-kb")
        return RunResult(
            dataset=dataset,
            mode=mode,
            mapper=self.mapper_factory.__name__ if self.mapper_factory else "local",
            knowledge=[k.spec for k in knowledge],
            metrics=metrics,
            predictions=final,
            folds=folds,
            groups=n_groups,
            seconds=time.perf_counter() - started,
            settings={
                "max_techniques": self.settings.max_techniques,
                "confidence_floor": self.settings.confidence_floor,
                "weights": (self.weights or LocalWeights()).__dict__,
                "seed": seed,
                "scoring": "mapper" if self.decision is None else f"user output, decision mode {self.decision.mode}",
                "split": dataset.split,
            },
            kb_examples=len(kb_examples) + (len(examples_from_cases(cases)) * (cv - 1) // cv if cv else 0),
        )

    def _mapper(self, examples: Sequence[Example]) -> Mapper:
        local = self.local_mapper(examples)
        return self.mapper_factory(local) if self.mapper_factory else local
