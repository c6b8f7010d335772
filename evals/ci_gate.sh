#!/usr/bin/env bash
# Gated evals for CI: the engine the shipped workflows.yaml describes (local mapper, no LLM, no network),
# measured through `attackmap eval` — the catalog, crosswalks and knowledge base are the workflow's
# (../shared/data: the ATT&CK v18.1 bundle, Sigma rules, Atomic Red Team tests); other vendors' rules
# (Chronicle, Panther) and, when its file has cases, the real Windows telemetry are measured the same way.
# Usage: evals/ci_gate.sh [REPORT_DIR]    (SHARED_DATA overrides the corpora folder)
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
# Other vendors' rules in other query languages (YARA-L, Python, SQL), as untagged rules.
attackmap eval --dataset "rules:$data/chronicle/rules.jsonl" --profile chronicle-rules "${common[@]}" || status=1
attackmap eval --dataset "rules:$data/panther/rules.jsonl" --profile panther-rules "${common[@]}" || status=1
# Real Windows telemetry: measured on its check split (never tuned on) once the file has cases.
telemetry="$data/telemetry-dev/cases.jsonl"
if [[ -s "$telemetry" ]]; then
  attackmap eval --dataset "telemetry:$telemetry" --split check --profile telemetry-check "${common[@]}" || status=1
else
  echo "ci_gate: $telemetry is missing or empty: telemetry profile skipped" >&2
fi
exit "$status"
