"""The retriever's per-epoch validation pool (retrieval.evaluation.validation_pool)."""
from __future__ import annotations

import numpy as np

from retrieval.evaluation import validation_pool


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_pool_keeps_judged_products_and_the_start_models_top_and_respects_size() -> None:
    ids = [f"p{i}" for i in range(500)]
    products = _vectors(500)
    queries = ["a", "b"]
    query_vecs = products[[10, 20]] + 0.01  # each query sits next to one product
    qrels = {"a": {"p400": 2, "p401": 0}, "b": {"p450": 1}, "c": {"p499": 3}}
    pool = validation_pool(queries, qrels, ids, query_vecs, products, size=150, seed=3, depth=20)
    chosen = {ids[i] for i in pool}
    assert {"p400", "p401", "p450"} <= chosen  # judged for a valid query; "c" is not one
    assert {"p10", "p20"} <= chosen  # the starting model's top result for each query
    assert len(pool) == 150 and np.all(np.diff(pool) > 0)
    again = validation_pool(queries, qrels, ids, query_vecs, products, size=150, seed=3, depth=20)
    np.testing.assert_array_equal(pool, again)


def test_small_catalog_is_validated_whole() -> None:
    ids = [f"p{i}" for i in range(50)]
    pool = validation_pool(["a"], {"a": {"p1": 1}}, ids, np.empty((0, 8), np.float32), _vectors(50), size=100, seed=0)
    np.testing.assert_array_equal(pool, np.arange(50))
