"""Cost simulation: a month of N alerts (default 1,000,000) → decide → cache → cascade → an LLM, with the
vendors' prompt caching priced as it really behaves.

Alerts are drawn with realistic repetition from the shared corpora (loaded by path, never copied):
detection rules from ../shared/data/sigma/rules.jsonl and command lines from
../shared/data/atomic-red-team/tests.jsonl. Rules fire with Zipf frequencies (a few noisy rules make
most alerts); each rule fires on a small pool of command lines (Zipf-sized, preferring Atomic tests of
the rule's own technique), drawn with Zipf frequencies too. Every alert also gets volatile values
(host, user, timestamp, PID, GUID, temp file names) that the cache key normalises away, and a time,
uniformly over 30 days.

What is simulated, with the engine's real code:
- the hybrid decision and the REAL cache key (`mitre.cachekey.cache_key`); the mapping cache keeps an
  LLM answer for `--cache-ttl-days` (cache.llm_ttl_days, 30): a key's first alert, and its first alert
  after the entry expired, is a miss (a key the cascade answers locally is counted the same way);
- the cascade: a miss goes to the LLM only when the local mapper (Sigma + ART knowledge base, as in
  workflows.yaml) is not confident (`--cascade`, workflows.yaml's default);
- the prompt: the REAL prompt (`LLMMapper.render`) for a sample of calls, counted with a real
  tokenizer, OpenAI's o200k_base (`bpe-openai`). That is exact for the GPT models; Anthropic does not
  publish Claude's tokenizer, so Claude counts are an ESTIMATE (o200k tokens, plus Anthropic's
  documented tool-use system prompt, `ANTHROPIC_TOOL_PROMPT`);
- prompt caching from the calls' times: the static prefix (instructions, the whole catalog, the
  response schema) is cached only when it is at least the model's `min_cacheable_tokens`
  (mitre/data/prices.yaml). Anthropic: a call within the TTL (5 minutes or 1 hour, refreshed by each
  read) of the previous call reads the prefix at 0.1x input, any other call writes it at 1.25x (5m) or
  2x (1h). OpenAI: automatic, no write surcharge; a prefix idle for `cache_idle_s` (5 minutes) is gone.

    python bench/cost_simulation.py                # 1,000,000 alerts
    python bench/cost_simulation.py --alerts 100000 --prompt-sample 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from mitre.budget.prices import Price, PriceTable  # noqa: E402
from mitre.cachekey import cache_key  # noqa: E402
from mitre.catalog import load_catalog  # noqa: E402
from mitre.config import CacheSettings, DecisionSettings, MapperSettings  # noqa: E402
from mitre.decision import decide  # noqa: E402
from mitre.features import extract_features  # noqa: E402
from mitre.indicators import load_indicators  # noqa: E402
from mitre.knowledge import KnowledgeBase, load_examples  # noqa: E402
from mitre.mappers.llm.mapper import LLMMapper  # noqa: E402
from mitre.mappers.local import LocalMapper  # noqa: E402
from mitre.models import DecisionKind  # noqa: E402
from mitre.prompting import MAX_UNCACHED_TOKENS  # noqa: E402

RISK = {"informational": 21, "low": 21, "medium": 47, "high": 73, "critical": 99}
# Anthropic's tool-use system prompt for tool_choice "tool" on Claude 4.x models (its pricing docs).
ANTHROPIC_TOOL_PROMPT = 313
OPENAI_MESSAGE_OVERHEAD = 12  # per-message framing of Chat Completions
MONTH_S = 30 * 86_400.0
DAY_S = 86_400.0


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def kibana_threat(techniques: list[str], tactics: list[str]) -> list[dict[str, Any]]:
    tactic = tactics[0] if tactics else "execution"
    return (
        [
            {
                "framework": "MITRE ATT&CK",
                "tactic": {"name": tactic.replace("-", " ").title(), "id": ""},
                "technique": [{"id": t, "name": t} for t in techniques],
            }
        ]
        if techniques
        else ([{"framework": "MITRE ATT&CK", "tactic": {"name": tactic, "id": ""}}] if tactics else [])
    )


def alert(rule: dict[str, Any], test: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One Kibana alert from a rule and an Atomic test, with fresh volatile values."""
    command = str(test.get("command") or "").strip().splitlines()
    cmd = " ".join(c.strip() for c in command[:3])[:1500]
    cmd = cmd.replace("#{", "").replace("}", "")
    user = f"user{rng.randrange(5000)}"
    exe = (test.get("executor") or "sh").lower()
    name = {"powershell": "powershell.exe", "command_prompt": "cmd.exe", "sh": "sh", "bash": "bash"}.get(exe, exe)
    os_type = (test.get("platforms") or ["windows"])[0]
    return {
        "@timestamp": f"2026-10-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.000Z",
        "kibana.alert.uuid": f"{rng.getrandbits(32):08x}-1111-2222-3333-{rng.getrandbits(48):012x}",
        "kibana.alert.rule.name": rule["title"],
        "kibana.alert.rule.description": (rule.get("description") or "")[:600],
        "kibana.alert.rule.rule_id": rule["id"],
        "kibana.alert.rule.type": "eql",
        "kibana.alert.risk_score": RISK.get(str(rule.get("level")), 47),
        "kibana.alert.rule.threat": kibana_threat(list(rule.get("techniques") or []), list(rule.get("tactics") or [])),
        "host": {"name": f"wks-{rng.randrange(20000):05d}", "os": {"type": os_type}},
        "user": {"name": user},
        "process": {
            "pid": rng.randrange(100, 65000),
            "name": name,
            "command_line": cmd.replace("$env:TEMP", f"C:\\Users\\{user}\\AppData\\Local\\Temp"),
            "parent": {"name": "explorer.exe" if os_type == "windows" else "bash"},
        },
    }


