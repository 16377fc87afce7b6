"""Where one warm two-stage search spends its time, stage by stage. Prints JSON.

Loads the demo build the way `pipeline search` does (``TwoStageSearcher.load`` of
``indexes/default`` with ``models/reranker``, the catalog the index manifest records, backend
"auto" = ONNX Runtime int8 when both models are exported) and searches every test query
(with qrels) at each ``--candidates`` (50, 100), ``--repeats`` passes after one warm-up pass.
Each stage is timed with ``time.perf_counter`` by wrapping the object that does it:

* ``query_tokenize`` / ``query_onnx_run`` — the bi-encoder's tokenizer and ORT session;
* ``faiss_search`` — ``index.search`` on the retriever's FAISS index;
* ``product_text`` — ``CatalogText.text`` for each candidate (the reranker's input text);
* ``rerank_tokenize`` / ``rerank_onnx_run`` — the cross-encoder's tokenizer and ORT session;
* ``fusion_blend`` — ``rerank.fusion.fuse`` (task probabilities → one score) and ``blend``
  (with the retrieval score);
* ``other`` — the rest of ``search``: Python around the stages (batch sorting, id/score
  lists, the final sort, building ``SearchHit``s).

The query-vector LRU cache is switched off (``encoder.cache = None``), so every search pays
for query encoding as a query not seen before does; a cache hit skips both query stages.
Reported per candidate count: mean ms per query and share of the total for each stage, and
the total's p50/p99 (with the wrappers in place; their own cost is a few microseconds per call).

    python benchmarks/search_profile.py --workdir . [--candidates 50,100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K = 10


class Clock:
    """Accumulated seconds per stage (reset per query)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[stage] += time.perf_counter() - started
        return timed


class Timed:
    """A stand-in for ``target`` whose call / chosen methods are timed under ``stage``;
    every other attribute is the target's."""

    def __init__(self, target: Any, clock: Clock, stage: str, methods: tuple[str, ...] = ()) -> None:
        self._target, self._call = target, clock.wrap(stage, target) if callable(target) else None
        for name in methods:
            setattr(self, name, clock.wrap(stage, getattr(target, name)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def instrument(searcher: Any, clock: Clock) -> None:
    """Put the stage timers in place on a loaded searcher (ONNX backend)."""
    import rerank.fusion

    encoder, reranker, retriever = searcher.retriever.encoder, searcher.reranker, searcher.retriever
    if getattr(encoder, "session", None) is None or getattr(reranker, "session", None) is None:
        sys.exit("error: this profile needs both models on ONNX Runtime (pipeline export-onnx)")
    encoder.cache = None  # every query pays for encoding (module docstring)
    encoder.tokenizer = Timed(encoder.tokenizer, clock, "query_tokenize")
    encoder.session = Timed(encoder.session, clock, "query_onnx_run", ("run",))
    retriever.index = Timed(retriever.index, clock, "faiss_search", ("search",))
    reranker.session = Timed(reranker.session, clock, "rerank_onnx_run", ("run",))
    reranker._tokenizers = {n: Timed(t, clock, "rerank_tokenize") for n, t in reranker._tokenizers.items()}
    searcher.catalog.text = clock.wrap("product_text", searcher.catalog.text)
    # _rerank imports these from the module at each call, so patching the module is enough.
    rerank.fusion.fuse = clock.wrap("fusion_blend", rerank.fusion.fuse)
    rerank.fusion.blend = clock.wrap("fusion_blend", rerank.fusion.blend)


STAGES = ("query_tokenize", "query_onnx_run", "faiss_search", "product_text", "rerank_tokenize", "rerank_onnx_run",
          "fusion_blend", "other")


def profile(searcher: Any, clock: Clock, queries: list[str], candidates: int, repeats: int) -> dict[str, Any]:
    for query in queries:  # warm-up pass
        searcher.search(query, k=K, candidates=candidates)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    totals = []
    for _ in range(repeats):
        for query in queries:
            clock.spent.clear()
            started = time.perf_counter()
            searcher.search(query, k=K, candidates=candidates)
            total = time.perf_counter() - started
            totals.append(total * 1000)
            for stage in STAGES[:-1]:
                per_stage[stage].append(clock.spent.get(stage, 0.0) * 1000)
            per_stage["other"].append((total - sum(clock.spent.values())) * 1000)
    mean_total = float(np.mean(totals))
    stages = {s: {"mean_ms": round(float(np.mean(v)), 2), "share": round(float(np.mean(v)) / mean_total, 3)}
              for s, v in per_stage.items()}
    arr = np.asarray(totals)
    return {"total": {"mean_ms": round(mean_total, 1), "p50_ms": round(float(np.percentile(arr, 50)), 1),
                      "p99_ms": round(float(np.percentile(arr, 99)), 1), "n": int(arr.size)},
            "stages": stages,
            "query_encoding_ms": round(stages["query_tokenize"]["mean_ms"] + stages["query_onnx_run"]["mean_ms"], 2),
            "rerank_ms": round(stages["rerank_tokenize"]["mean_ms"] + stages["rerank_onnx_run"]["mean_ms"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--candidates", default="50,100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    root = args.workdir.resolve()
    if not (root / "models" / "reranker" / "manifest.json").is_file():
        sys.exit(f"error: {root} holds no demo build (models/reranker); run `make demo` first")
    from pipeline.data import load_dataset, qrels_dict
    from pipeline.search import TwoStageSearcher

    dataset = load_dataset(root / "data" / "sample")
    qrels = qrels_dict(dataset.qrels)
    queries = [q for q in dataset.split_queries("test") if q in qrels]
    searcher = TwoStageSearcher.load(root / "indexes" / "default", root / "models" / "reranker",
                                     backend=args.backend, warn=False)
    clock = Clock()
    instrument(searcher, clock)
    results = {}
    for n in (int(x) for x in args.candidates.split(",")):
        results[str(n)] = profile(searcher, clock, queries, n, args.repeats)
        top = sorted(results[str(n)]["stages"].items(), key=lambda kv: -kv[1]["mean_ms"])[:3]
        print(f"{n} candidates: {results[str(n)]['total']['mean_ms']} ms/query; "
              + ", ".join(f"{s} {v['mean_ms']} ms" for s, v in top), file=sys.stderr)
    out = {"workdir": str(root), "test_queries": len(queries), "k": K, "repeats": args.repeats,
           "backend": searcher.backend, "reranker_precision": getattr(searcher.reranker, "precision", None),
           "query_cache": "off", "candidates": results}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
