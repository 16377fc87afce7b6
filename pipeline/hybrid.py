"""Fit the hybrid fusion of an index on a dataset's valid split and record it in the index.

Orchestration, not a stage: it needs the retriever (stage 1) and judged queries (data), and
writes the choice where every searcher reads it — the index manifest — so `pipeline
search --retrieval hybrid`, batch scoring and evaluation all fuse the same way.
"""
from __future__ import annotations

import os
from typing import Any

from pipeline.core.errors import DataError


def fit_index_fusion(index_dir: str | os.PathLike[str], dataset: Any, *, split: str = "valid",
                     encoder: Any = None, record: bool = True) -> dict[str, Any]:
    """Measure dense, lexical, RRF and convex fusions on ``split`` (Recall@100) and, with
    ``record``, write the best fusion into the index manifest. Returns the fit record
    (method, weight and every candidate's valid numbers)."""
    from pipeline.data import qrels_dict
    from retrieval.hybrid import fit_fusion
    from retrieval.index import Retriever, record_fusion

    if dataset.queries is None or dataset.qrels is None:
        raise DataError("fitting the hybrid fusion needs queries (with a split column) and qrels")
    judged = qrels_dict(dataset.qrels)
    queries = [q for q in dict.fromkeys(dataset.split_queries(split)) if q in judged]
    if not queries:
        raise DataError(f"queries: no judged queries in split {split!r} to fit the hybrid fusion on")
    retriever = Retriever.load(index_dir, encoder)

    def side(mode: str, qs: list[str], depth: int) -> Any:
        return retriever.search(qs, k=depth, mode=mode)

    result = {**fit_fusion(side, queries, judged), "split": split}
    if record:
        record_fusion(index_dir, result)
    return result
