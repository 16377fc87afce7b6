"""BM25 lexical baseline (bm25s), with the same ``search(queries, k)`` shape as :class:`Retriever`.

It exists to answer one question honestly: does the dense retriever earn its cost? BM25
is strong when queries share words with titles and helpless when they do not (the
"vocabulary-mismatch" queries), which is exactly where the bi-encoder must win. It indexes
the same product text template as the encoder, so the comparison is like for like.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.text import PRODUCT_TEXT_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


class BM25Retriever:
    """Okapi BM25 over :func:`pipeline.data.product_text` of ``fields`` (English stop words, no stemming)."""

    def __init__(self, catalog_df: "pd.DataFrame", *, k1: float = 1.5, b: float = 0.75,
                 fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> None:
        import bm25s

        from pipeline.data import product_text

        if len(catalog_df) == 0:
            raise DataError("catalog is empty: nothing to index")
        self.catalog_ids = catalog_df["product_id"].astype(str).tolist()
        self._ids = np.asarray(self.catalog_ids)
        tokens = bm25s.tokenize(product_text(catalog_df, fields), stopwords="en", show_progress=False)
        self._vocab = tokens.vocab
        self._model = bm25s.BM25(k1=k1, b=b)
        self._model.index(tokens, show_progress=False)

    def search(self, queries: Sequence[str], k: int = 100) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-``k`` product ids and BM25 scores per query; documents scoring 0 are dropped
        (they share no term with the query, so their order would be arbitrary)."""
        import bm25s

        queries = [str(q) for q in queries]
        if not queries:
            return [], []
        k = min(int(k), len(self.catalog_ids))
        q_tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        # Terms unseen in the catalog carry no BM25 weight; drop them so bm25s does not reject the query.
        q_tokens = [[t for t in toks if t in self._vocab] for toks in q_tokens]
        out_ids: list[list[str]] = []
        out_scores: list[np.ndarray] = []
        for toks in q_tokens:
            if not toks:
                out_ids.append([])
                out_scores.append(np.zeros(0, dtype=np.float32))
                continue
            docs, scores = self._model.retrieve([toks], k=k, show_progress=False)
            keep = scores[0] > 0
            out_ids.append(self._ids[docs[0][keep]].tolist())
            out_scores.append(scores[0][keep].astype(np.float32))
        return out_ids, out_scores
