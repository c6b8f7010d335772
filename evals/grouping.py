"""Near-duplicate grouping for k-fold CV, so that copies of a case never sit on both sides of a split.

Union-find over:
- explicit groups (a hand-written case's `group`),
- explicit relations (Sigma `related` ids: derived, obsolete, similar, merged, renamed),
- near-identical text: TF-IDF cosine over word 1–3-gram shingles of the detection / command
  ≥ `threshold` anywhere, or ≥ `family_threshold` within the same family (ART technique file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from evals.datasets import Case

_SHINGLE_TOKEN = r"(?u)[A-Za-z0-9_\-\.\\/:$%]+"


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class GroupingSettings:
    threshold: float = 0.9
    family_threshold: float = 0.75
    chunk: int = 512


def near_duplicate_pairs(
    texts: Sequence[str], threshold: float, families: Sequence[str | None] | None = None, family_threshold: float = 1.0
) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose shingle TF-IDF cosine reaches the threshold (or the family one)."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if len(keep) < 2:
        return []
    vectorizer = TfidfVectorizer(
        lowercase=True, token_pattern=_SHINGLE_TOKEN, ngram_range=(1, 3), sublinear_tf=True, dtype=np.float32
    )
    matrix = vectorizer.fit_transform([texts[i] for i in keep])
    fam = np.array([(families[i] if families is not None else None) or f"\0{i}" for i in keep], dtype=object)
    pairs = []
    low = min(threshold, family_threshold)
    for start in range(0, len(keep), GroupingSettings.chunk):
        block = (matrix[start : start + GroupingSettings.chunk] @ matrix.T).toarray()
        rows, cols = np.nonzero(block >= low)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if c <= i:
                continue
            sim = block[r, c]
            if sim >= threshold or (fam[i] == fam[c] and sim >= family_threshold):
                pairs.append((keep[i], keep[c]))
    return pairs


def group_cases(cases: Sequence[Case], settings: GroupingSettings | None = None) -> list[str]:
    """A group label per case (same label = must stay in the same fold)."""
    settings = settings or GroupingSettings()
    uf = UnionFind(len(cases))
    by_id: dict[str, int] = {}
    by_group: dict[str, int] = {}
    for i, case in enumerate(cases):
        by_id.setdefault(case.id, i)
        if case.group:
            key = case.group
            if key in by_group:
                uf.union(i, by_group[key])
            else:
                by_group[key] = i
    for i, case in enumerate(cases):
        if case.id in by_id and by_id[case.id] != i:
            uf.union(i, by_id[case.id])
        for rel in case.related:
            if rel in by_id:
                uf.union(i, by_id[rel])
    texts = [c.dedup_text for c in cases]
    families = [c.family for c in cases]
    for a, b in near_duplicate_pairs(texts, settings.threshold, families, settings.family_threshold):
        uf.union(a, b)
    roots = [uf.find(i) for i in range(len(cases))]
    return [f"g{cases[r].id}" for r in roots]


def fold_assignment(groups: Sequence[str], k: int, seed: int = 0) -> list[int]:
    """Grouped k-fold: whole groups to folds, largest first onto the lightest fold (deterministic)."""
    if k < 2:
        raise ValueError("k-fold CV needs k ≥ 2")
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    order = rng.permutation(len(names))
    ranked = sorted((names[i] for i in order), key=lambda g: -sizes[g])  # stable: ties stay shuffled
    load = [0] * k
    fold_of: dict[str, int] = {}
    for g in ranked:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
    return [fold_of[g] for g in groups]
