"""Reranker cascade: the full reranker, its distilled student, and cascades between them. Prints JSON.

For each variant, on the demo build's test queries at ``--candidates`` (100) retrieved
candidates per query: warm ``TwoStageSearcher.search`` latency p50/p99 (each query searched
``--repeats`` times after one warm-up pass) and nDCG@10 on the qrels, as served (each model
blended with the retrieval score by its own fitted weight) and in the models' own order
(``ndcg@10_unblended``, blend weight 0: on a build where the fitted weight is 1 every served
order is the retrieval order, and only this column tells the models apart). Variants:

* ``full`` — the trained reranker scores every candidate (today's two-stage search);
* ``student`` — the distilled student alone (``--rerank-cascade small:N``);
* ``cascade_m<M>`` — the student scores all candidates, the full reranker rescores its
  top M (``--rerank-cascade small:N,full:M``), for each M in ``--cascade-m`` (10, 20, 30).

Every variant runs on the same backend ("auto": ONNX Runtime when both rerankers are
exported) and index; the order of the variants is the order above, one after another.

Inputs: ``--workdir`` holding a demo build (``make demo``). The student is read from
``<workdir>/models/reranker-small``; when it is missing it is distilled first
(``pipeline distill-reranker --layers 2`` on the demo index, ``--student-epochs``), which
the JSON reports, as it does the student's layers and agreement with its teacher.

    python benchmarks/cascade.py --workdir . [--candidates 100] [--cascade-m 10,20,30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.metrics import aggregate  # noqa: E402

K = 10


def pct(ms: list[float]) -> dict[str, float]:
    """p50 / p99 / mean of a list of milliseconds."""
    arr = np.asarray(ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "mean_ms": round(float(arr.mean()), 1), "n": int(arr.size)}


def ensure_student(root: Path, epochs: int) -> dict[str, Any]:
    """The demo's student (distilled here when missing); returns what the JSON says about it."""
    from pipeline.blend import distill_reranker_on_index
    from pipeline.data import load_dataset

    student = root / "models" / "reranker-small"
    distilled = not (student / "manifest.json").is_file()
    if distilled:
        distill_reranker_on_index(load_dataset(root / "data" / "sample"), root / "models" / "reranker", student,
                                  index_dir=root / "indexes" / "default", layers=2, epochs=epochs, progress=False)
    manifest = json.loads((student / "manifest.json").read_text())
    report = manifest.get("report") or {}
    return {"path": str(student), "distilled_now": distilled, "layers": report.get("teacher_layers_used"),
            "agreement_with_teacher": report.get("agreement"), "teacher": manifest.get("teacher"),
            "retrieval_weight": (manifest.get("fusion") or {}).get("retrieval_weight")}


def ndcg(searcher: Any, queries: list[str], qrels: dict[str, dict[str, int]], candidates: int) -> float:
    """Mean nDCG@10 of the searcher's top 10 over ``queries``."""
    run = {q: {h.product_id: h.score for h in searcher.search(q, k=K, candidates=candidates)} for q in queries}
    return round(float(aggregate(run, {q: qrels.get(q, {}) for q in queries}, ["nDCG@10"])["nDCG@10"]), 4)


def measure(searcher: Any, queries: list[str], qrels: dict[str, dict[str, int]], candidates: int,
            repeats: int) -> dict[str, Any]:
    """Warm latency over ``repeats`` passes (after one warm-up pass) and nDCG@10 of one variant."""
    from pipeline.search import TwoStageSearcher

    served = ndcg(searcher, queries, qrels, candidates)  # also the warm-up pass
    unblended = TwoStageSearcher(searcher.retriever, searcher.reranker, searcher.catalog, retrieval_weight=0.0,
                                 catalog_verified=True, student=searcher.student, cascade=searcher.cascade)
    times = []
    for _ in range(repeats):
        for query in queries:
            started = time.perf_counter()
            searcher.search(query, k=K, candidates=candidates)
            times.append((time.perf_counter() - started) * 1000)
    return {**pct(times), "ndcg@10": served, "ndcg@10_unblended": ndcg(unblended, queries, qrels, candidates),
            "models": searcher.manifest_ids()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--cascade-m", default="10,20,30")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--student-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = ap.parse_args()
    root = args.workdir.resolve()
    if not (root / "models" / "reranker" / "manifest.json").is_file():
        sys.exit(f"error: {root} holds no demo build (models/reranker); run `make demo` first")
    from pipeline.data import load_dataset, qrels_dict
    from pipeline.search import TwoStageSearcher

    student = ensure_student(root, args.student_epochs)
    dataset = load_dataset(root / "data" / "sample")
    qrels = qrels_dict(dataset.qrels)
    queries = [q for q in dataset.split_queries("test") if q in qrels]
    index, full, small = root / "indexes" / "default", root / "models" / "reranker", Path(student["path"])
    n = args.candidates
    variants: dict[str, dict[str, Any]] = {
        "full": {"reranker": full},
        "student": {"reranker": None, "student": small, "cascade": f"small:{n}"},
        **{f"cascade_m{m}": {"reranker": full, "student": small, "cascade": f"small:{n},full:{m}"}
           for m in (int(x) for x in args.cascade_m.split(","))},
    }
    results = {}
    for name, kwargs in variants.items():
        searcher = TwoStageSearcher.load(index, kwargs.pop("reranker"), backend=args.backend, warn=False,
                                         reranker_required=False, **kwargs)
        results[name] = measure(searcher, queries, qrels, n, args.repeats)
        print(f"{name}: p50 {results[name]['p50_ms']} ms, nDCG@10 {results[name]['ndcg@10']}", file=sys.stderr)
    out = {"workdir": str(root), "test_queries": len(queries), "candidates": n, "k": K, "repeats": args.repeats,
           "catalog_products": len(dataset.catalog), "student": student, "variants": results}
    text = json.dumps(out, indent=2)
    if args.out is not None:
        from pipeline.core.artifacts import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
