"""Two-stage search as a library object: retrieve top-N candidates, rerank, keep top-k.

:class:`TwoStageSearcher` is the one place the two stages meet at query time; the CLI's
``search``, the batch scorer and the evaluation all go through it, so the three can never
disagree about how a query is answered.

Determinism contract (batch scoring relies on it for exactly-once resume): the answer for
one query depends only on that query and the loaded artefacts, never on which other
queries happen to be scored alongside it. That is why :meth:`search_many` encodes and
reranks each query on its own (padding and BLAS blocking would otherwise make the float
results depend on the batch's composition).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DEFAULT_DATA_DIR, DEFAULT_INDEX_DIR, DEFAULT_RERANKER_DIR
from pipeline.errors import ArtifactError, DataError, ShoprankError

#: Longer queries are cut (with a note) before encoding: real queries are a few words, and
#: both encoders truncate to a few dozen tokens anyway; cutting first keeps tokenisation cheap.
MAX_QUERY_CHARS = 512


@dataclass
class SearchHit:
    """One ranked product for one query (a row of the search table / scored Parquet)."""

    rank: int | None
    product_id: str
    title: str
    retrieval_score: float
    probs: dict[str, float] = field(default_factory=dict)
    score: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Flat dict with one ``p_<task>`` column per reranker task."""
        row: dict[str, Any] = {"rank": self.rank, "product_id": self.product_id, "title": self.title}
        row.update({f"p_{task}": value for task, value in self.probs.items()})
        row["score"] = self.score
        row["retrieval_score"] = self.retrieval_score
        return row


def clean_query(query: object) -> str:
    """Validate one query: strip it, refuse empty ones, cut over-long ones.

    Raises :class:`ShoprankError` (one line) for a missing or blank query, because "no
    query" has no meaningful answer; a very long query is still answered (cut to
    :data:`MAX_QUERY_CHARS`), since it is a real if odd user input.
    """
    if query is None or (isinstance(query, float) and np.isnan(query)):
        raise ShoprankError("query is missing")
    text = " ".join(str(query).split())
    if not text:
        raise ShoprankError("query is empty (or only whitespace); type some words to search for")
    return text[:MAX_QUERY_CHARS]


def _load_catalog(path: Path) -> Any:
    """Read the catalog that gives product ids their titles and reranker text."""
    from pipeline.data import load_dataset

    if not path.is_file():
        raise ArtifactError(
            f"{path}: catalog not found (the reranker needs product text); pass --catalog "
            "or run `pipeline demo` first"
        )
    return load_dataset(catalog=path).catalog


