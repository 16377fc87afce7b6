"""`pipeline demo`: the whole product on the built-in sample shop, in one command.

Steps (each a real library call, timed): generate the sample world -> fine-tune the
retriever -> export it to ONNX and build the FAISS index with the int8 graph -> train the
multi-task reranker on retriever candidates and fit its first-stage blend on the valid split ->
evaluate every system -> example searches on
vocabulary-mismatch queries -> score a sample query log into Parquet -> export the reranker to
ONNX (fast, torch-free search).

Everything is written under ``workdir`` at the *default relative paths*
(``data/sample``, ``models/retriever``, ``models/reranker``, ``indexes/default``,
``runs/``), so that afterwards a plain ``pipeline search "..."`` run in ``workdir`` uses
exactly what the demo built. ``quick=True`` shrinks the world and the training budgets so
the run fits the test suite (< 3 min on 2 cores); the default budget targets < 15 min.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.config import (DEFAULT_DATA_DIR, DEFAULT_INDEX_DIR, DEFAULT_RERANKER_DIR, DEFAULT_RETRIEVER_DIR,
                             DEFAULT_RUNS_DIR, DEFAULT_SEED)
from pipeline.core.artifacts import ensure_writable_dir

PREFERRED_EXAMPLES = ("comfy couch",)
MAX_EXAMPLE_QUERIES = 25


@dataclass(frozen=True)
class DemoBudget:
    """World size and training budgets (the knobs that decide the demo's run time)."""

    n_products: int
    n_queries: int
    retriever_epochs: int
    retriever_max_rows: int | None
    reranker_epochs: int
    reranker_max_queries: int | None
    reranker_max_shown: int | None
    reranker_negatives: int
    candidates: int
    log_rows: int
    eval_engagement_pairs: int
    reranker_objective: str = "both"


# Budgets sized on 2 CPU cores: QUICK for the test suite (< 3 min), FULL for `make demo`
# (< 15 min). Training dominates: the retriever sees ~3-6 rows/s (hard negatives included) and the
# reranker ~15-30 pairs/s on 2 cores; a fresh `make demo` with 2,000 retriever rows took 12 min for
# the retriever alone on a shared machine, hence 1,000.
QUICK = DemoBudget(n_products=300, n_queries=60, retriever_epochs=1, retriever_max_rows=96,
                   reranker_epochs=1, reranker_max_queries=16, reranker_max_shown=4, reranker_negatives=2,
                   candidates=20, log_rows=200, eval_engagement_pairs=300)
FULL = DemoBudget(n_products=2000, n_queries=500, retriever_epochs=1, retriever_max_rows=1000,
                  reranker_epochs=2, reranker_max_queries=None, reranker_max_shown=8, reranker_negatives=3,
                  candidates=50, log_rows=5000, eval_engagement_pairs=2000)


def _say(message: str) -> None:
    sys.stderr.write(f"[demo] {message}\n")
    sys.stderr.flush()


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    _say(f"{step} ...")
    started = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - started, 1)
    _say(f"{step} done in {timings[step]:.1f} s")


def _examples(searcher: Any, dataset: Any, split: str, n: int, candidates: int) -> tuple[list[dict], dict]:
    """Example searches on test queries that share no content word with their relevant products.

    Shows the first mismatch queries whose top result is relevant (preferring the README's
    "comfy couch" when the sample has it), and states how often that happens overall, so
    the showcase is honest about the hit rate.
    """
    from pipeline.data import qrels_dict, vocabulary_mismatch_queries

    queries = dataset.queries[dataset.queries["split"] == split]
    mismatch = sorted(vocabulary_mismatch_queries(queries, dataset.qrels, dataset.catalog))
    grades = qrels_dict(dataset.qrels)
    ordered = [q for q in PREFERRED_EXAMPLES if q in mismatch] + [q for q in mismatch if q not in PREFERRED_EXAMPLES]
    ordered = ordered[:MAX_EXAMPLE_QUERIES]  # bounded time; the summary says how many were tried
    shown, top1_relevant = [], 0
    for query in ordered:
        hits = searcher.search(query, k=5, candidates=candidates)
        rows = [{**h.as_dict(), "relevance": grades.get(query, {}).get(h.product_id, 0)} for h in hits]
        good = bool(rows) and rows[0]["relevance"] >= 2
        top1_relevant += good
        if good and len(shown) < n:
            best = max(grades.get(query, {}).items(), key=lambda kv: kv[1], default=(None, 0))[0]
            shown.append({"query": query, "hits": rows,
                          "why": f"no content word shared with e.g. {searcher.title(best)!r}" if best else ""})
    summary = {"mismatch_queries": len(ordered), "top1_relevant": top1_relevant}
    return shown, summary


