"""Score fusion: one ranking score from the per-task probabilities, then (optionally) a
blend of that score with the first stage's retrieval score.

Default = **expected value of an impression**: ``0.1·p(click) + 0.3·p(cart) + 1.0·p(purchase)``.
Why these weights: a purchase is the outcome the shop is paid for (value 1); an add-to-cart
is strong intent that often converts later or in another session (0.3); a click is cheap and
noisy (0.1) but is by far the most frequent signal, so it still breaks ties among products
nobody has bought yet. Because funnel heads make p(purchase) <= p(cart) <= p(click), the
weights also counter the raw magnitude gap (clicks are ~10x more probable than purchases),
so the score is not just a click model in disguise.

Override with ``fuse(..., weights={"purchase": 1, "click": 0})`` or ``--weights
click=0,add_to_cart=0.5,purchase=1`` on the CLI. Tasks a model does not predict are skipped,
so a single-task model ranks by its one probability.

**First-stage blend** (:func:`blend`): ``α·z(rerank) + (1-α)·z(retrieval)``, each score
standardised within the query's candidate list. Why: a reranker that learned little (or
learned the training shop rather than relevance) would otherwise replace a good first-stage
order by a worse one; with the retrieval score in the blend, a weight fitted on the valid
split (:func:`fit_alpha`) can only fall back towards stage 1. Why z-scores: the two scores
live on unrelated scales (cosine similarity vs expected engagement) that also vary from
query to query, and standardising per query puts both on "how far above this query's
average candidate" without any cross-query calibration. The weight lives in the reranker's
manifest as ``fusion.retrieval_weight`` (= 1 - α), read by every serving path through
:func:`retrieval_weight`; absent (older models) means 0, i.e. reranker order alone.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_WEIGHTS: dict[str, float] = {"click": 0.1, "add_to_cart": 0.3, "purchase": 1.0}
#: Reranker weights α tried by :func:`fit_alpha` (0 = retrieval order, 1 = reranker order).
ALPHA_GRID: tuple[float, ...] = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
NORMALISATION = "zscore-per-query"


def fuse(probs: np.ndarray, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Ranking scores (n,) = Σ_t w_t·p_t over the tasks the model predicts."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(tasks):
        raise ValueError(f"probs of shape {probs.shape} do not match {len(tasks)} tasks")
    w = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(w) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown task(s) in fusion weights: {sorted(unknown)}")
    vec = np.array([float(w.get(t, 0.0)) for t in tasks])
    if not np.any(vec):
        raise ValueError(f"fusion weights {w} give every task of {list(tasks)} zero weight")
    return probs @ vec


def parse_weights(spec: str | None) -> dict[str, float] | None:
    """``"click=0.1,purchase=1"`` -> dict (None/empty -> None = defaults). Tasks left out weigh 0."""
    if not spec:
        return None
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fusion weight {part!r} is not task=value")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"fusion weight {part!r}: {value!r} is not a number") from None
    unknown = set(out) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown task(s) in fusion weights: {sorted(unknown)}")
    return out


def zscore(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Standardise one query's scores (mean 0, std 1); a constant list becomes all zeros."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    std = float(x.std())
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def blend(rerank_score: Sequence[float] | np.ndarray, retrieval_score: Sequence[float] | np.ndarray,
          alpha: float) -> np.ndarray:
    """One query's blended scores ``α·z(rerank) + (1-α)·z(retrieval)`` over its candidates."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend weight alpha must lie in [0, 1], got {alpha}")
    rerank, retrieval = np.asarray(rerank_score, dtype=np.float64), np.asarray(retrieval_score, dtype=np.float64)
    if rerank.shape != retrieval.shape:
        raise ValueError(f"{rerank.shape} rerank scores for {retrieval.shape} retrieval scores")
    return alpha * zscore(rerank) + (1.0 - alpha) * zscore(retrieval)


