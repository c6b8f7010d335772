"""Lexical retrieval over the catalog's own technique text (BM25, via bm25s)."""

from __future__ import annotations

import bm25s
import numpy as np

from mitre.catalog import Catalog
from mitre.text import tokenize


class CatalogRetriever:
    """Ranks techniques by BM25 between alert text and technique name + description."""

    def __init__(self, catalog: Catalog) -> None:
        self.ids = list(catalog.techniques)
        docs = []
        for tid in self.ids:
            t = catalog.techniques[tid]
            parent = catalog.techniques.get(t.parent) if t.parent else None
            name = f"{parent.name} {t.name}" if parent else t.name
            # The name is repeated so that it weighs as much as a long description.
            docs.append(tokenize(f"{name} {name} {name} {t.description}") or ["empty"])
        self._bm25 = bm25s.BM25()
        self._bm25.index(docs, show_progress=False)

    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        tokens = tokenize(text)
        if not tokens:
            return []
        scores = self._bm25.get_scores(tokens)
        top = np.argsort(-scores)[:k]
        return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]
