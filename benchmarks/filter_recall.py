"""Filtered search at 100k products, and what the lexical side costs to load. Prints one JSON object.

What it measures (2 shared CPU cores is the design target; numbers compare within one run):

* **filter** - for the flat and HNSW presets (``retrieval.index.build_from_vectors``, as
  ``pipeline build-index`` builds them), ``category=...`` filters keeping 50%, 5% and 0.5% of
  the catalog, each next to the same index unfiltered. ``hnsw_own_search`` is the same HNSW
  index with the exact scan turned off (``EXACT_SCAN_BUDGET = 0``): what its own filtered
  search (IDSelector, widened efSearch) would give, i.e. why the budget is where it is.

  - ``recall@10`` against exact search (numpy over the matching products' vectors; over all
    of them unfiltered), ``min_query_recall``, and ``short_rows`` (queries answered with
    fewer than k products although k match);
  - ``latency_ms``: single queries through ``Retriever.search_vectors`` with the selection,
    after a warm-up, on ONE search thread (a one-query OpenMP region on a shared,
    oversubscribed CPU measures the scheduler, see index_recall.py);
  - ``selection_ms``: building the selection once per filter
    (``TwoStageSearcher.selection``: typed catalog mask, then the index selection);
  - ``strategy``: how the index answered (see ``retrieval.index.Selection``).

  Two catalog layouts. ``random``: the category is independent of the vectors.
  ``topical``: the category follows the vector's topic centre, as a real category does
  for text embeddings (the product text contains it), and queries come from every topic,
  so most filtered queries ask for products far from the query.

* **lexical_load** - the bm25s side of a 100k-product index over the sample world's product
  texts (``pipeline.world.sample.generate_catalog``; no encoding, the vectors are
  synthetic): build + save time and bytes on disk, then in fresh processes (median of
  ``--load-runs``, after one run with an empty checksum-stamp cache, reported apart):
  ``Retriever.load`` + one dense search, which must not read the lexical side or import
  bm25s; then the lexical side's first use (``import bm25s``, checksum check, read) and
  the first lexical query. This is what a cold ``pipeline search --retrieval
  lexical|hybrid`` pays on top of a dense one, and what a dense one must not pay.

Vectors are synthetic (``index_recall.clustered``: unit vectors around 1,000 topic centres).

    nice -n 5 .venv/bin/python benchmarks/filter_recall.py [--products 100000] [--dim 384]
        [--queries 200] [--load-runs 5] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_recall import clustered, log, write_atomic  # noqa: E402

K = 10
WARMUP_QUERIES = 20
CENTRES = 1000  # index_recall.clustered's topic centres
#: The filtered categories and the catalog share each keeps; the rest of the catalog is
#: spread over :data:`OTHER_CATEGORIES` more, so the column looks like a shop's.
SELECTIVITIES = {"A": 0.5, "B": 0.05, "C": 0.005}
OTHER_CATEGORIES = 17
LEXICAL_QUERY = "grey fabric sofa"


# ----------------------------------------------------------------------------- data
def categories(n: int, layout: str, topics: np.ndarray, seed: int = 5) -> np.ndarray:
    """The ``category`` column: ``random`` deals the categories out in the shares of
    :data:`SELECTIVITIES` (the rest evenly over the others), independent of the vectors;
    ``topical`` gives each topic centre one category, centres dealt out in the same shares."""
    names = [*SELECTIVITIES, *[f"other{i:02d}" for i in range(OTHER_CATEGORIES)]]
    rest = (1 - sum(SELECTIVITIES.values())) / OTHER_CATEGORIES
    shares = np.asarray([*SELECTIVITIES.values(), *[rest] * OTHER_CATEGORIES])

    def dealt(total: int) -> np.ndarray:
        counts = np.floor(shares * total + 1e-9).astype(int)
        counts[len(SELECTIVITIES):][: total - counts.sum()] += 1  # the remainder goes to the others
        return np.repeat(names, counts)

    if layout == "random":
        column = dealt(n)
        np.random.default_rng(seed).shuffle(column)
        return column
    return dealt(CENTRES)[topics]


def topical_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``clustered`` vectors and the topic centre each was drawn around (same draws)."""
    topics = np.random.default_rng(seed).integers(CENTRES, size=n)
    return clustered(n, dim, seed), topics


