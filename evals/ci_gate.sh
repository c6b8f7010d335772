#!/usr/bin/env bash
# Gated evals for CI: the engine the shipped workflows.yaml describes (local mapper, no LLM, no network),
# measured through `attackmap eval` — the catalog, crosswalks and knowledge base are the workflow's
# (../shared/data: the ATT&CK v18.1 bundle, Sigma rules, Atomic Red Team tests). About 5 minutes on 2 cores.
# Usage: evals/ci_gate.sh [REPORT_DIR]    (SHARED_DATA overrides the corpora folder for the cross-corpus run)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
data="${SHARED_DATA:-$here/../shared/data}"
out="${1:-$here/.eval-reports}"
if [[ ! -f "$data/attack/enterprise-attack.json" ]]; then
  echo "ci_gate: $data/attack/enterprise-attack.json not found; set SHARED_DATA" >&2
  exit 2
fi
common=(--workflows "$here/workflows.yaml" --report "$out" --gate --no-progress)
sigma="sigma:$data/sigma/rules.jsonl"
atomic="atomic:$data/atomic-red-team/tests.jsonl"
status=0
# Each corpus cross-validated against the shipped knowledge base (Sigma + ART), less each fold's own rows.
attackmap eval --dataset "$sigma" --cv 5 "${common[@]}" || status=1
attackmap eval --dataset "$atomic" --cv 5 "${common[@]}" || status=1
# Cross-corpus: the knowledge base narrowed to Sigma, evaluated on Atomic Red Team (never tuned on).
attackmap eval --dataset "$atomic" --knowledge-base "$sigma" "${common[@]}" || status=1
# The hand-written cases, as the shipped workflow maps them.
attackmap eval --dataset handwritten "${common[@]}" || status=1
exit "$status"
