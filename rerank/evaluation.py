"""The reranker's evaluator: per-task NDCG@10 graded by engagement counts, AUC, and (when
qrels are given) NDCG@10 graded by ground-truth relevance. Metrics come from
``pipeline.core.metrics`` (ir-measures / scikit-learn) only.

Per-task NDCG for task t grades each pair by its t-count (e.g. number of purchases), over the
queries with at least one positive for t (a query nobody bought from says nothing about
purchase ranking). AUC is over all pairs, positive = count > 0.

The same function scores *any* system: a model that does not predict task t (single-task,
or retrieval-only) is ranked for t by its overall ranking score, so every row of the
comparison table is filled the same way.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core import metrics
from pipeline.core.tasks import COUNT_COLUMNS
from rerank.fusion import fuse
from rerank.heads import TASKS


def _run(pairs: pd.DataFrame, scores: np.ndarray) -> dict[str, dict[str, float]]:
    return metrics.run_from_pairs(pairs["query"], pairs["product_id"], scores)


def ranking_metrics(pairs: pd.DataFrame, score: np.ndarray,
                    task_scores: Mapping[str, np.ndarray] | None = None,
                    qrels: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, float]:
    """Metrics of one system over evaluation pairs.

    ``score``: the system's ranking score per pair; ``task_scores``: per-task probabilities
    where the system has them. Returns ``ndcg@10`` (relevance, if qrels), and
    ``<task>_ndcg@10`` / ``<task>_auc`` for click, add_to_cart and purchase.
    """
    task_scores = dict(task_scores or {})
    out: dict[str, float] = {}
    if qrels is not None:
        queries = sorted(set(pairs["query"]) & set(qrels))
        if queries:
            sub = {q: qrels[q] for q in queries}
            out["ndcg@10"] = metrics.aggregate(_run(pairs, score), sub, ("nDCG@10",))["nDCG@10"]
    for task in TASKS:
        s = np.asarray(task_scores.get(task, score), dtype=np.float64)
        counts = pairs[COUNT_COLUMNS[task]].to_numpy()
        graded: dict[str, dict[str, int]] = {}
        for q, pid, c in zip(pairs["query"], pairs["product_id"], counts):
            graded.setdefault(q, {})[pid] = int(c)
        graded = {q: d for q, d in graded.items() if any(v > 0 for v in d.values())}
        out[f"{task}_ndcg@10"] = (metrics.aggregate(_run(pairs, s), graded, ("nDCG@10",), min_relevant=1)["nDCG@10"]
                                  if graded else float("nan"))
        out[f"{task}_auc"] = metrics.auc(counts > 0, s)
    return out


def model_metrics(pairs: pd.DataFrame, probs: np.ndarray, tasks: Sequence[str],
                  qrels: Mapping[str, Mapping[str, int]] | None = None,
                  weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """:func:`ranking_metrics` for a reranker's probabilities (ranking score = fusion;
    a single-task model ranks by its one probability whatever the weights)."""
    score = np.asarray(probs[:, 0], dtype=np.float64) if len(tasks) == 1 else fuse(probs, tasks, weights)
    return ranking_metrics(pairs, score, {t: probs[:, i] for i, t in enumerate(tasks)}, qrels)


class EngagementEvaluator:
    """Scores a fixed set of validation pairs with a model and returns its metrics.

    The primary metric (used to keep the best epoch) is the mean per-task NDCG@10 over the
    tasks the model is trained on — each model is selected on what it is trying to predict.
    """

    def __init__(self, pairs: pd.DataFrame, qrels: Mapping[str, Mapping[str, int]] | None = None,
                 batch_size: int = 64) -> None:
        self.pairs = pairs.reset_index(drop=True)
        self.qrels = qrels
        self.batch_size = batch_size

    def __call__(self, model: Any) -> dict[str, float]:
        probs = model.predict(self.pairs["query"].tolist(), self.pairs["text"].tolist(), batch_size=self.batch_size)
        result = model_metrics(self.pairs, probs, model.tasks, self.qrels)
        vals = [result[f"{t}_ndcg@10"] for t in model.tasks if not np.isnan(result[f"{t}_ndcg@10"])]
        result["primary"] = float(np.mean(vals)) if vals else float("nan")
        return result
