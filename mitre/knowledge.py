"""A knowledge base of already-tagged rules or alerts, searched by nearest neighbours.

Rows may be Sigma rules (SigmaHQ rules.jsonl), generic rules (name, description, query,
techniques), eval cases (alert + expected), Atomic Red Team tests, or tagged Kibana alerts.
Labels from other ATT&CK versions are normalised to the active catalog; labels that cannot
be mapped are counted, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import Field
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from mitre.catalog import Catalog
from mitre.features import extract_features
from mitre.models import Contract
from mitre.text import alert_text, flatten_values, tokenize


class Example(Contract):
    id: str
    text: str
    techniques: tuple[str, ...]
    tactics: tuple[str, ...] = ()
    group: str | None = None
    source: str = ""
    author: str | None = None


class LabelReport(Contract):
    """How labels were normalised while loading (for eval and KB reports)."""

    rows: int = 0
    examples: int = 0
    redirected: dict[str, str] = Field(default_factory=dict)
    unmapped: dict[str, int] = Field(default_factory=dict)


def normalise_labels(
    techniques: Iterable[str],
    tactics: Iterable[str],
    catalog: Catalog,
    unmapped: Counter[str],
    redirected: dict[str, str],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    active: list[str] = []
    for tid in techniques:
        resolved = catalog.resolve(tid)
        if resolved.active_id is None:
            unmapped[tid] += 1
            continue
        if resolved.active_id != tid.upper():
            redirected[tid] = resolved.active_id
        active.append(resolved.active_id)
    tactic_ids = []
    for name in tactics:
        tactic = catalog.tactic(name)
        if tactic is None:
            unmapped[name] += 1
        else:
            tactic_ids.append(tactic.id)
    return tuple(dict.fromkeys(active)), tuple(dict.fromkeys(tactic_ids))


def sigma_text(row: Mapping[str, Any]) -> str:
    logsource = " ".join(str(v) for v in (row.get("logsource") or {}).values())
    detection = " ".join(flatten_values(row.get("detection") or {}))
    return "\n".join(str(p) for p in (row.get("title"), row.get("description"), logsource, detection) if p)


def example_from_row(row: Mapping[str, Any], index: int, source: str) -> tuple[str, list[str], list[str], str | None]:
    """(text, raw technique labels, raw tactic labels, group) for any supported row shape."""
    if "alert" in row and "expected" in row:
        expected = row["expected"]
        text = alert_text(extract_features(row["alert"]))
        return text, list(expected.get("techniques", ())), list(expected.get("tactics", ())), row.get("group")
    if "detection" in row and "title" in row:
        return sigma_text(row), list(row.get("techniques", ())), list(row.get("tactics", ())), None
    if "command" in row and "technique" in row:
        text = f"{row.get('executor', '')} {row['command']}"
        return text, [row["technique"]], [], None
    if "techniques" in row and ("name" in row or "description" in row):
        text = "\n".join(str(row.get(k) or "") for k in ("name", "description", "query"))
        return text, list(row.get("techniques", ())), list(row.get("tactics", ())), None
    features = extract_features(row)
    techniques = [r.technique_id for r in features.rule_threat if r.technique_id]
    tactics = [r.tactic_id for r in features.rule_threat if r.tactic_id]
    return alert_text(features), techniques, tactics, None


def load_examples(paths: Sequence[Path], catalog: Catalog) -> tuple[list[Example], LabelReport]:
    examples: list[Example] = []
    unmapped: Counter[str] = Counter()
    redirected: dict[str, str] = {}
    rows = 0
    for path in paths:
        for index, line in enumerate(path.read_bytes().splitlines()):
            if not line.strip():
                continue
            rows += 1
            row = orjson.loads(line)
            text, raw_techniques, raw_tactics, group = example_from_row(row, index, path.name)
            techniques, tactics = normalise_labels(raw_techniques, raw_tactics, catalog, unmapped, redirected)
            if not techniques:
                continue
            examples.append(
                Example(
                    id=str(row.get("id") or row.get("guid") or f"{path.name}:{index + 1}"),
                    text=text,
                    techniques=techniques,
                    tactics=tactics,
                    group=group,
                    source=path.name,
                    author=row.get("author") if isinstance(row.get("author"), str) else None,
                )
            )
    report = LabelReport(rows=rows, examples=len(examples), redirected=redirected, unmapped=dict(unmapped))
    return examples, report


class Neighbour(Contract):
    example: Example
    similarity: float


class KnowledgeBase:
    """TF-IDF (word uni+bigrams, sublinear tf) cosine nearest neighbours over labelled examples,
    plus a one-vs-rest linear SVM over the same features (trained on first use)."""

    def __init__(self, examples: Sequence[Example], classifier_c: float = 0.5) -> None:
        if not examples:
            raise ValueError("knowledge base is empty")
        self.examples = list(examples)
        self._vectorizer = TfidfVectorizer(
            tokenizer=tokenize, lowercase=False, token_pattern=None, ngram_range=(1, 2), sublinear_tf=True, min_df=1
        )
        self._matrix = self._vectorizer.fit_transform([e.text for e in self.examples])
        self._classifier_c = classifier_c
        self._classifier: Any = None
        self._labels: list[str] = []

    def _train(self) -> None:
        from sklearn.svm import LinearSVC

        labels = sorted({t for e in self.examples for t in e.techniques})
        self._labels = labels
        index = {t: i for i, t in enumerate(labels)}
        y = np.zeros((len(self.examples), len(labels)), dtype=np.int8)
        for row, e in enumerate(self.examples):
            for t in e.techniques:
                y[row, index[t]] = 1
        # One binary SVM per label, weights stacked so scoring is one sparse product.
        rows = []
        intercept = np.full(len(labels), -1.0)
        for j in range(len(labels)):
            col = y[:, j]
            if col.all() or not col.any():
                rows.append(sparse.csr_matrix((1, self._matrix.shape[1]), dtype=np.float32))
                continue
            svm = LinearSVC(C=self._classifier_c).fit(self._matrix, col)
            w = svm.coef_[0].astype(np.float32)
            w[np.abs(w) < 1e-4] = 0.0  # w is a sum of support vectors: mostly zeros, keep it sparse
            rows.append(sparse.csr_matrix(w))
            intercept[j] = svm.intercept_[0]
        self._classifier = (sparse.vstack(rows).T.tocsr(), intercept)

    def classify_many(self, texts: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (technique, SVM margin) per text; a margin above 0 means the label is predicted."""
        if self._classifier is None:
            self._train()
        coef_t, intercept = self._classifier
        scores = np.asarray((self._vectorizer.transform(texts) @ coef_t).todense()) + intercept
        out = []
        for row in scores:
            top = np.argsort(-row)[:k]
            out.append([(self._labels[i], float(row[i])) for i in top])
        return out

    def __len__(self) -> int:
        return len(self.examples)

    def neighbours(self, text: str, k: int = 10) -> list[Neighbour]:
        return self.neighbours_many([text], k)[0]

    def neighbours_many(self, texts: Sequence[str], k: int = 10) -> list[list[Neighbour]]:
        query = self._vectorizer.transform(texts)
        sims = (query @ self._matrix.T).toarray()
        result = []
        for row in sims:
            top = np.argpartition(-row, min(k, len(row) - 1))[:k]
            top = top[np.argsort(-row[top])]
            result.append([Neighbour(example=self.examples[i], similarity=float(row[i])) for i in top if row[i] > 0])
        return result
