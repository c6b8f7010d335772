"""The local mapper: no LLM, no network. Combines three kinds of evidence into ranked techniques:

1. indicators (high-confidence patterns from the indicator catalog),
2. nearest neighbours among labelled examples (the optional knowledge base, which always also
   learns from the catalog's own procedure examples and detection analytics),
3. BM25 retrieval over the catalog's technique text.

Scores are combined with a noisy-or, so independent evidence adds up and no single weak
source can reach a high confidence on its own.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from mitre.calibration import Calibration, load_calibration
from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.decision import covered, rule_techniques
from mitre.indicators import IndicatorSet, is_context
from mitre.models import (
    AlertFeatures,
    Decision,
    DecisionKind,
    Evidence,
    IndicatorHit,
    MappingResult,
    TechniqueScore,
)
from mitre.text import alert_text

if TYPE_CHECKING:  # numpy, scipy and scikit-learn load only when something is actually mapped
    from mitre.knowledge import KnowledgeBase, Neighbour
    from mitre.retrieval import CatalogRetriever

MAPPER_NAME = "local"
# An alert's platform (mitre.features.detect_platform) → the ATT&CK platforms a technique must list
# to be proposed for it. Network alerts come from hosts and devices alike, so they fit everything.
PLATFORMS: dict[str, frozenset[str]] = {
    "windows": frozenset({"Windows"}),
    "linux": frozenset({"Linux", "Containers", "ESXi"}),
    "macos": frozenset({"macOS"}),
    "cloud": frozenset(
        {
            "IaaS",
            "SaaS",
            "Office Suite",
            "Identity Provider",
            "Office 365",
            "Azure AD",
            "Google Workspace",
            "Containers",
        }
    ),
}


@dataclass(frozen=True)
class LocalWeights:
    """Evidence weights; tuned on cross-validated Sigma and Atomic Red Team folds (see README)."""

    neighbours: int = 10
    knn_weight: float = 0.7
    knn_reliable_similarity: float = 0.35
    lexical_weight: float = 0.35
    lexical_top: int = 5
    parent_share: float = 0.5
    classifier_weight: float = 0.95
    classifier_scale: float = 3.0
    classifier_shift: float = 0.6
    classifier_top: int = 3
    keep_ratio: float = 0.9  # a technique after the first is kept only at ≥ keep_ratio × the top confidence
    indicator_keep: float = 0.95  # an indicator-backed technique at or above this is always kept
    # An indicator hit at or above this (the extend bar) ranks before neighbour-only candidates and
    # is not cut by keep_ratio.
    indicator_rank: float = 0.8
    # Once an indicator-backed technique is chosen, a candidate without indicator evidence joins it
    # only at or above this absolute confidence (keep_ratio alone is relative to the weaker rest).
    after_indicator_min: float = 0.8
    abstain_below: float = 0.4  # with no indicator evidence, a top confidence below this maps nothing
    # For a raw event (no detection rule vouches that it is suspicious), the knowledge base's classifiers
    # speak only as far as the event resembles their examples: their votes scale by the nearest
    # example's similarity over this (up to 1), so an event unlike anything the knowledge base holds (a
    # benign admin action, an event type no rule describes) is left alone. A rule's alert is not scaled.
    kb_resemblance: float = 0.3
    # Tactic classifier over the knowledge base (a 14-class problem, far more stable than technique IDs):
    tactic_classifier: bool = True
    tactic_keep_margin: float = -0.6  # a technique's own tactics with a margin at or above this are reported
    tactic_only_margin: float = -0.2  # when nothing is mapped, the best tactic at or above this is reported
    # A candidate's confidence moves by this × the tactic classifier's best margin among its own tactics:
    # the tactic an alert serves is easier to learn than its technique, and it breaks near-ties.
    tactic_agreement: float = 0.1
    # Report confidences through the packaged calibration (mitre/data/calibration.yaml), so they read
    # as the probability a technique is right; False reports the raw evidence scores (to fit it).
    calibrated: bool = True


class LocalMapper:
    name = MAPPER_NAME
    model: str | None = None
    prompt_hash = ""

    def __init__(
        self,
        catalog: Catalog,
        indicators: IndicatorSet,
        settings: MapperSettings,
        knowledge: KnowledgeBase | None = None,
        retriever: CatalogRetriever | None = None,
        weights: LocalWeights | None = None,
        knowledge_fingerprint: str = "",
        load_knowledge: Callable[[], KnowledgeBase | None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.indicators = indicators
        self.settings = settings
        self._knowledge = knowledge
        self._load_knowledge = load_knowledge
        self._knows_catalog = False
        self._retriever = retriever
        self.weights = weights or LocalWeights()
        self._knowledge_fingerprint = knowledge_fingerprint
        self.calibration: Calibration | None = load_calibration() if self.weights.calibrated else None

    @property
    def knowledge(self) -> KnowledgeBase | None:
        """The knowledge base, loaded on first use (`load_knowledge`): a run answered from the
        cache never needs it, and loading it costs more than the rest of start-up."""
        if self._load_knowledge is not None:
            self._knowledge, self._load_knowledge = self._load_knowledge(), None
        if self._knowledge is not None and not self._knows_catalog:
            # It always also learns from the catalog's own procedure examples and analytics; one
            # built without them (eval folds, say) is rebuilt once with them.
            self._knowledge = self._knowledge.with_catalog(self.catalog)
            self._knows_catalog = True
        return self._knowledge

    @property
    def retriever(self) -> CatalogRetriever:
        if self._retriever is None:
            from mitre.retrieval import CatalogRetriever

            self._retriever = CatalogRetriever(self.catalog)
        return self._retriever

    def settings_hash(self) -> str:
        payload = {
            "max": self.settings.max_techniques,
            "floor": self.settings.confidence_floor,
            "weights": self.weights.__dict__,
            "kb": self._knowledge_fingerprint,
            "calibration": self.calibration.model_dump() if self.calibration is not None else None,
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def map(self, features: AlertFeatures, decision: Decision) -> MappingResult:
        return self.map_many([features], [decision])[0]

    def _platform_fits(self, technique_id: str, platform: str | None) -> bool:
        """Whether a technique can occur on the alert's platform (unknown platforms fit everything)."""
        wanted = PLATFORMS.get(platform or "")
        if not wanted:
            return True
        tech = self.catalog.techniques.get(technique_id)
        return tech is None or not tech.platforms or bool(wanted & set(tech.platforms))

    def map_many(self, features: Sequence[AlertFeatures], decisions: Sequence[Decision]) -> list[MappingResult]:
        texts = [alert_text(f) for f in features]
        neighbours = self.knowledge.neighbours_many(texts, self.weights.neighbours) if self.knowledge else None
        classified = (
            self.knowledge.classify_many(texts, self.weights.classifier_top)
            if self.knowledge and self.weights.classifier_weight > 0
            else None
        )
        tactic_scores = (
            self.knowledge.classify_tactics_many(texts) if self.knowledge and self.weights.tactic_classifier else None
        )
        results = []
        for i, (feat, decision) in enumerate(zip(features, decisions, strict=True)):
            hits = decision.indicators or self.indicators.evaluate(feat)
            carried: frozenset[str] = frozenset()
            if decision.kind is DecisionKind.EXTEND:
                # The rule's own techniques are on the alert already: they do not compete with the
                # techniques the extension is about.
                carried = frozenset(rule_techniques(feat, self.catalog))
            results.append(
                self._rank(
                    texts[i],
                    hits,
                    neighbours[i] if neighbours is not None else [],
                    classified[i] if classified is not None else [],
                    tactic_scores[i] if tactic_scores is not None else {},
                    carried=carried,
                    platform=feat.platform,
                    raw_event=feat.rule_name is None,
                )
            )
        return results

    def _rank(
        self,
        text: str,
        hits: Sequence[IndicatorHit],
        neighbours: list[Neighbour],
        classified: Sequence[tuple[str, float]] = (),
        tactic_scores: Mapping[str, float] | None = None,
        carried: frozenset[str] = frozenset(),
        platform: str | None = None,
        raw_event: bool = False,
    ) -> MappingResult:
        """`carried`: the techniques a tagged rule already carries, when the alert is being extended.
        They are left out of the choice, and the techniques the extending indicators name are kept.
        `platform`: the alert's; knowledge-base and catalog-text candidates that cannot occur on it
        are not proposed (an indicator names its technique knowingly and is kept). `raw_event`: the alert
        has no detection rule (see LocalWeights.kb_resemblance)."""
        w = self.weights
        misses: dict[str, float] = defaultdict(lambda: 1.0)  # product of (1 - p) per technique
        evidence: dict[str, list[Evidence]] = defaultdict(list)
        tactic_votes: dict[str, float] = defaultdict(float)

        def add(tid: str, p: float, ev: Evidence) -> None:
            misses[tid] *= 1.0 - min(max(p, 0.0), 0.999)
            evidence[tid].append(ev)

        def indicator_evidence(hit: IndicatorHit) -> Evidence:
            return Evidence(
                source="indicator", field=hit.field, detail=f"{hit.indicator_id}: {hit.matched}", score=hit.confidence
            )

        for hit in hits:
            if not is_context(hit):
                for tid in hit.techniques:
                    add(tid, hit.confidence, indicator_evidence(hit))

        resemblance = 1.0
        if neighbours:
            total = sum(n.similarity for n in neighbours)
            reliability = min(1.0, neighbours[0].similarity / w.knn_reliable_similarity)
            if w.kb_resemblance and raw_event:
                resemblance = min(1.0, neighbours[0].similarity / w.kb_resemblance)
            votes: dict[str, float] = defaultdict(float)
            best: dict[str, Neighbour] = {}
            for n in neighbours:
                for tid in n.example.techniques:
                    votes[tid] += n.similarity
                    best.setdefault(tid, n)
                for tactic_id in n.example.tactics:
                    tactic_votes[tactic_id] += n.similarity / total
            for tid, vote in votes.items():
                if not self._platform_fits(tid, platform):
                    continue
                share = vote / total
                ex = best[tid].example
                add(
                    tid,
                    w.knn_weight * share * reliability,
                    Evidence(
                        source="knowledge_base",
                        detail=f"{share:.0%} of neighbour vote, nearest: {ex.title or ex.id} ({ex.source})",
                        score=round(share * reliability, 4),
                    ),
                )

        for rank, (tid, margin) in enumerate(classified):
            if not self._platform_fits(tid, platform):
                continue
            p = (
                resemblance
                * w.classifier_weight
                / (1.0 + math.exp(-w.classifier_scale * (margin + w.classifier_shift)))
            )
            add(
                tid,
                p,
                Evidence(
                    source="knowledge_base",
                    detail=f"linear classifier over the knowledge base: rank {rank + 1}, margin {margin:+.2f}",
                    score=round(p, 4),
                ),
            )

        lexical = self.retriever.search(text, w.lexical_top)
        if lexical:
            top_score = lexical[0][1]
            for rank, (tid, score) in enumerate(lexical):
                if not self._platform_fits(tid, platform):
                    continue
                rel = score / top_score if top_score else 0.0
                p = w.lexical_weight * rel / (1 + rank)
                add(
                    tid,
                    p,
                    Evidence(source="lexical", detail=f"BM25 rank {rank + 1} over catalog text", score=round(score, 3)),
                )

        # A parent process's indicators support what the alert's own evidence already proposes.
        for hit in hits:
            if is_context(hit):
                for tid in hit.techniques:
                    if tid in misses:
                        add(tid, hit.confidence, indicator_evidence(hit))

        # A sub-technique's evidence also supports its parent (for parent-level fallbacks).
        for tid in list(misses):
            tech = self.catalog.techniques.get(tid)
            if tech is not None and tech.parent:
                misses[tech.parent] *= 1.0 - (1.0 - misses[tid]) * w.parent_share

        scored = []
        for tid, miss in misses.items():
            if tid not in self.catalog.techniques:
                continue
            confidence = 1.0 - miss
            own = [t.id for t in self.catalog.tactics_of(tid)]
            if tactic_scores and w.tactic_agreement:
                tactic, margin = max(
                    ((t, tactic_scores.get(t, -1.0)) for t in own),
                    key=lambda item: item[1],
                    default=(None, -1.0),
                )
                shift = w.tactic_agreement * margin
                confidence = min(max(confidence + shift, 0.0), 0.999)
                evidence[tid].append(
                    Evidence(
                        source="knowledge_base",
                        detail=f"tactic classifier: {tactic or 'no tactic'} margin {margin:+.2f}, "
                        f"confidence {'raised' if shift >= 0 else 'lowered'} by the score",
                        score=round(abs(shift), 4),
                    )
                )
            scored.append(
                TechniqueScore(
                    technique_id=tid,
                    confidence=round(confidence, 4),
                    tactic_ids=self._tactics(own, tactic_votes, tactic_scores),
                    evidence=tuple(evidence.get(tid, ())),
                )
            )
        scored.sort(key=lambda s: (-s.confidence, s.technique_id))
        if carried:
            keep = frozenset(t for h in hits for t in h.techniques if not covered(t, carried))
            chosen = self._choose([s for s in scored if not covered(s.technique_id, carried)], keep)
        else:
            chosen = self._choose(scored)
        tactic_only: tuple[str, ...] = ()
        if not chosen and tactic_scores:
            best_t, best_m = max(tactic_scores.items(), key=lambda kv: kv[1])
            if best_m >= w.tactic_only_margin:
                tactic_only = (best_t,)
        elif not chosen and tactic_votes:
            best_tactic = max(tactic_votes.items(), key=lambda kv: kv[1])
            if best_tactic[1] >= 0.5:
                tactic_only = (best_tactic[0],)
        candidates = tuple(scored[:10])
        if self.calibration is not None:
            chosen = list(self.calibration.apply(chosen, raw_event))
            candidates = self.calibration.apply(candidates, raw_event)
        return MappingResult(
            mapper=MAPPER_NAME, techniques=tuple(chosen), tactic_ids=tactic_only, candidates=candidates
        )

    def _choose(self, scored: list[TechniqueScore], keep: frozenset[str] = frozenset()) -> list[TechniqueScore]:
        """Techniques in `keep` first (those an extending indicator named), then indicator-backed
        ones (they are precise), then the best of the rest: above the floor and within `keep_ratio`
        of the best of them, indicator hits at or above `indicator_rank` first and exempt from that cut,
        and, next to a chosen indicator-backed technique, only at or above `after_indicator_min`.
        A parent is dropped when its own sub-technique is chosen. With no indicator and only weak
        evidence, nothing is chosen."""
        w = self.weights
        limit = self.settings.max_techniques

        def indicator_score(c: TechniqueScore) -> float:
            return max((e.score for e in c.evidence if e.source == "indicator"), default=0.0)

        forced = [c for c in scored if c.technique_id in keep]
        strong = [
            c
            for c in scored
            if c not in forced
            and indicator_score(c) > 0.0
            and (c.confidence >= w.indicator_keep or any(e.score >= w.indicator_keep for e in c.evidence))
        ]
        if not forced and not strong and (not scored or scored[0].confidence < w.abstain_below):
            return []
        chosen: list[TechniqueScore] = []

        def take(cand: TechniqueScore) -> None:
            tech = self.catalog.techniques[cand.technique_id]
            related = {c.technique_id for c in chosen} | {
                self.catalog.techniques[c.technique_id].parent for c in chosen
            }
            if cand.technique_id in related or (
                tech.parent is not None and tech.parent in {c.technique_id for c in chosen}
            ):
                return
            chosen.append(cand)

        for cand in forced:
            take(cand)  # always kept, even past the limit: they are why the alert is extended
        for cand in strong:
            if len(chosen) < limit:
                take(cand)
        rest = [c for c in scored if c not in forced and c not in strong]
        top = rest[0].confidence if rest else 0.0
        rest.sort(key=lambda c: indicator_score(c) < w.indicator_rank)  # stable: confidence order within
        for cand in rest:
            if len(chosen) >= limit:
                break
            if cand.confidence < self.settings.confidence_floor:
                continue
            if cand.confidence < w.keep_ratio * top and indicator_score(cand) < w.indicator_rank:
                continue
            if (
                indicator_score(cand) == 0.0
                and cand.confidence < w.after_indicator_min
                and any(indicator_score(c) > 0.0 for c in chosen)
            ):
                continue
            take(cand)
        return chosen

    def _tactics(
        self, own: Sequence[str], votes: dict[str, float], tactic_scores: Mapping[str, float] | None = None
    ) -> tuple[str, ...]:
        """A technique's own tactics (`own`), narrowed to those the tactic classifier predicts (or the
        best of them) when it is available, else to those the neighbours voted for when they did."""
        if tactic_scores and len(own) > 1:
            margins = {t: tactic_scores.get(t, -99.0) for t in own}
            kept = [t for t in own if margins[t] >= self.weights.tactic_keep_margin]
            return tuple(kept or [max(own, key=lambda t: margins[t])])
        voted = [t for t in own if votes.get(t, 0.0) > 0.0]
        return tuple(voted or own)