def rows_by_query(queries: Sequence[str]) -> dict[str, list[int]]:
    """Row positions of each query in a flat, pair-aligned array (first-seen order)."""
    rows: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        rows.setdefault(q, []).append(i)
    return rows


def blend_by_query(queries: Sequence[str], rerank_score: Sequence[float] | np.ndarray,
                   retrieval_score: Sequence[float] | np.ndarray, alpha: float) -> np.ndarray:
    """:func:`blend` applied to every query's rows of flat (pair-aligned) arrays."""
    rerank, retrieval = np.asarray(rerank_score, dtype=np.float64), np.asarray(retrieval_score, dtype=np.float64)
    out = np.zeros(len(rerank), dtype=np.float64)
    for idx in rows_by_query(queries).values():
        out[idx] = blend(rerank[idx], retrieval[idx], alpha)
    return out


def fit_alpha(queries: Sequence[str], product_ids: Sequence[str], rerank_score: Sequence[float] | np.ndarray,
              retrieval_score: Sequence[float] | np.ndarray, qrels: Mapping[str, Mapping[str, int]],
              grid: Sequence[float] = ALPHA_GRID, measure: str = "nDCG@10") -> dict[str, Any]:
    """The reranker weight α on ``grid`` with the best mean ``measure`` over the judged queries.

    Inputs are flat, pair-aligned arrays over the candidate lists the searcher will rerank
    (fit on the *valid* split, never on test). Several α often give the same order, hence
    the same score: the middle of the best plateau is taken, the choice farthest from the
    α where the order (and the score) starts to change. Returns ``alpha``,
    ``retrieval_weight`` and the score of every grid point (``by_alpha``), so a report can
    show how flat the curve is.
    """
    from pipeline.core import metrics

    judged = {q for q in dict.fromkeys(queries) if q in qrels}
    if not judged:
        raise ValueError("fit_alpha: none of the queries has relevance judgements")
    sub = {q: dict(qrels[q]) for q in judged}
    by_alpha: dict[float, float] = {}
    for alpha in sorted({float(a) for a in grid}):
        run = metrics.run_from_pairs(queries, product_ids, blend_by_query(queries, rerank_score, retrieval_score, alpha))
        by_alpha[alpha] = metrics.aggregate(run, sub, (measure,))[measure]  # unjudged queries are ignored
    top = max(by_alpha.values())
    plateau = sorted(a for a, v in by_alpha.items() if v >= top - 1e-12)
    best = plateau[(len(plateau) - 1) // 2]
    return {"alpha": best, "retrieval_weight": round(1.0 - best, 6), "measure": measure,
            "queries": len(judged), "by_alpha": {f"{a:g}": round(v, 6) for a, v in sorted(by_alpha.items())}}


def retrieval_weight(manifest: Mapping[str, Any] | None) -> float:
    """The fitted first-stage weight a reranker manifest records (0 when it has none)."""
    fusion = (manifest or {}).get("fusion") or {}
    weight = float(fusion.get("retrieval_weight", 0.0))
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"reranker manifest: fusion.retrieval_weight {weight} is outside [0, 1]")
    return weight


def save_fusion(reranker_dir: str | os.PathLike[str], fusion: Mapping[str, Any]) -> dict[str, Any]:
    """Record a fitted blend in the reranker's manifest (rewritten atomically) and return it.

    The manifest id and weight checksums stay as they are: the blend is applied after the
    model, so an ONNX export of the same weights stays valid and picks the blend up from the
    same manifest.
    """
    from pipeline.core.artifacts import read_manifest, write_manifest

    weight = float(fusion["retrieval_weight"])
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion retrieval_weight {weight} is outside [0, 1]")
    manifest = read_manifest(reranker_dir, kind="reranker")
    manifest["fusion"] = {"normalisation": NORMALISATION, **dict(fusion), "retrieval_weight": weight}
    write_manifest(reranker_dir, manifest)
    return manifest
