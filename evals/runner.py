"""Run the engine a workflows file describes over eval cases, and score what it produced.

The evals measure the product: each case's alert goes through `Engine.process_batch`, built by
`mitre.assemble.build_engine` from the same workflows.yaml resolution as `attackmap enrich`
(catalog, crosswalks, knowledge base, mapper settings; command-line flags on top). Two changes to
the workflow, both stated in every report:

- the risk threshold and opt-outs are lifted: they choose which alerts are enriched at all, not
  how well (`--scoring user`, the default, then scores the `threat.*` the enrichment writes plus
  the rule's own tags, as the user sees the alert); `--scoring mapper` maps every alert (decision
  mode `always`) and scores the mapper's own output;
- with cross-validation, each fold's engine gets the configured knowledge base less the rows of
  the evaluated corpus that fall in that fold (recognised by file and row id); when the evaluated
  corpus is not part of the configured knowledge base, its other folds are added, as before.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evals.datasets import Case, LoadReport, load_dataset, parse_spec, select_split
from evals.grouping import GroupingSettings, fold_assignment, group_cases
from evals.labels import LabelStats, normalise_cases
from evals.metrics import Prediction, Truth, score
from mitre.assemble import EngineOptions, build_engine, knowledge_paths, mapper_settings, resolve_catalog
from mitre.budget.prices import PriceTable
from mitre.catalog import Catalog
from mitre.config import DecisionSettings, Environment, OptOuts, WorkflowsFile
from mitre.engine import Engine
from mitre.enrich import build_threat
from mitre.features import extract_features
from mitre.knowledge import Example, KnowledgeBase, load_examples, row_examples
from mitre.knowledge_store import LoadedKnowledge
from mitre.mappers.base import MapperRegistry
from mitre.models import AlertFeatures, Outcome, OutcomeStatus, RawAlert, ValidatedMapping
from mitre.text import alert_text

BATCH = 256
Scoring = Literal["user", "mapper"]
# Validation issues that name a technique the mapper returned but the alert did not get.
_DROPPED = frozenset({"unknown_technique", "duplicate", "parent_of_chosen_child"})


@dataclass
class Dataset:
    spec: str
    kind: str
    cases: list[Case]
    load: LoadReport
    labels: LabelStats
    split: str | None = None
    files: tuple[Path, ...] = ()  # the files the cases were read from


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
    configuration: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def dataset_files(spec: str) -> tuple[Path, ...]:
    """The files a dataset spec reads (a folder of cases: each of its *.jsonl)."""
    _, path = parse_spec(spec)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return tuple(f.resolve() for f in files)


def prepare(spec: str, catalog: Catalog, split: str | None = None) -> Dataset:
    kind, cases, load = load_dataset(spec)
    normalised, stats = normalise_cases(select_split(cases, split), catalog)
    return Dataset(
        spec=spec, kind=kind, cases=normalised, load=load, labels=stats, split=split, files=dataset_files(spec)
    )


def scoring_decision(settings: DecisionSettings, scoring: Scoring = "user") -> DecisionSettings:
    """The workflow's hybrid rule without the filters that choose which alerts are enriched at all;
    for mapper scoring, a rule that maps every alert."""
    update: dict[str, Any] = {"min_risk_score": 0.0, "opt_outs": OptOuts()}
    if scoring == "mapper":
        update["mode"] = "always"
    return settings.model_copy(update=update)


def scoring_config(config: WorkflowsFile, workflow: str | None, scoring: Scoring) -> WorkflowsFile:
    """The workflows file with the evaluated workflow's decision made a scoring decision."""
    chosen = config.workflow(workflow)
    workflows = [
        w.model_copy(update={"decision": scoring_decision(w.decision, scoring)}) if w is chosen else w
        for w in config.workflows
    ]
    scored = config.model_copy(update={"workflows": workflows})
    scored._source = config.source
    return scored


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