# ----------------------------------------------------------------------------- filter
class QueryVectors:
    """Stands in for the query encoder: query text ``"i"`` is the i-th vector (only the
    searcher's catalog and filter plumbing is used here, never text)."""

    model_id = ""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors, self.dim = vectors, int(vectors.shape[1])

    def encode_queries(self, queries: list[str], batch_size: int = 64) -> np.ndarray:
        return self.vectors[[int(q) for q in queries]]


def latency(search: Any, queries: np.ndarray, warmup: np.ndarray) -> dict[str, float]:
    """Single-query latency percentiles (ms) after a warm-up."""
    for q in warmup:
        search(q[None, :])
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3),
            "mean": round(float(np.mean(times)), 3), "n": len(times)}


def recall(got: list[list[str]], ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray,
           members: np.ndarray) -> dict[str, Any]:
    """Recall@K of ``got`` against exact search over ``members`` (row numbers)."""
    exact = members[np.argsort(-(queries @ vecs[members].T), axis=1)[:, :K]]
    per_query = np.asarray([len(set(g) & set(ids[e])) / len(e) for g, e in zip(got, exact)])
    return {"recall@10": round(float(per_query.mean()), 4), "min_query_recall": round(float(per_query.min()), 2),
            "short_rows": int(sum(len(g) < min(K, len(members)) for g in got))}


def bench_filter(index_dir: Path, label: str, vecs: np.ndarray, ids: np.ndarray, topics: np.ndarray,
                 queries: np.ndarray, warmup: np.ndarray) -> dict[str, Any]:
    """Recall and latency of each filter on one index, per layout, and of the unfiltered index."""
    from pipeline.core.runtime import import_faiss
    from pipeline.search import TwoStageSearcher
    from retrieval.index import Retriever

    import_faiss().omp_set_num_threads(1)
    retriever = Retriever.load(index_dir, load_encoder=False).use_encoder(QueryVectors(queries))
    every = np.arange(len(ids))
    got, _ = retriever.search_vectors(queries, K)
    out: dict[str, Any] = {"unfiltered": {**recall(got, ids, vecs, queries, every),
                                          "latency_ms": latency(lambda q: retriever.search_vectors(q, K),
                                                                queries, warmup)}}
    for layout in ("random", "topical"):
        column = categories(len(ids), layout, topics)
        searcher = TwoStageSearcher(retriever, None, pd.DataFrame({"product_id": ids, "title": ids,
                                                                   "category": column}))
        rows = {}
        for name, share in SELECTIVITIES.items():
            members = np.flatnonzero(column == name)
            start = time.perf_counter()
            where = searcher.selection([f"category={name}"])
            selection_ms = (time.perf_counter() - start) * 1000
            got, _ = retriever.search_vectors(queries, K, where=where)
            leaked = sum(len(set(g) - set(ids[members])) for g in got)
            if leaked:
                raise SystemExit(f"error: {label} {layout} category={name}: {leaked} non-matching products returned")
            rows[f"{share:.1%}"] = {
                "category": name, "products": int(len(members)), "share": round(len(members) / len(ids), 4),
                "strategy": where.strategy, "selection_ms": round(selection_ms, 1),
                **recall(got, ids, vecs, queries, members),
                "latency_ms": latency(lambda q: retriever.search_vectors(q, K, where=where), queries, warmup)}
            log(f"{label} {layout} {share:.1%}: {json.dumps(rows[f'{share:.1%}'])}")
        out[layout] = rows
    return out


# ----------------------------------------------------------------------------- lexical load
CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
from pipeline.core.runtime import import_faiss
import_faiss(with_torch=False)  # as the ONNX cold search path does: no torch in the process
from retrieval.index import Retriever
r = Retriever.load(sys.argv[1], load_encoder=False)
loaded = time.perf_counter()
r.search_vectors(np.load(sys.argv[2]), 10)
dense = time.perf_counter()
out = {"load_s": loaded - start, "dense_search_ms": (dense - loaded) * 1000,
       "bm25s_imported_by_dense": "bm25s" in sys.modules}
if sys.argv[3] == "lexical":
    t0 = time.perf_counter()
    import bm25s  # noqa: F401
    t1 = time.perf_counter()
    r.lexical
    t2 = time.perf_counter()
    hits = r.search([sys.argv[4]], k=10, mode="lexical")[0][0]
    t3 = time.perf_counter()
    out.update(import_bm25s_s=t1 - t0, lexical_read_s=t2 - t1, first_lexical_query_ms=(t3 - t2) * 1000,
               lexical_hits=len(hits))
