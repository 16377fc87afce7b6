"""Index quality/speed benchmark: flat vs hnsw vs ivfpq at 100,000 products. Prints JSON.

Vectors are SYNTHETIC (encoding 100k titles with MiniLM takes minutes on 2 shared CPU cores):
384-d unit vectors drawn around 1,000 topic centres, which mimics how text embeddings
cluster (isotropic noise would be an unrealistically hard case for IVF). Queries are drawn
the same way. Each index is built with the same presets `pipeline build-index` uses and
its Recall@100 is measured against the exact flat index on the same vectors.

    python benchmarks/index_recall.py [--n 100000] [--queries 200] [--dim 384]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.index import Retriever, build_from_vectors  # noqa: E402


def clustered(n: int, dim: int, seed: int, centers: int = 1000, noise: float = 1.0) -> np.ndarray:
    """Unit centre + Gaussian noise of norm ~``noise`` (cosine to its centre ~0.7), renormalised."""
    centres = np.random.default_rng(12345).standard_normal((centers, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(centers, size=n)] + rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    args = ap.parse_args()

    vecs = clustered(args.n, args.dim, seed=0)
    queries = clustered(args.queries, args.dim, seed=1)
    ids = [f"P{i:07d}" for i in range(args.n)]
    results: dict[str, dict] = {}
    truth: list[list[str]] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("flat", "hnsw", "ivfpq"):
            t0 = time.perf_counter()
            manifest = build_from_vectors(vecs, ids, Path(tmp) / kind, index_type=kind)
            build = time.perf_counter() - t0
            retriever = Retriever.load(Path(tmp) / kind, load_encoder=False)
            t0 = time.perf_counter()
            got, _ = retriever.search_vectors(queries, args.k)
            batch_ms = (time.perf_counter() - t0) * 1000 / len(queries)
            if truth is None:
                truth = got
            recall = float(np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got)]))
            results[kind] = {
                "factory": manifest["factory"], "search_params": manifest["search_params"],
                f"recall@{args.k}_vs_flat": round(recall, 4), "build_seconds": round(build, 2),
                "index_bytes": manifest["index_bytes"], "single_query_latency_ms": manifest["query_latency_ms"],
                "batched_ms_per_query": round(batch_ms, 3),
            }
    print(json.dumps({"n": args.n, "dim": args.dim, "queries": args.queries, "vectors": "synthetic clustered",
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