def _threat_ids(threat: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Technique and tactic IDs of an ECS threat object; a parent listed for its sub-technique is implied."""
    technique = threat.get("technique") or {}
    subs = list((technique.get("subtechnique") or {}).get("id") or [])
    parents = [t for t in technique.get("id") or [] if not any(s.startswith(t + ".") for s in subs)]
    return tuple(subs + parents), tuple((threat.get("tactic") or {}).get("id") or [])


def user_prediction(
    base: Prediction, features: AlertFeatures, enriched: Mapping[str, Any] | None, catalog: Catalog
) -> Prediction:
    """What the user receives for this alert: the enriched `threat.*` (none when the alert was
    skipped) plus the rule's own tags. Mapper confidences are kept; a rule tag counts as certain."""
    refs = features.rule_threat + features.existing_threat
    techniques = [r.technique_id for r in refs if r.technique_id]
    tactics = [r.tactic_id for r in refs if r.tactic_id]
    if enriched is not None:
        shown_t, shown_ta = _threat_ids(enriched.get("threat") or {})
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


def mapper_prediction(
    case: Case, mapping: ValidatedMapping, latency: float, cost: float | None, cache_hit: bool
) -> Prediction:
    """The mapper's own output for one alert, with the IDs it returned that validation dropped."""
    validated = mapping.result
    dropped = [i.technique_id for i in mapping.issues if i.code in _DROPPED and i.technique_id]
    raw = tuple(t.technique_id for t in validated.techniques) + tuple(dropped)
    tactics = list(validated.tactic_ids)
    for t in validated.techniques:
        tactics.extend(t.tactic_ids)
    return Prediction(
        case_id=case.id,
        techniques=tuple(t.technique_id for t in validated.techniques),
        confidences={t.technique_id: t.confidence for t in validated.techniques},
        tactics=tuple(dict.fromkeys(tactics)),
        raw_ids=raw,
        invalid_ids=tuple(i.technique_id for i in mapping.issues if i.code == "unknown_technique" and i.technique_id),
        latency_s=latency,
        cost_usd=cost,
        cache_hit=cache_hit,
        evidence={
            t.technique_id: [f"{e.source}{'@' + e.field if e.field else ''}: {e.detail}" for e in t.evidence[:4]]
            for t in (*validated.techniques, *validated.candidates[:5])
        },
        fallback_reason=validated.fallback_reason,
    )


def fold_knowledge(
    examples: Sequence[Example], base: LoadedKnowledge, held_out: Mapping[str, set[str]], label: str
) -> LoadedKnowledge:
    """The knowledge base less the held-out rows: `held_out` maps a file name (an example's source) to
    the rows of that file in the evaluated fold, by id or by "<file>:<line>" (an id-less row's id);
    a row's prose example goes with it."""
    kept = [e for e in examples if not (e.source in held_out and e.id.removesuffix(" prose") in held_out[e.source])]
    digest = hashlib.sha256(f"{base.fingerprint}|{label}|{len(kept)}".encode()).hexdigest()[:16]
    return LoadedKnowledge(KnowledgeBase(kept) if kept else None, digest, base.sources, base.warnings)


class Runner:
    """Builds the engines (one, or one per fold) and turns their outcomes into predictions."""

    def __init__(
        self,
        config: WorkflowsFile,
        *,
        env: Environment | None = None,
        options: EngineOptions | None = None,
        scoring: Scoring = "user",
        registry: MapperRegistry | None = None,
        progress: bool = True,
    ) -> None:
        self.env = env or Environment()
        # Evals measure the mapper: analysts' corrections and opt-outs never reach them.
        self.options = replace(options or EngineOptions(cache=False), feedback=False)
        self.workflow = self.options.workflow
        self.scoring: Scoring = scoring
        self.config = scoring_config(config, self.workflow, scoring)
        self.registry = registry
        self.progress = progress
        self.warnings: list[str] = []
        self.catalog = resolve_catalog(config, self.env, self.options.catalog, self.warnings)
        self.settings = mapper_settings(config, self.options)
        self.prices = PriceTable.load()

    @property
    def knowledge_paths(self) -> tuple[Path, ...]:
        return tuple(p.resolve() for p in knowledge_paths(self.config, self.env, self.options))

    def engine(self, knowledge: LoadedKnowledge | None = None) -> Engine:
        return build_engine(
            self.config, self.env, self.options, self.registry, catalog=self.catalog, knowledge=knowledge
        )

    # ------------------------------------------------------------ scoring one engine's outcomes

    def _predict(self, engine: Engine, cases: Sequence[Case], tick: Callable[[int], None]) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(cases), BATCH):
            batch = cases[start : start + BATCH]
            t0 = time.perf_counter()
            outcomes = engine.process_batch([RawAlert(line=i, alert=c.alert) for i, c in enumerate(batch)])
            per = (time.perf_counter() - t0) / max(1, len(batch))
            out += [self._prediction(engine, c, o, per) for c, o in zip(batch, outcomes, strict=True)]
            tick(len(batch))
        return out

    def _prediction(self, engine: Engine, case: Case, outcome: Outcome, latency: float) -> Prediction:
        enriched = outcome.status is OutcomeStatus.ENRICHED and outcome.mapping is not None
        if enriched and outcome.mapping is not None:
            usage, model = outcome.mapping.result.usage, outcome.mapping.result.model
            cost = 0.0 if usage is None else self.prices.cost(model, usage)
            base = mapper_prediction(case, outcome.mapping, latency, cost, outcome.cache_hit)
        else:
            base = Prediction(case_id=case.id, cost_usd=0.0, latency_s=latency)
        if self.scoring == "mapper":
            return base
        return user_prediction(base, case_features(case), outcome.alert if enriched else None, engine.catalog)

    # ------------------------------------------------------------ runs

    def run(
        self,
        dataset: Dataset,
        cv: int | None = None,
        seed: int = 0,
        grouping: GroupingSettings | None = None,
        label: str = "",
    ) -> RunResult:
        started = time.perf_counter()
        cases = dataset.cases
        predictions: list[Prediction | None] = [None] * len(cases)
        folds: list[int] | None = None
        n_groups: int | None = None
        kb_examples = 0
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
                engine, kb_examples = self._run_folds(dataset, folds, cv, seed, predictions, tick)
            else:
                engine = self.engine()
                for i, p in enumerate(self._predict(engine, cases, tick)):
                    predictions[i] = p
        final = [p for p in predictions if p is not None]
        truths = [Truth(c.id, c.techniques, c.tactics, c.hard_negative) for c in cases]
        configuration = engine.configuration.as_dict()
        configuration["scoring"] = self._scoring_note()
        if cv:
            configuration["knowledge_base"]["cross_validation"] = (
                f"{cv} folds (seed {seed}): each fold's knowledge base leaves out the evaluated corpus's rows "
                "in that fold"
            )
        knowledge = list(engine.configuration.knowledge_sources)
        has_files = any(not s.startswith("ATT&CK ") for s in knowledge)
        return RunResult(
            dataset=dataset,
            mode=f"cv-{cv}" if cv else ("kb" if has_files else "no-kb"),
            mapper=engine.mapper.name,
            knowledge=knowledge,
            metrics=score(truths, final),
            predictions=final,
            folds=folds,
            groups=n_groups,
            seconds=time.perf_counter() - started,
            settings={
                "max_techniques": self.settings.max_techniques,
                "confidence_floor": self.settings.confidence_floor,
                "seed": seed,
                "scoring": self._scoring_note(),
                "split": dataset.split,
            },
            kb_examples=kb_examples,
            configuration=configuration,
            warnings=[*self.warnings, *engine.warnings],
        )

    def _scoring_note(self) -> str:
        decision = self.config.workflow(self.workflow).decision
        if self.scoring == "mapper":
            return "mapper: every alert mapped (decision mode always), the mapper's own output scored"
        return (
            f"user: the workflow's hybrid rule (mode {decision.mode}) without risk threshold or opt-outs; "
            "threat.* as enriched plus the rule's own tags"
        )

    def _run_folds(
        self,
        dataset: Dataset,
        folds: list[int],
        cv: int,
        seed: int,
        predictions: list[Prediction | None],
        tick: Callable[[int], None],
    ) -> tuple[Engine, int]:
        """One engine per fold, each with the knowledge base less that fold's rows; (last engine, examples)."""
        cases = dataset.cases
        paths = self.knowledge_paths
        examples, _ = load_examples([p for p in paths if p.is_file()], self.catalog)
        own_in_kb = {f.name for f in dataset.files if f in paths}
        if not own_in_kb:  # the evaluated corpus joins the knowledge base, less each fold
            examples = examples + [e for _, e in case_examples(cases)]
        sources = tuple(str(p) for p in paths if p.is_file()) + tuple(str(f) for f in dataset.files if f not in paths)
        if self.catalog.data.examples:
            sources += (f"ATT&CK {self.catalog.version} procedure examples and analytics",)
        base = LoadedKnowledge(None, _fingerprint(sources, seed, cv), sources)
        engine: Engine | None = None
        for fold in range(cv):
            idx = [i for i, f in enumerate(folds) if f == fold]
            held_out: dict[str, set[str]] = {}
            for i in idx:  # rows by file: the KB file's name, or the case's own source when it joined here
                case = cases[i]
                for name in own_in_kb or {case.source}:
                    held_out.setdefault(name, set()).update(r for r in (case.id, case.origin) if r)
            engine = self.engine(fold_knowledge(examples, base, held_out, f"fold {fold}/{cv} seed {seed}"))
            for i, p in zip(idx, self._predict(engine, [cases[i] for i in idx], tick), strict=True):
                predictions[i] = p
        assert engine is not None
        return engine, len(examples)


def _fingerprint(sources: Sequence[str], seed: int, cv: int) -> str:
    stats = [(s, Path(s).stat().st_size, Path(s).stat().st_mtime_ns) if Path(s).is_file() else (s,) for s in sources]
    return hashlib.sha256(repr((stats, seed, cv)).encode()).hexdigest()[:16]
