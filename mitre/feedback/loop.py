"""What the engine consults: analysts' corrections, opt-outs, and where it reports what it decided.

- A correction (or a rejection) overrides the mapping of the same cache key from the next batch on: the
  engine checks `version()` before each batch and forgets what it remembered when it moved.
- An accept changes nothing but counts towards the rule's precision.
- Corrections and accepts of the tenants listed in ``feedback.knowledge_tenants`` are exported as
  labelled examples (`export_knowledge`) that the knowledge base learns from on its next build; other
  tenants' never leave their tenant.
- `observe` is an engine observer: low-confidence or disputed mappings go to the review queue, and
  skip/map/extend counts per rule to the decision telemetry.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from mitre.config import Environment, FeedbackSettings
from mitre.enrich import PROVENANCE_FIELD
from mitre.features import FieldReader, first_text
from mitre.feedback.models import Feedback, ReviewItem
from mitre.feedback.store import CorrectionStore, ElasticCorrections, FeedbackLog, SQLiteCorrections
from mitre.models import Evidence, MappingResult, Outcome, OutcomeStatus, TechniqueScore

ANALYST_MAPPER = "analyst"
_RULE_FIELDS = (
    "kibana.alert.rule.rule_id",
    "kibana.alert.rule.uuid",
    "signal.rule.rule_id",
    "event_type",
    "event.action",
)
_RULE_NAMES = ("kibana.alert.rule.name", "signal.rule.name", "event_type")
_ALERT_IDS = ("kibana.alert.uuid", "_id", "event.id", "id")
_READER = FieldReader((*_RULE_FIELDS, *_RULE_NAMES, *_ALERT_IDS))
_RULE_READER = FieldReader(_RULE_FIELDS)


def rule_of(alert: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(rule id, rule name, alert id) of an alert or tool event, as feedback and telemetry name them."""
    flat = _READER.read(alert)
    return first_text(flat, _RULE_FIELDS), first_text(flat, _RULE_NAMES), first_text(flat, _ALERT_IDS)


class FeedbackLoop:
    def __init__(self, corrections: CorrectionStore, log: FeedbackLog | None, review_below: float = 0.6) -> None:
        self.corrections = corrections
        self.log = log
        self.review_below = review_below

    def version(self) -> int:
        return self.corrections.version()

    def overrides(self, keys: Iterable[str]) -> dict[str, Feedback]:
        """The keys whose newest verdict replaces the mapping (correct, reject); an accept keeps it."""
        return {k: f for k, f in self.corrections.latest(keys).items() if f.verdict != "accept"}

    @staticmethod
    def result_for(feedback: Feedback) -> MappingResult:
        """The mapping an analyst's verdict stands for: their techniques, or none for a rejection."""
        evidence = Evidence(source="analyst", field=None, detail=f"{feedback.verdict} by {feedback.analyst}", score=1.0)
        techniques = tuple(
            TechniqueScore(technique_id=t, confidence=1.0, evidence=(evidence,), rationale=feedback.comment)
            for t in feedback.techniques
        )
        return MappingResult(mapper=ANALYST_MAPPER, techniques=techniques if feedback.verdict == "correct" else ())

    def opted_out(self, tenant: str | None) -> set[str]:
        return self.corrections.opted_out(tenant)

    # ------------------------------------------------------------ what the engine reports

    def _review_item(self, outcome: Outcome, now: float) -> ReviewItem | None:
        alert = outcome.alert or {}
        provenance = alert.get(PROVENANCE_FIELD)
        if not isinstance(provenance, dict) or not provenance.get("mapping_key") or outcome.mapping is None:
            return None
        techniques = list(provenance.get("techniques") or [])
        confidence = max((float(t.get("confidence") or 0) for t in techniques), default=0.0)
        mapped = {str(t.get("id")) for t in techniques}
        threat = alert.get("threat") if isinstance(alert.get("threat"), dict) else {}
        assert isinstance(threat, dict)
        subs = ((threat.get("technique") or {}).get("subtechnique") or {}).get("id") or []
        tagged = set(subs) | set((threat.get("technique") or {}).get("id") or [])
        parents = {t.split(".")[0] for t in mapped | set(subs)}
        # Tags already on the alert (an analyst's, a tool's) that the mapping does not share.
        disputed = outcome.mapping.result.mapper != ANALYST_MAPPER and bool(
            outcome.decision and outcome.decision.kind.value == "map" and tagged - mapped - parents
        )
        if confidence >= self.review_below and not disputed:
            return None
        rule_id, rule_name, alert_id = rule_of(alert)
        return ReviewItem(
            mapping_key=str(provenance["mapping_key"]),
            tenant=provenance.get("tenant"),
            ts=now,
            alert_id=alert_id,
            rule_id=rule_id,
            rule_name=rule_name,
            confidence=confidence,
            disputed=disputed,
            techniques=techniques,
            alert=alert,
        )

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        """Engine observer: the review queue and per-rule decision counts, one transaction per batch."""
        if self.log is None:
            return
        now = time.time()
        review: dict[str, ReviewItem] = {}
        decisions: Counter[tuple[str | None, str, str]] = Counter()
        for outcome in outcomes:
            if outcome.decision is None or outcome.alert is None:
                continue
            provenance = outcome.alert.get(PROVENANCE_FIELD)
            tenant = provenance.get("tenant") if isinstance(provenance, dict) else None
            rule = first_text(_RULE_READER.read(outcome.alert), _RULE_FIELDS) or "(no rule)"
            decisions[(tenant, rule, outcome.decision.kind.value)] += 1
            if outcome.status is OutcomeStatus.ENRICHED and not outcome.cache_hit:
                item = self._review_item(outcome, now)
                if item is not None:
                    review[item.mapping_key] = item
        self.log.record(list(review.values()), dict(decisions))

    # ------------------------------------------------------------ knowledge base

    def export_knowledge(self, path: Path, tenants: Iterable[str]) -> int:
        """Write the allowed tenants' corrections and accepts as labelled eval-case rows (the knowledge
        base reads that shape); the file is rewritten only when its content changes, so its fingerprint
        moves only then. Returns the number of rows."""
        rows = []
        for tenant in tenants:
            seen: set[str] = set()
            for item in self.corrections.history(tenant, limit=100_000):
                if item.mapping_key in seen:
                    continue
                seen.add(item.mapping_key)
                if item.verdict == "reject" or not item.techniques or not item.alert:
                    continue
                alert = {k: v for k, v in item.alert.items() if k not in (PROVENANCE_FIELD, "threat")}
                group = f"feedback:{hashlib.sha256(item.mapping_key.encode()).hexdigest()[:12]}"
                rows.append({"alert": alert, "expected": {"techniques": list(item.techniques)}, "group": group})
        content = b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in rows)
        if not path.is_file() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(".tmp")
            staging.write_bytes(content)
            staging.replace(path)
        return len(rows)


def open_feedback(settings: FeedbackSettings, env: Environment) -> FeedbackLoop:
    """The feedback loop workflows.yaml describes: corrections in SQLite or Elasticsearch, the review
    queue and telemetry beside them in $ATTACKMAP_HOME (or the configured SQLite file)."""
    path = settings.path or env.home / "feedback.sqlite"
    corrections: CorrectionStore
    if settings.store == "elasticsearch":
        from mitre.io.elastic import es_client

        corrections = ElasticCorrections(es_client(settings.es_url, env), settings.index)
    else:
        corrections = SQLiteCorrections(path)
    return FeedbackLoop(corrections, FeedbackLog(path), settings.review_below)
