"""BM25 lexical retrieval (bm25s), with the same ``search(queries, k)`` shape as :class:`Retriever`.

Two roles. As a *baseline* it answers whether the dense retriever earns its cost: BM25 is
strong when queries share words with titles (brand and model tokens) and helpless when they
do not (the "vocabulary-mismatch" queries). As the *lexical side of an index* it is saved in
the index directory (:data:`LEXICAL_DIR`) over the same product text the vectors were encoded
from, so hybrid search fuses two views of one catalog.

Why the product texts are stored next to the bm25s matrices: bm25s cannot add or delete
documents, so ``index add|remove`` rebuild the lexical side from the stored texts (seconds
even at 100k products) instead of needing the catalog again.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import ArtifactError, DataError
from pipeline.core.text import PRODUCT_TEXT_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Sub-directory of an index directory holding the lexical side.
LEXICAL_DIR = "lexical"
#: One JSON object per product, ``{"id": ..., "text": ...}``: what a rebuild reads.
PRODUCTS_FILE = "products.jsonl"
DEFAULT_K1, DEFAULT_B = 1.5, 0.75


class BM25Retriever:
    """Okapi BM25 over product texts (English stop words, no stemming)."""

    def __init__(self, catalog_df: "pd.DataFrame | None" = None, *, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
                 fields: Sequence[str] = PRODUCT_TEXT_FIELDS, ids: Sequence[str] | None = None,
                 texts: Sequence[str] | None = None) -> None:
        """Index a catalog DataFrame (its ``fields``), or given ``ids`` and ``texts``."""
        import bm25s

        if catalog_df is not None:
            from pipeline.data import product_text

            ids, texts = catalog_df["product_id"].astype(str).tolist(), product_text(catalog_df, fields)
        ids, texts = list(ids or []), [str(t) for t in (texts or [])]
        if not ids:
            raise DataError("catalog is empty: nothing to index")
        if len(ids) != len(texts):
            raise DataError(f"{len(ids)} product ids for {len(texts)} texts")
        self.k1, self.b = float(k1), float(b)
        self.catalog_ids = [str(i) for i in ids]
        self.texts = texts
        self._ids = np.asarray(self.catalog_ids)
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        self._model = bm25s.BM25(k1=k1, b=b)
        self._model.index(tokens, show_progress=False)
        self._row: dict[str, int] | None = None

    @classmethod
    def _from_parts(cls, model: Any, ids: list[str], texts: list[str], k1: float, b: float) -> "BM25Retriever":
        self = cls.__new__(cls)
        self.k1, self.b, self.catalog_ids, self.texts = k1, b, ids, texts
        self._ids, self._model, self._row = np.asarray(ids), model, None
        return self

    @property
    def _vocab(self) -> dict[str, int]:
        return self._model.vocab_dict

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write the bm25s matrices and the product texts into ``directory`` (created).

        Callers write into a temporary directory that is renamed into place, so this needs
        no atomicity of its own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._model.save(str(directory), show_progress=False)
        with open(directory / PRODUCTS_FILE, "w", encoding="utf-8") as fh:
            for pid, text in zip(self.catalog_ids, self.texts):
                fh.write(json.dumps({"id": pid, "text": text}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: str | Path, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> "BM25Retriever":
        """Open a saved lexical index (checksums are the caller's: the index manifest covers them)."""
        import bm25s

        directory = Path(directory)
        try:
            ids, texts = [], []
            with open(directory / PRODUCTS_FILE, encoding="utf-8") as fh:
                for line in fh:
                    row = json.loads(line)
                    ids.append(str(row["id"]))
                    texts.append(str(row["text"]))
            model = bm25s.BM25.load(str(directory), show_progress=False, mmap=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{directory}: unreadable lexical index ({exc.__class__.__name__}); "
                                "rebuild the index") from None
        return cls._from_parts(model, ids, texts, k1, b)

    def updated(self, remove: Sequence[str] = (), add: Sequence[tuple[str, str]] = ()) -> "BM25Retriever":
        """A new lexical index with ``remove`` ids dropped and ``add`` (id, text) pairs added or
        replaced: a full re-index, since bm25s matrices cannot be edited in place."""
        drop = set(remove) | {pid for pid, _ in add}
        kept = [(pid, text) for pid, text in zip(self.catalog_ids, self.texts) if pid not in drop]
        rows = kept + [(str(pid), str(text)) for pid, text in add]
        return BM25Retriever(ids=[p for p, _ in rows], texts=[t for _, t in rows], k1=self.k1, b=self.b)

    # ------------------------------------------------------------------ search
    def mask(self, product_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """0/1 weights over this index's documents: 1 for the given product ids (a filter)."""
        if self._row is None:
            self._row = {pid: i for i, pid in enumerate(self.catalog_ids)}
        out = np.zeros(len(self.catalog_ids), dtype=np.float32)
        rows = [self._row[p] for p in product_ids if p in self._row]
        out[rows] = 1.0
        return out

    def search(self, queries: Sequence[str], k: int = 100,
               weight_mask: np.ndarray | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-``k`` product ids and BM25 scores per query; documents scoring 0 are dropped
        (they share no term with the query, so their order would be arbitrary).
        ``weight_mask`` (from :meth:`mask`) restricts the answer to the products it marks."""
        import bm25s

        queries = [str(q) for q in queries]
        if not queries:
            return [], []
        k = min(int(k), len(self.catalog_ids))
        q_tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        # Terms unseen in the catalog carry no BM25 weight; drop them so bm25s does not reject the query.
        vocab = self._vocab
        q_tokens = [[t for t in toks if t and t in vocab] for toks in q_tokens]
        out_ids: list[list[str]] = []
        out_scores: list[np.ndarray] = []
        for toks in q_tokens:
            if not toks or k <= 0:
                out_ids.append([])
                out_scores.append(np.zeros(0, dtype=np.float32))
                continue
            docs, scores = self._model.retrieve([toks], k=k, show_progress=False, weight_mask=weight_mask)
            keep = scores[0] > 0
            out_ids.append(self._ids[docs[0][keep]].tolist())
            out_scores.append(scores[0][keep].astype(np.float32))
        return out_ids, out_scores
