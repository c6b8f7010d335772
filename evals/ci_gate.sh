#!/usr/bin/env bash
# Gated evals for CI: the local mapper (no LLM, no network) on the reference corpora.
# Needs ../shared/data (ATT&CK bundle, Sigma, Atomic Red Team, Chronicle, Panther); about 4 minutes on 2 cores.
# Usage: evals/ci_gate.sh [REPORT_DIR]    (SHARED_DATA overrides the corpora folder)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
data="${SHARED_DATA:-$here/../shared/data}"
out="${1:-$here/.eval-reports}"
if [[ ! -f "$data/attack/enterprise-attack.json" ]]; then
  echo "ci_gate: $data/attack/enterprise-attack.json not found; set SHARED_DATA" >&2
  exit 2
fi
common=(--mapper local --catalog "$data/attack/enterprise-attack.json"
        --crosswalk "$data/attack/v18_to_v19_crosswalk.jsonl" --report "$out" --gate --no-progress)
sigma="sigma:$data/sigma/rules.jsonl"
atomic="atomic:$data/atomic-red-team/tests.jsonl"
shipped=(--knowledge-base "$sigma" --knowledge-base "$atomic")  # the default workflow's knowledge base
status=0
# Each corpus cross-validated with the other one in the knowledge base, as the default workflow ships.
attackmap eval --dataset "$sigma" --cv 5 --knowledge-base "$atomic" "${common[@]}" || status=1
attackmap eval --dataset "$atomic" --cv 5 --knowledge-base "$sigma" "${common[@]}" || status=1
attackmap eval --dataset "$atomic" --knowledge-base "$sigma" "${common[@]}" || status=1
attackmap eval --dataset handwritten "${shipped[@]}" "${common[@]}" || status=1
# Other vendors' rules in other query languages (YARA-L, Python, SQL), as untagged rules.
attackmap eval --dataset "rules:$data/chronicle/rules.jsonl" "${shipped[@]}" --profile chronicle-rules \
  "${common[@]}" || status=1
attackmap eval --dataset "rules:$data/panther/rules.jsonl" "${shipped[@]}" --profile panther-rules \
  "${common[@]}" || status=1
# Real Windows telemetry: measured on its check split (never tuned on) once the file has cases.
telemetry="$data/telemetry-dev/cases.jsonl"
if [[ -s "$telemetry" ]]; then
  attackmap eval --dataset "telemetry:$telemetry" --split check "${shipped[@]}" --profile telemetry-check \
    "${common[@]}" || status=1
else
  echo "ci_gate: $telemetry is missing or empty: telemetry profile skipped" >&2
fi
exit "$status"
