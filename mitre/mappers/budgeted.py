"""A Mapper wrapper that consults the budget before every LLM call.

- killed (hard limit tripped or `attackmap budget kill`): the local mapper answers, with
  fallback_reason="budget_exhausted" (not cached, so the alert is mapped again once the budget allows).
- soft limit reached: throttle per `budget.soft_limit_action`:
  `untagged_only` (default): only alerts whose rule has no techniques reach the LLM (extend → local);
  `raise_risk`: only alerts with risk score ≥ `budget.soft_limit_min_risk` reach the LLM;
  `local_only`: nothing reaches the LLM. Throttled alerts get fallback_reason="budget_soft_limit".
- every vendor call's usage is priced and written to the ledger (via the LLM mapper's `on_call`).
Name, model, prompt hash and settings hash are the inner mapper's, so cache keys do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mitre.budget.budget import Budget
from mitre.budget.ledger import open_ledger
from mitre.config import Environment, Workflow
from mitre.decision import NO_RULE, TACTIC_ONLY_RULE, UNTAGGED_RULE
from mitre.mappers.base import Mapper
from mitre.mappers.llm.mapper import CallRecord, LLMMapper
from mitre.mappers.local import LocalMapper
from mitre.models import AlertFeatures, Decision, DecisionKind, MappingResult, Outcome

BUDGET_EXHAUSTED = "budget_exhausted"
BUDGET_SOFT_LIMIT = "budget_soft_limit"
_UNTAGGED = frozenset({UNTAGGED_RULE, NO_RULE, TACTIC_ONLY_RULE})


class BudgetedMapper:
    def __init__(self, inner: LLMMapper, local: LocalMapper, budget: Budget) -> None:
        self.inner = inner
        self.local = local
        self.budget = budget
        self.name = inner.name
        self.model = inner.model
        self.prompt_hash = inner.prompt_hash
        inner.on_call = self._on_call

    def settings_hash(self) -> str:
        return self.inner.settings_hash()

    def _on_call(self, record: CallRecord) -> None:
        self.budget.record_call(
            record.provider,
            record.model,
            record.usage,
            record.outcome,
            record.batch,
            record.error_kind,
            record.unknown_ids,
            record.cache_ttl,
        )

    def allowed_when_soft(self, features: AlertFeatures, decision: Decision) -> bool:
        s = self.budget.settings
        if s.soft_limit_action == "local_only":
            return False
        if s.soft_limit_action == "raise_risk":
            return features.risk_score is not None and features.risk_score >= s.soft_limit_min_risk
        return decision.kind is DecisionKind.MAP and decision.reason in _UNTAGGED

    def map(self, features: AlertFeatures, decision: Decision) -> MappingResult:
        state = self.budget.check()
        reason = None
        if state.state == "killed":
            reason = BUDGET_EXHAUSTED
        elif state.state == "soft" and not self.allowed_when_soft(features, decision):
            reason = BUDGET_SOFT_LIMIT
        if reason is not None:
            self.budget.record_fallback(reason)
            return self.local.map(features, decision).model_copy(update={"fallback_reason": reason})
        result = self.inner.map(features, decision)
        if result.fallback_reason:
            self.budget.record_fallback(result.fallback_reason)
        return self.priced(result)

    def priced(self, result: MappingResult, batch: bool = False) -> MappingResult:
        """The result with what its calls cost (list or batch price), for the run summary and provenance."""
        if result.usage is None or not result.usage.calls:
            return result
        cost = self.budget.prices.cost(self.model, result.usage, batch, self.inner.settings.prompt_cache_ttl)
        return result.model_copy(update={"cost_usd": cost})

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        """Engine observer: hybrid-decision and cache telemetry into the ledger."""
        self.budget.record_outcomes(outcomes)


def with_budget(
    mapper: Mapper, local: LocalMapper, workflow: Workflow, env: Environment
) -> tuple[Mapper, Callable[[Sequence[Outcome]], None] | None]:
    """Wrap an LLM mapper in its workflow's budget (the ledger opens lazily per process)."""
    if not isinstance(mapper, LLMMapper):
        return mapper, None
    ledger = open_ledger(workflow.budget, env.home)
    wrapped = BudgetedMapper(mapper, local, Budget(ledger, workflow.budget, workflow.name))
    return wrapped, wrapped.observe