def _write_query_log(dataset: Any, path: Path, rows: int, seed: int) -> None:
    """A sample query log: test-split queries drawn with replacement (repeats, as in real logs)."""
    import numpy as np
    import pandas as pd

    test = dataset.queries[dataset.queries["split"] == "test"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    # Zipf-like popularity: a few head queries repeat a lot, most appear rarely.
    weights = 1.0 / np.arange(1, len(test) + 1)
    pick = rng.choice(len(test), size=rows, p=weights / weights.sum())
    log = pd.DataFrame({"query_id": [f"log{i:06d}" for i in range(rows)],
                        "query": test.loc[pick, "query"].to_numpy()})
    log.to_parquet(path, index=False)


def run_demo(workdir: str | os.PathLike[str] = ".", *, quick: bool = False, seed: int = DEFAULT_SEED,
             budget: DemoBudget | None = None, progress: bool = False) -> dict[str, Any]:
    """Run every step under ``workdir`` and return the report (evaluation, examples, timings)."""
    from pipeline.scoring import score_logs
    from pipeline.data import load_dataset
    from pipeline.evaluate import evaluate
    from pipeline.world.sample import write_sample
    from pipeline.search import TwoStageSearcher
    from rerank.loading import load_reranker
    from pipeline.export import export_onnx
    from pipeline.blend import train_reranker_on_index
    from retrieval.encoders import load_encoder
    from retrieval.index import Retriever, build_index
    from retrieval.train import train_retriever

    budget = budget or (QUICK if quick else FULL)
    root = ensure_writable_dir(workdir, "demo directory")
    data_dir, retriever_dir = root / DEFAULT_DATA_DIR, root / DEFAULT_RETRIEVER_DIR
    index_dir, reranker_dir, runs = root / DEFAULT_INDEX_DIR, root / DEFAULT_RERANKER_DIR, root / DEFAULT_RUNS_DIR
    runs.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    with _timed(timings, "generate sample world"):
        write_sample(data_dir, n_products=budget.n_products, n_queries=budget.n_queries, seed=seed)
        dataset = load_dataset(data_dir)
    with _timed(timings, "train retriever"):
        retriever_report = train_retriever(dataset, retriever_dir, epochs=budget.retriever_epochs,
                                           max_rows=budget.retriever_max_rows, seed=seed,
                                           show_progress=progress)
    with _timed(timings, "export retriever (onnx)"):
        export_onnx(retriever_dir, None)
    with _timed(timings, "build index"):
        # Encoded by the int8 ONNX graph, as `pipeline build-index` does by default: faster than
        # torch fp32 at the same recall (benchmarks/encoding_quality.py).
        encoder = load_encoder(retriever_dir, "torch")
        build_index(dataset.catalog, load_encoder(retriever_dir, "onnx", "int8", model_id=encoder.model_id), index_dir,
                    index_type="flat", show_progress=progress, catalog_path=dataset.report["files"]["catalog"])
        retriever = Retriever.load(index_dir, encoder=encoder)
    with _timed(timings, "train reranker"):
        # trained on the retriever's candidates; the blend with the retrieval score is then
        # fitted on the valid split and saved in the reranker's manifest
        reranker_report = train_reranker_on_index(
            dataset, reranker_dir, retriever=retriever, candidates=budget.candidates, seed=seed,
            epochs=budget.reranker_epochs, max_queries=budget.reranker_max_queries,
            max_shown_per_query=budget.reranker_max_shown, negatives=budget.reranker_negatives,
            objective=budget.reranker_objective, progress=progress)
    with _timed(timings, "evaluate"):
        evaluation = evaluate(dataset=dataset, split="test", index_dir=index_dir, reranker=reranker_dir,
                              run_dir=runs / "eval", candidates=budget.candidates, seed=seed,
                              max_engagement_pairs=budget.eval_engagement_pairs)
    searcher = TwoStageSearcher(retriever, load_reranker(reranker_dir, "torch", "fp32"), dataset.catalog)
    with _timed(timings, "example searches"):
        examples, example_summary = _examples(searcher, dataset, "test", 3, budget.candidates)
    with _timed(timings, "score query log"):
        log_path = data_dir / "query_log.parquet"
        _write_query_log(dataset, log_path, budget.log_rows, seed)
        scored = score_logs(log_path, runs / "scored.parquet", searcher=searcher, k=10,
                            candidates=budget.candidates, batch_size=256, show_progress=progress)
    with _timed(timings, "export reranker (onnx)"):
        # so that `pipeline search` afterwards runs on ONNX Runtime, which starts far faster than torch
        export_onnx(None, reranker_dir)
    try_query = examples[0]["query"] if examples else dataset.split_queries("test")[0]
    return {
        "workdir": str(root), "quick": quick, "budget": asdict(budget), "seed": seed,
        "paths": {"data": str(data_dir), "retriever": str(retriever_dir), "index": str(index_dir),
                  "reranker": str(reranker_dir), "runs": str(runs)},
        "retriever": {k: retriever_report.get(k) for k in ("model_id", "train_rows", "best_epoch", "train_seconds")},
        "reranker": {k: v for k, v in reranker_report.items() if isinstance(v, (int, float, str))},
        "fusion": reranker_report.get("fusion"),
        "evaluation": evaluation, "examples": examples, "example_summary": example_summary,
        "scored_log": scored, "timings": timings, "seconds": round(time.perf_counter() - started, 1),
        "try": try_query,
    }


__all__: list[str] = ["run_demo", "DemoBudget", "QUICK", "FULL"]
