"""Ranking and classification metrics, computed by well-kept libraries (ir-measures /
pytrec_eval, scikit-learn), never hand-rolled.

Conventions (shared by every stage so numbers are comparable):
* ``qrels``: ``{query_key: {product_id: grade}}`` with integer grades (0 = irrelevant).
* ``run``: ``{query_key: {product_id: score}}`` — higher score ranks higher.
* Binary measures (MRR, Recall) count grade >= ``min_relevant`` (default 2: exact or
  substitute in the ESCI-style 0-3 scale); nDCG uses the grades themselves.
* Averages are over **every query in qrels**: a query the system returned nothing for
  scores 0 (pytrec_eval alone would silently drop it).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_MEASURES = ("nDCG@10", "MRR@10", "Recall@100")


def _ir_measure(name: str, min_relevant: int):
    """Map our measure names to ir-measures objects (binary ones with a relevance cut)."""
    import ir_measures

    kind, _, cutoff = name.partition("@")
    spec = {
        "nDCG": f"nDCG@{cutoff}",
        "MRR": f"RR(rel={min_relevant})@{cutoff}",
        "Recall": f"R(rel={min_relevant})@{cutoff}",
        "P": f"P(rel={min_relevant})@{cutoff}",
    }.get(kind)
    if spec is None:
        raise ValueError(f"unknown measure {name!r}; use nDCG@k, MRR@k, Recall@k or P@k")
    return ir_measures.parse_measure(spec)


def per_query(run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES,
              min_relevant: int = 2) -> dict[str, dict[str, float]]:
    """``{measure: {query: value}}`` for every query in qrels (0 where the run has none)."""
    import ir_measures

    objs = {name: _ir_measure(name, min_relevant) for name in measures}
    by_str = {str(obj): name for name, obj in objs.items()}
    out: dict[str, dict[str, float]] = {name: {q: 0.0 for q in qrels} for name in measures}
    clean_qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    clean_run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    if clean_run:
        for m in ir_measures.iter_calc(list(objs.values()), clean_qrels, clean_run):
            out[by_str[str(m.measure)]][m.query_id] = float(m.value)
    return out


def aggregate(run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES,
              min_relevant: int = 2, queries: Iterable[str] | None = None) -> dict[str, float]:
    """Mean of each measure over ``queries`` (default: all queries in qrels)."""
    values = per_query(run, qrels, measures, min_relevant)
    keys = list(qrels) if queries is None else [q for q in queries if q in qrels]
    return {name: (float(np.mean([values[name][q] for q in keys])) if keys else float("nan"))
            for name in measures}


def paired_bootstrap(values: Mapping[str, float], baseline: Mapping[str, float], *, n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean per-query difference ``values - baseline`` with a bootstrap confidence interval.

    Why paired over queries: two rankers are scored on the same queries, and query
    difficulty varies far more than the systems differ; resampling the per-query
    *differences* removes that shared variance (Sakai 2006; scipy's percentile bootstrap).
    """
    from scipy.stats import bootstrap

    keys = [q for q in values if q in baseline]
    diff = np.array([values[q] - baseline[q] for q in keys], dtype=np.float64)
    if len(diff) < 2:
        return {"diff": float(diff.mean()) if len(diff) else float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan"), "queries": len(diff)}
    if np.all(diff == diff[0]):
        return {"diff": float(diff[0]), "ci_low": float(diff[0]), "ci_high": float(diff[0]), "queries": len(diff)}
    res = bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", rng=np.random.default_rng(seed))
    return {"diff": float(diff.mean()), "ci_low": float(res.confidence_interval.low),
            "ci_high": float(res.confidence_interval.high), "queries": len(diff)}


def auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """ROC AUC (scikit-learn); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels) > 0
    if y.all() or (~y).all():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def examined_auc(counts: Sequence[float], examinations: Sequence[float], scores: Sequence[float]) -> float:
    """ROC AUC over *examined impressions*: engaged ones against examined-but-skipped ones.

    Each row (a shown product) stands for ``counts`` engaged impressions (positives; a click
    implies the product was looked at) and ``examinations - counts`` looked-at impressions
    without engagement (negatives), where ``examinations`` is the expected number of times
    the product was examined (impressions weighted by the examination propensity of the
    position each was shown at). Why: "engaged at least once" rewards whatever was shown
    often and high on the page, so a score that copies the logging ranker's exposure wins
    it without knowing which products users prefer once they see them. Weighting by
    examinations is the inverse-propensity correction of that AUC. NaN when one side is empty.
    """
    from sklearn.metrics import roc_auc_score

    c = np.asarray(counts, dtype=np.float64)
    negatives = np.clip(np.asarray(examinations, dtype=np.float64) - c, 0.0, None)
    s = np.asarray(scores, dtype=np.float64)
    if c.sum() <= 0 or negatives.sum() <= 0:
        return float("nan")
    y = np.r_[np.ones(len(c)), np.zeros(len(c))]
    w = np.r_[c, negatives]
    keep = w > 0
    return float(roc_auc_score(y[keep], np.r_[s, s][keep], sample_weight=w[keep]))


def run_from_pairs(queries: Sequence[str], ids: Sequence[str], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """Build a run dict from flat, pair-aligned (query, id, score) arrays."""
    run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(queries, ids, scores):
        run.setdefault(q, {})[str(d)] = float(s)
    return run


def run_from_ranked(queries: Sequence[str], ids: Sequence[Sequence[str]],
                    scores: Sequence[Sequence[float]]) -> dict[str, dict[str, float]]:
    """Build a run dict from per-query ranked id lists and their scores."""
    return {q: {str(d): float(s) for d, s in zip(row_ids, row_scores)}
            for q, row_ids, row_scores in zip(queries, ids, scores)}


def write_trec_run(path, run: Run, system: str) -> None:
    """Write a TREC run file (``qid Q0 docid rank score system``) so any result can be
    checked with trec_eval / ir-measures. Query keys must not contain whitespace: callers
    pass query ids."""
    from pipeline.core.artifacts import atomic_write_text

    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"{qid} Q0 {doc} {rank} {score:.6f} {system}" for rank, (doc, score) in enumerate(ranked, 1)]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def write_trec_qrels(path, qrels: Qrels) -> None:
    """Write a TREC qrels file (``qid 0 docid grade``), the partner of the run files."""
    from pipeline.core.artifacts import atomic_write_text

    lines = [f"{qid} 0 {doc} {grade}" for qid, docs in qrels.items() for doc, grade in sorted(docs.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")