class TwoStageSearcher:
    """Bi-encoder/FAISS recall followed by the multi-task cross-encoder rerank.

    Without a reranker (``reranker=None``) it returns retrieval order and leaves the
    probability columns empty; :attr:`reranked` tells callers which case they got.
    """

    def __init__(self, retriever: Any, reranker: Any | None, catalog: Any, *,
                 weights: Mapping[str, float] | None = None) -> None:
        from pipeline.data import product_text

        self.retriever = retriever
        self.reranker = reranker
        self.weights = dict(weights) if weights else None
        ids = catalog["product_id"].astype(str).tolist()
        self._row = {pid: i for i, pid in enumerate(ids)}
        self._titles = catalog["title"].astype(str).tolist()
        self._texts = product_text(catalog)
        missing = [pid for pid in getattr(retriever, "catalog_ids", []) if pid not in self._row]
        if missing:
            raise ArtifactError(
                f"catalog does not match the index: product {missing[0]!r} is in the index but "
                "not in the catalog; pass the catalog the index was built from"
            )

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, index_dir: str | os.PathLike[str] = DEFAULT_INDEX_DIR,
             reranker: str | os.PathLike[str] | None = DEFAULT_RERANKER_DIR, *,
             catalog: str | os.PathLike[str] | None = None, quantize: bool = False,
             weights: Mapping[str, float] | None = None, warn: bool = True) -> TwoStageSearcher:
        """Load the index (and its encoder), the reranker and the catalog.

        A missing reranker at the *default* path is not an error (the user may not have
        trained one yet): the searcher says so on stderr and ranks by retrieval score.
        A reranker path given explicitly must exist. ``catalog`` defaults to the catalog
        recorded in the index manifest, then ``data/sample/catalog.parquet``.
        """
        from retrieval.index import Retriever

        index_path = Path(index_dir)
        if not (index_path / "manifest.json").is_file():
            raise ArtifactError(
                f"{index_path}: no index here; build one with `pipeline build-index` or run `pipeline demo`"
            )
        retriever = Retriever.load(index_path)
        cat_path = Path(catalog) if catalog else _catalog_from_manifest(retriever.manifest)
        frame = _load_catalog(cat_path)
        model = None
        if reranker is not None:
            rpath = Path(reranker)
            if (rpath / "manifest.json").is_file():
                from rerank.model import MultiTaskCrossEncoder

                model = (MultiTaskCrossEncoder.load(rpath, quantize=True) if quantize
                         else MultiTaskCrossEncoder.load(rpath))
            elif rpath != Path(DEFAULT_RERANKER_DIR):
                raise ArtifactError(f"{rpath}: no trained reranker here (no manifest.json)")
            elif warn:
                sys.stderr.write(
                    f"note: no trained reranker at {rpath}; returning retrieval order "
                    "(train one with `pipeline train-reranker` or run `pipeline demo`)\n"
                )
        return cls(retriever, model, frame, weights=weights)

    # ---------------------------------------------------------------- properties
    @property
    def reranked(self) -> bool:
        """True when a cross-encoder reranks the candidates."""
        return self.reranker is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        """Reranker tasks (probability columns); empty without a reranker."""
        return tuple(self.reranker.tasks) if self.reranker is not None else ()

    def manifest_ids(self) -> dict[str, str]:
        """Ids of the artefacts that produce the scores (written into outputs for provenance)."""
        ids = {"index": str(self.retriever.manifest.get("id", "")),
               "retriever_model": str(getattr(self.retriever.encoder, "model_id", ""))}
        if self.reranker is not None:
            ids["reranker"] = str(self.reranker.manifest.get("id", ""))
        return ids

    def has_product(self, product_id: str) -> bool:
        """Whether the catalog knows this product (the reranker needs its text)."""
        return product_id in self._row

    def title(self, product_id: str) -> str:
        """Title of a catalog product ("" if unknown)."""
        row = self._row.get(product_id)
        return self._titles[row] if row is not None else ""

    # ---------------------------------------------------------------- scoring
    def _rerank(self, query: str, product_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Task probabilities (n, tasks) and fused scores (n,) for one query's products."""
        from rerank.fusion import fuse

        texts = [self._texts[self._row[pid]] for pid in product_ids]
        probs = np.asarray(self.reranker.predict([query] * len(texts), texts), dtype=np.float32)
        scores = np.asarray(fuse(probs, self.tasks, self.weights), dtype=np.float64)
        return probs, scores

    def search(self, query: str, k: int = 10, candidates: int = 100) -> list[SearchHit]:
        """Top-k products for one query (see :meth:`search_many`)."""
        return self.search_many([query], k=k, candidates=candidates)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, candidates: int = 100) -> list[list[SearchHit]]:
        """Top-k products per query: retrieve ``candidates``, rerank them, keep ``k``.

        Each query is retrieved and reranked on its own (determinism contract above).
        Ties in the fused score are broken by retrieval rank, so the order is total.
        """
        if k < 1 or candidates < 1:
            raise ShoprankError(f"k and candidates must be >= 1 (got k={k}, candidates={candidates})")
        candidates = max(candidates, k) if self.reranker is not None else k
        results = []
        for raw in queries:
            query = clean_query(raw)
            ids_list, scores_list = self.retriever.search([query], k=candidates)
            ids = [str(p) for p in ids_list[0]]
            rscores = np.asarray(scores_list[0], dtype=np.float64)[: len(ids)]
            if self.reranker is None or not ids:
                results.append([SearchHit(i + 1, pid, self.title(pid), float(s), {}, float(s))
                                for i, (pid, s) in enumerate(zip(ids[:k], rscores))])
                continue
            probs, fused = self._rerank(query, ids)
            order = sorted(range(len(ids)), key=lambda i: (-fused[i], i))[:k]
            results.append([
                SearchHit(rank, ids[i], self.title(ids[i]), float(rscores[i]),
                          {t: float(probs[i, j]) for j, t in enumerate(self.tasks)}, float(fused[i]))
                for rank, i in enumerate(order, 1)
            ])
        return results

    def score_pairs(self, query: str, product_ids: Sequence[str]) -> list[SearchHit]:
        """Rerank scores for given (query, product) pairs, in the given order (no retrieval).

        Unknown product ids are a :class:`DataError`, since a score for a product the model
        has no text for would be made up.
        """
        if self.reranker is None:
            raise ArtifactError("scoring given (query, product_id) pairs needs a trained reranker")
        query = clean_query(query)
        unknown = [p for p in product_ids if p not in self._row]
        if unknown:
            raise DataError(f"product_id {unknown[0]!r} is not in the catalog")
        probs, fused = self._rerank(query, list(product_ids))
        return [SearchHit(None, pid, self.title(pid), float("nan"),
                          {t: float(probs[i, j]) for j, t in enumerate(self.tasks)}, float(fused[i]))
                for i, pid in enumerate(product_ids)]


def _catalog_from_manifest(manifest: Mapping[str, Any]) -> Path:
    """The catalog path an index records (if it still exists), else the sample default."""
    inputs = manifest.get("inputs", {}) if isinstance(manifest, Mapping) else {}
    for key in ("catalog", "catalog_path"):
        value = inputs.get(key) or manifest.get(key)
        if isinstance(value, str) and Path(value).is_file():
            return Path(value)
    return Path(DEFAULT_DATA_DIR) / "catalog.parquet"


def run_search(queries: Sequence[str], *, k: int = 10, candidates: int = 100,
               index_dir: str | os.PathLike[str] = DEFAULT_INDEX_DIR,
               reranker: str | os.PathLike[str] | None = DEFAULT_RERANKER_DIR,
               catalog: str | os.PathLike[str] | None = None, weights: Mapping[str, float] | None = None,
               quantize: bool = False) -> dict[str, Any]:
    """Load the searcher once and answer several queries (what `pipeline search` prints).

    Queries are validated *before* any model is loaded, so a blank query fails in
    milliseconds with a one-line error instead of after a model load.
    """
    if not queries:
        raise ShoprankError("no query given; pass a query or --queries-file")
    cleaned = [clean_query(q) for q in queries]
    truncated = [i for i, q in enumerate(queries) if len(" ".join(str(q).split())) > MAX_QUERY_CHARS]
    searcher = TwoStageSearcher.load(index_dir, reranker, catalog=catalog, quantize=quantize, weights=weights)
    hits = searcher.search_many(cleaned, k=k, candidates=candidates)
    return {
        "reranked": searcher.reranked, "tasks": list(searcher.tasks), "models": searcher.manifest_ids(),
        "results": [{"query": q, "truncated": i in truncated, "hits": [h.as_dict() for h in row]}
                    for i, (q, row) in enumerate(zip(cleaned, hits))],
    }
