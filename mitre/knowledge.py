"""A knowledge base of already-tagged rules or alerts, searched by nearest neighbours.

Rows may be Sigma rules (SigmaHQ rules.jsonl), generic rules (name, description, query,
techniques), eval cases (alert + expected), Atomic Red Team tests (their alert, and their name and
description as a second example), or tagged Kibana alerts.
Labels from other ATT&CK versions are normalised to the active catalog; labels that cannot
be mapped are counted, never silently dropped. Every knowledge base also learns from the
catalog's own procedure examples and detection analytics (`catalog_examples`).
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
from sklearn.preprocessing import normalize

from mitre.catalog import Catalog
from mitre.corpora import atomic_alert, atomic_prose, lolbas_alert, lolbas_prose, row_kind, rules_alert, sigma_alert
from mitre.features import extract_features
from mitre.models import Contract
from mitre.text import alert_text, tokenize


class Example(Contract):
    id: str
    text: str
    techniques: tuple[str, ...]
    tactics: tuple[str, ...] = ()
    group: str | None = None
    source: str = ""
    author: str | None = None
    title: str | None = None  # what evidence shows for it: a rule's title, a test's name


def row_title(row: Mapping[str, Any]) -> str | None:
    """A corpus row's human name (Sigma title, Atomic Red Team test name, a rule's name)."""
    for key in ("title", "test_name", "name"):
        if isinstance(value := row.get(key), str) and value.strip():
            return value.strip()
    return None


class LabelReport(Contract):
    """How labels were normalised while loading (for eval and KB reports)."""

    rows: int = 0
    examples: int = 0
    redirected: dict[str, str] = Field(default_factory=dict)
    unmapped: dict[str, int] = Field(default_factory=dict)
    no_text: int = 0  # rows left out for giving no text to learn from (an Atomic Red Team test run by hand)


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


def example_from_row(row: Mapping[str, Any], index: int, source: str) -> tuple[str, list[str], list[str], str | None]:
    """(text, raw technique labels, raw tactic labels, group) for any supported row shape; no text for a
    row that makes no alert. Sigma and Atomic Red Team rows become the alerts the evals make of them."""
    kind = row_kind(row)
    if kind == "cases":
        expected = row["expected"]
        text = alert_text(extract_features(row["alert"]))
        return text, list(expected.get("techniques", ())), list(expected.get("tactics", ())), row.get("group")
    if kind == "sigma":
        text = alert_text(extract_features(sigma_alert(row)))
        return text, list(row.get("techniques", ())), list(row.get("tactics", ())), None
    if kind == "atomic":
        alert = atomic_alert(row)
        if alert is None:
            return "", [], [], None
        return alert_text(extract_features(alert)), [row["technique"]], [], None
    if kind == "lolbas":
        alert = lolbas_alert(row)
        if alert is None:
            return "", [], [], None
        return alert_text(extract_features(alert)), [str(row["mitre_id"])], [], None
    if kind == "rules":
        if not row.get("name") and not row.get("description"):
            return "", [], [], None
        alert = rules_alert(row, str(row.get("id") or row.get("rule_id") or f"{source}-{index + 1}"))
        return alert_text(extract_features(alert)), list(row.get("techniques", ())), list(row.get("tactics", ())), None
    features = extract_features(row)
    techniques = [r.technique_id for r in features.rule_threat if r.technique_id]
    tactics = [r.tactic_id for r in features.rule_threat if r.tactic_id]
    return alert_text(features), techniques, tactics, None


CATALOG_CHUNK = 600  # characters of procedure examples per row: each is one short sentence


def catalog_source(catalog: Catalog) -> str:
    """The `source` of the rows `catalog_examples` makes, by which a knowledge base tells it has them."""
    return f"ATT&CK {catalog.version}"


def catalog_examples(catalog: Catalog) -> list[Example]:
    """The catalog's technique descriptions, procedure examples (joined per technique into rows of about
    `CATALOG_CHUNK` characters, which keeps the classifiers' Gram matrix small) and detection analytics,
    labelled with the technique and all of its tactics. None for a catalog without procedure examples
    or analytics (the offline package): its descriptions alone are already searched by BM25."""
    if not catalog.data.examples:
        return []
    source = catalog_source(catalog)
    grouped: dict[tuple[str, str], list[str]] = {}
    for item in catalog.data.examples:
        grouped.setdefault((item.technique, item.kind), []).append(item.text)
    rows: list[tuple[str, str, str]] = []
    for tid, tech in catalog.techniques.items():
        parent = catalog.techniques.get(tech.parent) if tech.parent else None
        name = f"{parent.name}: {tech.name}" if parent else tech.name
        rows.append((tid, "description", f"{name}\n{tech.description}"))
    for (tid, kind), texts in grouped.items():
        if kind == "analytic":
            rows += [(tid, kind, text) for text in texts]
            continue
        chunk: list[str] = []
        for text in texts:
            if chunk and sum(len(t) for t in chunk) + len(text) > CATALOG_CHUNK:
                rows.append((tid, kind, "\n".join(chunk)))
                chunk = []
            chunk.append(text)
        rows.append((tid, kind, "\n".join(chunk)))
    seen: Counter[tuple[str, str]] = Counter()
    out = []
    for tid, kind, text in rows:
        seen[tid, kind] += 1
        out.append(
            Example(
                id=f"{tid} {kind} {seen[tid, kind]}",
                text=text,
                techniques=(tid,),
                tactics=tuple(t.id for t in catalog.tactics_of(tid)),
                source=source,
                title=f"{tid} {catalog.techniques[tid].name}, ATT&CK {kind}",
            )
        )
    return out


def row_examples(
    example_id: str,
    text: str,
    prose: str,
    *,
    techniques: tuple[str, ...],
    tactics: tuple[str, ...],
    source: str,
    author: str | None,
    group: str | None = None,
    title: str | None = None,
) -> list[Example]:
    """A corpus row's examples: its alert's text and, when it has some, its prose (an ART test's name
    and description) as a second example with the same labels. The evals build theirs here too."""
    return [
        Example(
            id=row_id,
            text=row_text,
            techniques=techniques,
            tactics=tactics,
            group=group,
            source=source,
            author=author,
            title=title,
        )
        for row_id, row_text in ((example_id, text), (f"{example_id} prose", prose))
        if row_text
    ]


def _prose(row: Mapping[str, Any]) -> str:
    """Labelled prose a row teaches beside its alert (an ART test's or a LOLBAS command's description)."""
    kind = row_kind(row)
    return atomic_prose(row) if kind == "atomic" else lolbas_prose(row) if kind == "lolbas" else ""


def load_examples(paths: Sequence[Path], catalog: Catalog) -> tuple[list[Example], LabelReport]:
    examples: list[Example] = []
    unmapped: Counter[str] = Counter()
    redirected: dict[str, str] = {}
    rows = no_text = 0
    for path in paths:
        for index, line in enumerate(path.read_bytes().splitlines()):
            if not line.strip():
                continue
            rows += 1
            row = orjson.loads(line)
            text, raw_techniques, raw_tactics, group = example_from_row(row, index, path.name)
            if not text:
                no_text += 1
                continue
            techniques, tactics = normalise_labels(raw_techniques, raw_tactics, catalog, unmapped, redirected)
            if not techniques:
                continue
            if not tactics:  # an Atomic Red Team test names its technique only: it serves that technique's tactics
                tactics = tuple(dict.fromkeys(t.id for tid in techniques for t in catalog.tactics_of(tid)))
            examples += row_examples(
                str(row.get("id") or row.get("guid") or f"{path.name}:{index + 1}"),
                text,
                _prose(row),
                techniques=techniques,
                tactics=tactics,
                group=group,
                source=path.name,
                author=row.get("author") if isinstance(row.get("author"), str) else None,
                title=row_title(row),
            )
    report = LabelReport(
        rows=rows, examples=len(examples), redirected=redirected, unmapped=dict(unmapped), no_text=no_text
    )
    return examples + catalog_examples(catalog), report


def _kernel(queries: Any, examples: Any) -> Any:
    """queries @ examples.T for CSR matrices, transposing the small side: `examples.T` would be converted
    back to CSR on every call, which costs more than mapping one alert."""
    return (examples @ queries.T).T


class Neighbour(Contract):
    example: Example
    similarity: float


class KnowledgeBase:
    """Nearest neighbours (TF-IDF cosine, word uni+bigrams, sublinear tf) over labelled examples, plus a
    one-vs-rest linear classifier per technique and per tactic: ridge regression on ±1 targets over
    word and character n-grams, solved in the dual (one Cholesky factorisation of the example Gram
    matrix serves every label, so training is about a second instead of one SVM per label)."""

    def __init__(self, examples: Sequence[Example], ridge_lambda: float = 0.3, char_ngrams: bool = True) -> None:
        if not examples:
            raise ValueError("knowledge base is empty")
        self.examples = list(examples)
        self._vectorizer = TfidfVectorizer(
            tokenizer=tokenize,
            lowercase=False,
            token_pattern=None,
            ngram_range=(1, 2),
            sublinear_tf=True,
            min_df=1,
            dtype=np.float32,  # single precision halves the stored matrices and the Gram/Cholesky time
        )
        texts = [e.text for e in self.examples]
        self._matrix = self._vectorizer.fit_transform(texts)
        self._ridge_lambda = ridge_lambda
        self._char_ngrams = char_ngrams
        self._char_vectorizer: TfidfVectorizer | None = None
        self._class_matrix: Any = None
        self._factor: Any = None
        self._labels: list[str] = []
        self._dual: Any = None
        self._tactic_labels: list[str] = []
        self._tactic_dual: Any = None
        self._last_kernel: tuple[tuple[str, ...], Any] | None = None
        self._last_word: tuple[tuple[str, ...], Any] | None = None

    def with_catalog(self, catalog: Catalog) -> KnowledgeBase:
        """This knowledge base if it already learnt from the catalog's own examples (as one built by
        `load_examples` did), else a new one that also does (one built from eval folds, say)."""
        source = catalog_source(catalog)
        if not catalog.data.examples or any(e.source == source for e in self.examples):
            return self  # checked without building the rows: a stored knowledge base has them
        return KnowledgeBase([*self.examples, *catalog_examples(catalog)], self._ridge_lambda, self._char_ngrams)

    def _features(self, texts: Sequence[str], fit: bool = False) -> Any:
        """Classifier features: word TF-IDF, plus character 3–4-grams (within word boundaries; those in over 20% of
        examples dropped, which keeps the Gram matrix cheap) when enabled,
        each block L2-normalised and the rows renormalised."""
        word = self._matrix if fit else self._word(texts)
        if not self._char_ngrams:
            return word
        if fit:
            large = len(texts) >= 100  # document-frequency cut-offs only make sense on a real corpus
            self._char_vectorizer = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=(3, 4),
                sublinear_tf=True,
                min_df=2 if large else 1,
                max_df=0.2 if large else 1.0,
                max_features=200_000,
                dtype=np.float32,
            )
            char = self._char_vectorizer.fit_transform(texts)
        else:
            assert self._char_vectorizer is not None
            char = self._char_vectorizer.transform(texts)
        return normalize(sparse.hstack([word, char]).tocsr())

    def _word(self, texts: Sequence[str]) -> Any:
        """Word TF-IDF of a batch; the neighbours and both classifiers read the same batch, so it is
        transformed once."""
        key = tuple(texts)
        last = getattr(self, "_last_word", None)  # absent from copies stored by earlier versions
        if last is None or last[0] != key:
            last = self._last_word = (key, self._vectorizer.transform(texts))
        return last[1]

    def _solve(self, label_sets: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
        """Dual ridge coefficients (examples × labels) for ±1 targets, one column per label."""
        from scipy.linalg import cho_factor, cho_solve

        if self._factor is None:
            self._class_matrix = self._features([e.text for e in self.examples], fit=True)
            gram = (self._class_matrix @ self._class_matrix.T).toarray()
            gram[np.diag_indices_from(gram)] += self._ridge_lambda
            self._factor = cho_factor(gram, overwrite_a=True, check_finite=False)
        labels = sorted({t for ls in label_sets for t in ls})
        index = {t: i for i, t in enumerate(labels)}
        y = -np.ones((len(label_sets), len(labels)), dtype=np.float32)
        for row, ls in enumerate(label_sets):
            for t in ls:
                y[row, index[t]] = 1.0
        return labels, cho_solve(self._factor, y, check_finite=False)

    def _scores(self, texts: Sequence[str], dual: np.ndarray) -> np.ndarray:
        # The technique and tactic classifiers score the same batch: featurise it once (the
        # character n-gram transform is the costliest step of mapping an unseen alert).
        # The kernel is mostly non-zero (character n-grams are shared widely): kept dense, so scoring
        # it against the dual coefficients is one BLAS product instead of a sparse one.
        key = tuple(texts)
        if self._last_kernel is None or self._last_kernel[0] != key:
            self._last_kernel = (key, _kernel(self._features(texts), self._class_matrix).toarray())
        return np.asarray(self._last_kernel[1] @ dual)

    def _train(self) -> None:
        self._labels, self._dual = self._solve([e.techniques for e in self.examples])

    def warm(self) -> None:
        """Train both classifiers now (not on the first alert) and drop the factorisation they needed,
        so the knowledge base can be stored compactly and reloaded ready to use."""
        if self._dual is None:
            self._train()
        if self._tactic_dual is None:
            self._tactic_labels, self._tactic_dual = self._solve([e.tactics for e in self.examples])
        self._factor = None
        self._last_kernel = None
        self._last_word = None

    def classify_tactics_many(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Score per tactic (above 0 = predicted). Examples without tactics count as negatives for
        every tactic, so only knowledge bases whose examples carry tactics should be asked."""
        if self._tactic_dual is None:
            self._tactic_labels, self._tactic_dual = self._solve([e.tactics for e in self.examples])
        if not self._tactic_labels:
            return [{} for _ in texts]
        scores = self._scores(texts, self._tactic_dual)
        return [{t: float(row[j]) for j, t in enumerate(self._tactic_labels)} for row in scores]

    def classify_many(self, texts: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (technique, classifier score) per text; a score above 0 means the label is predicted."""
        if self._dual is None:
            self._train()
        scores = self._scores(texts, self._dual)
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
        sims = _kernel(self._word(texts), self._matrix).toarray()
        result = []
        for row in sims:
            top = np.argpartition(-row, min(k, len(row) - 1))[:k]
            top = top[np.argsort(-row[top])]
            # Built without validation: the example is one already validated, the similarity a float.
            result.append(
                [
                    Neighbour.model_construct(example=self.examples[i], similarity=float(row[i]))
                    for i in top
                    if row[i] > 0
                ]
            )
        return result