print(json.dumps(out))
"""


def child(index_dir: Path, query: Path, mode: str, stamps: str) -> dict[str, Any]:
    """One fresh interpreter's timings (see :data:`CHILD`)."""
    env = {**os.environ, "SHOPRANK_CACHE_DIR": stamps, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(index_dir), str(query), mode, LEXICAL_QUERY],
                          capture_output=True, text=True, env=env, cwd=HERE.parent)
    if proc.returncode:
        raise SystemExit(f"error: load child failed: {proc.stderr[-500:]}")
    return json.loads(proc.stdout)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each timing over the runs."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if isinstance(values[0], float):
            out[key] = round(statistics.median(values), 4)
        else:  # flags and counts: the same in every run unless something is wrong, so show any difference
            out[key] = values[0] if len(set(values)) == 1 else values
    return {**out, "runs": len(runs)}


def bench_lexical_load(index_dir: Path, build: dict[str, Any], query: Path, runs: int) -> dict[str, Any]:
    """bm25s side of a flat index: what building it cost, its bytes, and cold load timings."""
    lexical_dir = index_dir / build["lexical"]["dir"]
    out: dict[str, Any] = {
        "products": build["lexical"]["count"], "texts": "pipeline.world.sample.generate_catalog product_text",
        "build_and_save_s": build["lexical"]["build_seconds"],
        "bytes": {f.name: f.stat().st_size for f in sorted(lexical_dir.iterdir())},
        "index_faiss_bytes": (index_dir / "index.faiss").stat().st_size,
    }
    with tempfile.TemporaryDirectory() as stamps:
        for mode in ("dense", "lexical"):
            first = child(index_dir, query, mode, stamps)  # empty stamp cache: files are hashed
            out[mode] = {"first_run": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in first.items()},
                         **summarise([child(index_dir, query, mode, stamps) for _ in range(runs)])}
            log(f"lexical_load {mode}: {json.dumps(out[mode])}")
    return out


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--load-runs", type=int, default=5)
    ap.add_argument("--work-dir", default=None, help="scratch directory (default: system temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (atomically)")
    args = ap.parse_args()

    from pipeline.data import product_text
    from pipeline.world.sample import generate_catalog
    import retrieval.index as index_module
    from retrieval.index import build_from_vectors

    started = time.perf_counter()
    n = args.products
    log(f"{n:,} products: vectors and sample-world texts")
    vecs, topics = topical_vectors(n, args.dim, seed=0)
    queries, warmup = clustered(args.queries, args.dim, seed=1), clustered(WARMUP_QUERIES, args.dim, seed=2)
    catalog, _ = generate_catalog(n, np.random.default_rng(7))
    ids, texts = catalog["product_id"].astype(str).to_numpy(), product_text(catalog)
    report: dict[str, Any] = {
        "products": n, "dim": args.dim, "k": K, "queries": args.queries, "search_threads": 1,
        "vectors": f"synthetic clustered ({CENTRES:,} topic centres)",
        "exact_scan_budget": index_module.EXACT_SCAN_BUDGET, "max_widening": index_module.MAX_WIDENING,
        "filter": {}, "build_s": {},
    }
    with tempfile.TemporaryDirectory(prefix="filter_recall_", dir=args.work_dir) as tmp_name:
        tmp = Path(tmp_name)
        np.save(tmp / "query.npy", queries[:1])
        for index_type in ("flat", "hnsw"):
            log(f"building {index_type}")
            start = time.perf_counter()
            build = build_from_vectors(vecs, ids.tolist(), tmp / index_type, index_type=index_type,
                                       lexical=texts if index_type == "flat" else None)
            report["build_s"][index_type] = round(time.perf_counter() - start, 1)
            report["filter"][index_type] = bench_filter(tmp / index_type, index_type, vecs, ids, topics, queries,
                                                        warmup)
            if index_type == "flat":
                report["lexical_load"] = bench_lexical_load(tmp / "flat", build, tmp / "query.npy", args.load_runs)
        budget, index_module.EXACT_SCAN_BUDGET = index_module.EXACT_SCAN_BUDGET, 0
        report["filter"]["hnsw_own_search"] = bench_filter(tmp / "hnsw", "hnsw_own_search", vecs, ids, topics,
                                                           queries, warmup)
        index_module.EXACT_SCAN_BUDGET = budget
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        write_atomic(args.out, text + "\n")


if __name__ == "__main__":
    main()
