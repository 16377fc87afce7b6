"""Stage-1 validation: exact dense search for a model and the per-epoch validation evaluator.
The test-split tables (BM25 / zero-shot / fine-tuned, two-stage) are ``pipeline evaluate``'s.

Models are compared with *exact* (brute-force) search so that the numbers measure the
embeddings, not an approximate index; index quality is measured separately
(benchmarks/index_recall.py). All metrics come from :mod:`pipeline.core.metrics`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.metrics import aggregate, run_from_ranked
from pipeline.core.runtime import import_torch

import_torch()  # torch before anything that may pull faiss (one import order)
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.data import Dataset

MEASURES = ("Recall@100", "nDCG@10")
SearchFn = Callable[[list[str], int], tuple[list[list[str]], list[np.ndarray]]]


def qrels_for(dataset: "Dataset", queries: Iterable[str]) -> dict[str, dict[str, int]]:
    """Graded qrels for ``queries``: the dataset's qrels, else grades derived from engagement
    (purchase 3 > add-to-cart 2 > click 1) so a log-only dataset can still be validated."""
    from pipeline.data import engagement_qrels, qrels_dict

    wanted = set(queries)
    if dataset.qrels is not None and len(dataset.qrels):
        return qrels_dict(dataset.qrels[dataset.qrels["query"].isin(wanted)])
    return engagement_qrels(dataset.engagement, wanted)


def validation_pool(queries: Sequence[str], qrels: Mapping[str, Mapping[str, int]], product_ids: Sequence[str],
                    query_vecs: np.ndarray, product_vecs: np.ndarray, size: int, seed: int,
                    depth: int = 100) -> np.ndarray:
    """Row positions of a fixed product pool for per-epoch validation on a large catalog.

    Why: encoding the whole catalog after every epoch dominated retriever training on real
    catalogs (minutes per epoch for ten thousand titles on 2 cores). The pool holds what
    Recall@100 and nDCG@10 of the valid queries can depend on: every judged product of those
    queries, the starting model's top ``depth`` for each (the look-alikes a fine-tuned model
    must keep below the relevant ones), and a seeded random fill up to ``size`` as
    distractors. Metrics on the pool are higher than on the whole catalog, but the pool is
    the same every epoch, so they rank epochs the same way, which is all selection needs.
    Returns sorted positions into ``product_ids``; the whole catalog when it fits ``size``.
    """
    n = len(product_ids)
    if n <= size:
        return np.arange(n)
    position = {pid: i for i, pid in enumerate(product_ids)}
    keep = {position[p] for q in queries for p in qrels.get(q, {}) if p in position}
    if len(query_vecs):
        top, _ = exact_search(query_vecs, product_vecs, np.arange(n), min(depth, n))
        keep.update(int(i) for row in top for i in row)
    rest = np.setdiff1d(np.arange(n), np.fromiter(keep, dtype=np.int64, count=len(keep)))
    fill = max(0, size - len(keep))
    if fill and len(rest):
        keep.update(np.random.default_rng(seed).choice(rest, size=min(fill, len(rest)), replace=False).tolist())
    return np.array(sorted(keep), dtype=np.int64)


def exact_search(query_vecs: np.ndarray, product_vecs: np.ndarray, ids: Sequence[str],
                 k: int) -> tuple[list[list[str]], list[np.ndarray]]:
    """Brute-force inner-product top-k (deterministic ties by position)."""
    ids_arr = np.asarray(ids)
    k = min(k, len(ids_arr))
    scores = query_vecs @ product_vecs.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [ids_arr[row].tolist() for row in top], [scores[i, row] for i, row in enumerate(top)]


def dense_search_fn(encode_queries: Callable[[list[str]], np.ndarray], product_vecs: np.ndarray,
                    ids: Sequence[str]) -> SearchFn:
    """Wrap an encoder + precomputed product vectors as a ``search(queries, k)`` function."""
    def search(queries: list[str], k: int) -> tuple[list[list[str]], list[np.ndarray]]:
        return exact_search(encode_queries(queries), product_vecs, ids, k)
    return search


def score_system(search: SearchFn, queries: Sequence[str], qrels: Mapping[str, Mapping[str, int]],
                 subsets: Mapping[str, Iterable[str]] | None = None, k: int = 100) -> dict[str, float]:
    """Recall@100 and nDCG@10 over ``queries`` (and each named subset, keys ``"<subset> <measure>"``)."""
    queries = [q for q in dict.fromkeys(queries) if q in qrels]
    ids, scores = search(list(queries), k)
    run = run_from_ranked(queries, ids, scores)
    result = aggregate(run, qrels, MEASURES, queries=queries)
    out = {m: result[m] for m in MEASURES}
    out["queries"] = float(len(queries))
    for name, subset in (subsets or {}).items():
        sub = [q for q in queries if q in set(subset)]
        part = aggregate(run, qrels, MEASURES, queries=sub)
        out.update({f"{name} {m}": part[m] for m in MEASURES})
        out[f"{name} queries"] = float(len(sub))
    return out


class RetrievalEvaluator(BaseEvaluator):
    """Per-epoch validation for the sentence-transformers trainer: encode the catalog with the
    model being trained, search exactly, report Recall@100 / nDCG@10 (via pipeline.core.metrics).

    ``primary_metric`` is their mean ("score") so the best checkpoint is the one that is good
    at both of stage 1's jobs: recall for the reranker and a sensible top 10 on its own.
    """

    def __init__(self, queries: Sequence[str], product_texts: Sequence[str], product_ids: Sequence[str],
                 qrels: Mapping[str, Mapping[str, int]], name: str = "valid", batch_size: int = 64) -> None:
        super().__init__()
        self.queries = [q for q in queries if q in qrels]
        self.product_texts = list(product_texts)
        self.product_ids = list(product_ids)
        self.qrels = qrels
        self.name = name
        self.batch_size = batch_size
        self.primary_metric = "score"
        self.greater_is_better = True
        self.history: list[dict[str, Any]] = []

    def evaluate_model(self, model: Any, product_vecs: np.ndarray | None = None, epoch: float | None = None,
                       ) -> dict[str, float]:
        """Metrics for a SentenceTransformer model (no prefixes)."""
        def enc(texts: Sequence[str]) -> np.ndarray:
            return model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        if product_vecs is None:
            product_vecs = enc(self.product_texts)
        search = dense_search_fn(enc, product_vecs, self.product_ids)
        res = score_system(search, self.queries, self.qrels)
        return {"recall@100": res["Recall@100"], "ndcg@10": res["nDCG@10"],
                "score": (res["Recall@100"] + res["nDCG@10"]) / 2}

    def __call__(self, model: Any, output_path: str | None = None, epoch: float = -1,
                 steps: int = -1) -> dict[str, float]:
        metrics = self.evaluate_model(model, epoch=epoch)
        self.history.append({"epoch": float(epoch), "step": int(steps), **metrics})
        return self.prefix_name_to_metrics(metrics, self.name)
