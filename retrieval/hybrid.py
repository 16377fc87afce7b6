"""Hybrid recall: fuse the dense and the lexical candidate lists of one query.

Two fusions, both over each side's top :func:`fusion_depth` candidates:

* ``rrf``: reciprocal rank fusion, ``sum 1 / (RRF_K + rank)``. Needs no fitting and ignores
  score scales, which differ by orders of magnitude between BM25 and cosine.
* ``convex``: ``w * dense + (1 - w) * lexical`` on per-query min-max normalised scores.
  ``w`` is fitted on the valid split (:func:`fit_fusion`), because how much each side is
  worth depends on the shop's queries.

A product that only one side returned gets a *floor* on the other side (:func:`side_scores`)
rather than nothing: it was not found there, but it was not shown to score nothing either.

Which one an index uses, and its weight, is recorded in the index manifest under
:data:`FUSION_KEY`; an index without a record uses RRF.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.core.errors import DataError

RETRIEVAL_MODES = ("dense", "lexical", "hybrid")
FUSION_METHODS = ("rrf", "convex")
#: Manifest key of the fitted fusion: ``{"method", "weight", "valid": {...}}``.
FUSION_KEY = "hybrid_fusion"
#: The usual RRF constant (Cormack et al.): damps the weight of the very top ranks.
RRF_K = 60
#: Candidates taken from each side before fusing, at least: fusing two top-10 lists would make
#: the hybrid top 10 depend on k, and both sides are cheap at this depth.
MIN_FUSION_DEPTH = 100
#: Convex weights tried by :func:`fit_fusion` (weight of the dense side); 0 and 1 are the
#: single sides, measured as such.
WEIGHT_GRID = tuple(round(w, 2) for w in np.linspace(0.05, 0.95, 19))
#: What the fit maximises on valid: hybrid exists to widen the reranker's candidate pool.
FIT_MEASURE = "Recall@100"


def check_mode(mode: str) -> str:
    """One-line DataError for an unknown retrieval mode."""
    if mode not in RETRIEVAL_MODES:
        raise DataError(f"unknown retrieval mode {mode!r}; use one of {', '.join(RETRIEVAL_MODES)}")
    return mode


def fusion_depth(k: int) -> int:
    """Candidates fetched from each side for a hybrid top ``k``."""
    return max(int(k), MIN_FUSION_DEPTH)


def _minmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    return np.ones_like(scores) if hi <= lo else (scores - lo) / (hi - lo)


def side_scores(ids: Sequence[str], scores: np.ndarray, method: str, share: float,
                depth: int) -> tuple[np.ndarray, float]:
    """One side's fused contribution per listed product, and its *floor*: the contribution of
    a product this side did not return.

    * ``rrf``: the floor is the rank just past the depth the side was searched to
      (``max(depth, len(ids)) + 1``). Why the depth and not the list's own length: a lexical
      list is short when few products share a query term, and those few are the strongest
      lexical evidence there is; a floor right behind them would cancel their lead.
    * ``convex``: the floor is the list's minimum, which min-max scaling maps to 0: nothing
      says an unreturned product scored lower than the last one returned. A list of equal
      scores scales to 1, above the floor, since being returned is then its only evidence.

    ``share``: the side's convex weight (unused by RRF).
    """
    if method == "rrf":
        return 1.0 / (RRF_K + np.arange(1, len(ids) + 1)), 1.0 / (RRF_K + max(int(depth), len(ids)) + 1)
    if method == "convex":
        return share * _minmax(scores), 0.0
    raise DataError(f"unknown fusion method {method!r}; use one of {', '.join(FUSION_METHODS)}")


def fuse(dense: tuple[Sequence[str], np.ndarray], lexical: tuple[Sequence[str], np.ndarray], k: int,
         method: str = "rrf", weight: float = 0.5) -> tuple[list[str], np.ndarray]:
    """Top ``k`` of two ranked (ids, scores) lists of one query under ``method``; each side was
    searched to :func:`fusion_depth` of ``k``, and a product one side lacks gets that side's
    floor (:func:`side_scores`).

    Ties are broken by the better of the two ranks, then by id, so the order is total and
    does not depend on dict iteration order.
    """
    depth = fusion_depth(k)
    parts = [(ids, *side_scores(ids, scores, method, share, depth))
             for (ids, scores), share in ((dense, weight), (lexical, 1.0 - weight))]
    floors = sum(floor for _, _, floor in parts)
    fused: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ids, contrib, floor in parts:
        for rank, (pid, value) in enumerate(zip(ids, contrib)):
            fused[pid] = fused.get(pid, floors) + float(value) - floor
            best_rank[pid] = min(best_rank.get(pid, rank), rank)
    order = sorted(fused, key=lambda p: (-fused[p], best_rank[p], p))[: max(int(k), 0)]
    return order, np.asarray([fused[p] for p in order], dtype=np.float32)


def recorded_fusion(manifest: Mapping[str, Any] | None) -> tuple[str, float]:
    """(method, dense weight) recorded in an index manifest; RRF when none was fitted."""
    record = (manifest or {}).get(FUSION_KEY) or {}
    method = record.get("method", "rrf")
    return (method if method in FUSION_METHODS else "rrf"), float(record.get("weight", 0.5))


def fit_fusion(search_side: Callable[[str, list[str], int], tuple[list[list[str]], list[np.ndarray]]],
               queries: list[str], qrels: Mapping[str, Mapping[str, int]], k: int = 100) -> dict[str, Any]:
    """Measure dense, lexical, RRF and every convex weight on ``queries``; pick the best fusion.

    ``search_side(mode, queries, depth)`` returns one side's ranked lists. The choice
    maximises :data:`FIT_MEASURE` (nDCG@10 breaks ties); the record lists every candidate's
    numbers so the choice can be checked.
    """
    from pipeline.core.metrics import aggregate

    if not queries:
        raise DataError("no judged queries to fit the hybrid fusion on")
    depth = fusion_depth(k)
    sides = {mode: search_side(mode, queries, depth) for mode in ("dense", "lexical")}
    qids = {q: f"q{i}" for i, q in enumerate(queries)}
    judged = {qids[q]: dict(qrels[q]) for q in queries}
    measures = [FIT_MEASURE, "nDCG@10"]

    def score(lists: list[tuple[list[str], np.ndarray]]) -> dict[str, float]:
        run = {qids[q]: {pid: float(s) for pid, s in zip(ids, scores)} for q, (ids, scores) in zip(queries, lists)}
        return {m: round(float(v), 4) for m, v in aggregate(run, judged, measures).items()}

    table: dict[str, dict[str, float]] = {}
    for mode in ("dense", "lexical"):
        table[mode] = score([(ids[:k], sc[:k]) for ids, sc in zip(*sides[mode])])
    pairs = list(zip(zip(*sides["dense"]), zip(*sides["lexical"])))
    table["rrf"] = score([fuse(d, lx, k, "rrf") for d, lx in pairs])
    for w in WEIGHT_GRID:
        table[f"convex:{w:g}"] = score([fuse(d, lx, k, "convex", w) for d, lx in pairs])
    fusions = [name for name in table if name not in ("dense", "lexical")]
    best = max(fusions, key=lambda n: (table[n][FIT_MEASURE], table[n]["nDCG@10"], n == "rrf"))
    method, _, weight = best.partition(":")
    return {"method": method, "weight": float(weight) if weight else 0.5, "measure": FIT_MEASURE,
            "queries": len(queries), "valid": table}