def prefix_cache(calls: np.ndarray, ttl_s: float) -> np.ndarray:
    """For sorted call times: True where the call finds the prefix cached (the previous call, which
    wrote or refreshed it, was at most `ttl_s` earlier)."""
    hits = np.zeros(len(calls), dtype=bool)
    if len(calls) > 1:
        hits[1:] = np.diff(calls) <= ttl_s
    return hits


def call_cost(price: Price, static: float, user: float, out: float, hit: np.ndarray, ttl: str) -> dict[str, Any]:
    """USD of every call, from which of them found the prefix cached."""
    n = len(hit)
    if static < price.min_cacheable_tokens:  # never cached: the prefix is input like the rest
        usd = n * ((static + user) * price.input + out * price.output) / 1e6
        return {"usd": usd, "prefix_cached": False, "cache_write_share": 0.0, "cache_read_share": 0.0}
    reads = int(hit.sum())
    writes = n - reads
    # OpenAI: a miss is plain input, no write surcharge.
    write_price = price.input if price.cache_idle_s is not None else price.cache_write_price(ttl)
    usd = (
        n * (user * price.input + out * price.output) + static * (reads * price.cache_read + writes * write_price)
    ) / 1e6
    return {
        "usd": usd,
        "prefix_cached": True,
        "cache_write_share": round(writes / n, 4) if n else 0.0,
        "cache_read_share": round(reads / n, 4) if n else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alerts", type=int, default=1_000_000, help="alerts in the month")
    ap.add_argument("--rule-zipf", type=float, default=1.1)
    ap.add_argument("--command-zipf", type=float, default=1.2)
    ap.add_argument("--max-pool", type=int, default=12, help="largest number of command lines one rule fires on")
    ap.add_argument("--cascade", type=float, default=MapperSettings().cascade_confidence)
    ap.add_argument("--cache-ttl-days", type=float, default=CacheSettings().llm_ttl_days, help="an LLM answer's life")
    ap.add_argument("--prompt-sample", type=int, default=600, help="LLM calls whose real prompt is rendered")
    ap.add_argument("--reasoning-tokens", type=int, default=0, help="extra output tokens per call (gpt-5 family)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    started = time.time()
    rng = random.Random(args.seed)
    nprng = np.random.default_rng(args.seed)
    from bpe_openai import get_encoding

    o200k = get_encoding("o200k_base")

    def tokens(text: str) -> int:
        return len(o200k.encode(text))

    rules = load_jsonl(SHARED / "sigma" / "rules.jsonl")
    tests = [t for t in load_jsonl(SHARED / "atomic-red-team" / "tests.jsonl") if t.get("command")]
    by_technique: dict[str, list[int]] = {}
    for i, t in enumerate(tests):
        by_technique.setdefault(str(t["technique"]).split(".")[0], []).append(i)
    rule_order = list(range(len(rules)))
    rng.shuffle(rule_order)
    rule_p = zipf_weights(len(rules), args.rule_zipf)

    # Each rule's pool of command lines: Zipf-sized (most rules fire on 1-2 distinct commands).
    pool_sizes = np.minimum(nprng.zipf(2.0, len(rules)), args.max_pool)
    pools: list[list[int]] = []
    for r, size in zip(rule_order, pool_sizes, strict=True):
        own = [i for t in rules[r].get("techniques") or [] for i in by_technique.get(t.split(".")[0], [])]
        pool = rng.sample(own, min(len(own), int(size))) if own else []
        while len(pool) < size:
            pool.append(rng.randrange(len(tests)))
        pools.append(pool)

    # Draw the alerts: rule rank, then a command from that rule's pool, then a time in the month.
    ranks = nprng.choice(len(rules), size=args.alerts, p=rule_p)
    slots = np.empty(args.alerts, dtype=np.int64)
    for rank in np.unique(ranks):
        idx = np.nonzero(ranks == rank)[0]
        size = len(pools[rank])
        slots[idx] = nprng.choice(size, size=len(idx), p=zipf_weights(size, args.command_zipf))
    times = nprng.uniform(0, MONTH_S, size=args.alerts)
    template_of = ranks * (args.max_pool + 1) + slots
    order = np.argsort(template_of, kind="stable")
    templates = Counter(zip(ranks.tolist(), slots.tolist(), strict=True))

    catalog = load_catalog(None)
    indicators = load_indicators(catalog)
    examples, _ = load_examples([SHARED / "sigma" / "rules.jsonl", SHARED / "atomic-red-team" / "tests.jsonl"], catalog)
    settings = MapperSettings(provider="anthropic", model="claude-haiku-4-5", cascade_confidence=args.cascade)
    local = LocalMapper(catalog, indicators, settings, knowledge=KnowledgeBase(examples), knowledge_fingerprint="kb")
    mapper = LLMMapper("anthropic", _NoNetwork("claude-haiku-4-5"), catalog, settings, local)  # type: ignore[arg-type]
    decision_settings = DecisionSettings(mode="hybrid", min_risk_score=50)
    settings_hash = mapper.settings_hash()

    # Per distinct cache key: its alerts' times, features and decision.
    decisions: Counter[str] = Counter()
    keys: dict[str, tuple[Any, Any, list[np.ndarray]]] = {}
    starts = np.searchsorted(template_of[order], [r * (args.max_pool + 1) + s for r, s in templates])
    variant_checks = variant_mismatch = 0
    for ((rank, slot), count), first in zip(templates.items(), starts, strict=True):
        rule = rules[rule_order[rank]]
        test = tests[pools[rank][slot]]
        doc = alert(rule, test, rng)
        features = extract_features(doc)
        decision = decide(features, indicators.evaluate(features), decision_settings, catalog)
        decisions[f"{decision.kind.value}:{decision.reason}"] += count
        if decision.kind is DecisionKind.SKIP:
            continue
        key = cache_key(
            features,
            catalog_version=catalog.fingerprint,
            mapper="anthropic",
            model="claude-haiku-4-5",
            prompt_hash=mapper.prompt_hash,
            settings_hash=settings_hash,
        )
        if rng.random() < 0.05:  # a fresh variant of the same template must share the key
            variant_checks += 1
            other = extract_features(alert(rule, test, rng))
            other_key = cache_key(
                other,
                catalog_version=catalog.fingerprint,
                mapper="anthropic",
                model="claude-haiku-4-5",
                prompt_hash=mapper.prompt_hash,
                settings_hash=settings_hash,
            )
            variant_mismatch += other_key != key
        when = times[order[first : first + count]]
        prev = keys.get(key)
        keys[key] = (features, decision, [*(prev[2] if prev else []), when])

    # Mapping-cache misses: a key's first alert, and its first alert after the stored entry expired.
    ttl = args.cache_ttl_days * DAY_S
    misses: dict[str, list[float]] = {}
    for key, (_, _, parts) in keys.items():
        stamps = np.sort(np.concatenate(parts))
        due, out = -np.inf, []
        for t in stamps:
            if t >= due:
                out.append(float(t))
                due = t + ttl
        misses[key] = out
    mapped_alerts = sum(sum(len(p) for p in v[2]) for v in keys.values())

    # The cascade: which keys the local mapper answers alone.
    items = list(keys.items())
    confident: dict[str, bool] = {}
    for i in range(0, len(items), 512):
        chunk = items[i : i + 512]
        results = local.map_many([v[0] for _, v in chunk], [v[1] for _, v in chunk])
        for (key, _), result in zip(chunk, results, strict=True):
            confident[key] = mapper.confident(result)
    llm_keys = [k for k in keys if not confident[k]]
    calls = np.sort(np.array([t for k in llm_keys for t in misses[k]]))
    cache_misses = sum(len(v) for v in misses.values())

    # Real prompts for a sample of the LLM calls, counted with o200k_base.
    sample = rng.sample(llm_keys, min(args.prompt_sample, len(llm_keys)))
    users, outs = [], []
    static = schema = 0
    for key in sample:
        features, decision, _ = keys[key]
        local_result = local.map(features, decision)
        prompt = mapper.render(features, decision, local_result)
        static = tokens(prompt.system)
        schema = tokens(json.dumps(prompt.schema, separators=(",", ":")))
        users.append(tokens(prompt.user))
        top = (local_result.techniques or local_result.candidates)[:2]
        command = features.fields.get("process.command_line") or ""
        answer = {
            "techniques": [
                {
                    "technique_id": t.technique_id,
                    "tactic": (t.tactic_ids or ("TA0002",))[0],
                    "confidence": t.confidence,
                    "evidence": [
                        {
                            "field": "process.command_line",
                            "quote": command[:48],
                        }
                    ],
                    "rationale": "process.command_line runs the tool with the arguments that show this technique.",
                }
                for t in top
            ]
        }
        outs.append(tokens(json.dumps(answer)) + 20)  # + tool_use / message framing
    mean_user = float(np.mean(users)) if users else 0.0
    mean_out = float(np.mean(outs)) if outs else 0.0

    prices = PriceTable.load()
    per_million = 1_000_000 / args.alerts
    models: dict[str, Any] = {}
    for price in prices.models():
        anthropic = price.provider == "anthropic"
        prefix = static + schema + (ANTHROPIC_TOOL_PROMPT if anthropic else OPENAI_MESSAGE_OVERHEAD)
        out = mean_out + (args.reasoning_tokens if price.model.startswith("gpt-5") else 0)
        options = {}
        ttls = {"5m": 300.0, "1h": 3600.0} if anthropic else {"auto": price.cache_idle_s or 300.0}
        for name, seconds in ttls.items():
            figures = call_cost(price, prefix, mean_user, out, prefix_cache(calls, seconds), name)
            figures["usd_per_1M_alerts"] = round(figures.pop("usd") * per_million, 2)
            options[name] = figures
        uncached = call_cost(price, 0, prefix + mean_user, out, np.zeros(len(calls), dtype=bool), "5m")
        options["no_prompt_cache"] = {"usd_per_1M_alerts": round(uncached["usd"] * per_million, 2)}
        best = min((o for o in options if o != "no_prompt_cache"), key=lambda o: options[o]["usd_per_1M_alerts"])
        # The Batch API (backfills): half price, and no cache reads to count on.
        batch = call_cost(price, prefix, mean_user, out, np.zeros(len(calls), dtype=bool), "5m")["usd"]
        models[price.model] = {
            "prefix_tokens": prefix,
            "min_cacheable_tokens": price.min_cacheable_tokens,
            "options": options,
            "cheapest": best,
            "usd_per_1M_alerts": options[best]["usd_per_1M_alerts"],
            "usd_per_1M_alerts_batch_api": round(batch * per_million * prices.batch_discount, 2),
        }
    gaps = np.diff(calls) if len(calls) > 1 else np.array([0.0])
    report = {
        "alerts": args.alerts,
        "distinct_templates": len(templates),
        "decisions": dict(decisions.most_common()),
        "alerts_sent_to_mapping": mapped_alerts,
        "mapping_cache_misses": cache_misses,
        "cascade_confidence": args.cascade,
        "cascade_local_answers": cache_misses - len(calls),
        "llm_calls": len(calls),
        "llm_call_share": round(len(calls) / args.alerts, 6),
        "minutes_between_llm_calls": {
            "median": round(float(np.median(gaps)) / 60, 2),
            "p90": round(float(np.percentile(gaps, 90)) / 60, 2),
            "share_within_5m": round(float((gaps <= 300).mean()), 4),
            "share_within_1h": round(float((gaps <= 3600).mean()), 4),
        },
        "variant_key_checks": variant_checks,
        "variant_key_mismatches": variant_mismatch,
        "prompt_sample": len(sample),
        "tokenizer": "o200k_base (bpe-openai): exact for GPT models, an estimate for Claude",
        "static_prefix_tokens": static,
        "response_schema_tokens": schema,
        "uncached_input_tokens_per_call": {
            "mean": round(mean_user, 1),
            "max": max(users, default=0),
            "max_anthropic_est": max(users, default=0),
            "limit": MAX_UNCACHED_TOKENS,
        },
        "mean_output_tokens": round(mean_out, 1),
        "models": models,
        "runtime_s": round(time.time() - started, 1),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    haiku = models["claude-haiku-4-5"]["usd_per_1M_alerts"]
    ok = report["llm_call_share"] <= 0.01 and haiku <= 5 and max(users, default=0) <= MAX_UNCACHED_TOKENS
    print(
        f"targets (≤1% of alerts reach an LLM, ≤$5 per 1M at Claude Haiku 4.5, ≤{MAX_UNCACHED_TOKENS} uncached "
        f"input tokens a call): {'met' if ok else 'NOT met'}"
    )
    return 0


class _NoNetwork:
    """A provider stand-in: the simulation renders prompts but never sends them."""

    name = "anthropic"

    def __init__(self, model: str) -> None:
        self.model = model


if __name__ == "__main__":
    raise SystemExit(main())
