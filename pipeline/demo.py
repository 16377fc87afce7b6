"""`pipeline demo`: the whole product on the built-in sample shop, in one command.

Steps (each a real library call, timed): generate the sample world -> the training sequence
`pipeline fit` runs (:func:`pipeline.fit.fit_models`: fine-tune the retriever, export it to
ONNX, build the FAISS index with the int8 graph, train the multi-task reranker on retriever
candidates and fit its first-stage blend on the valid split, evaluate every system, export
the reranker to ONNX) -> example searches on vocabulary-mismatch queries -> score a sample
query log into Parquet.

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

from pipeline.config import DEFAULT_SEED
from pipeline.core.artifacts import ensure_writable_dir
from pipeline.fit import FULL as FIT_FULL
from pipeline.fit import QUICK as FIT_QUICK
from pipeline.fit import FitBudget, training_budget

PREFERRED_EXAMPLES = ("comfy couch",)
MAX_EXAMPLE_QUERIES = 25


@dataclass(frozen=True, kw_only=True)
class DemoBudget(FitBudget):
    """The sample world's size and the query log's length, on top of the training budgets."""

    n_products: int
    n_queries: int
    log_rows: int


# QUICK for the test suite (< 3 min on 2 cores), FULL for `make demo` (< 15 min); a fresh
# `make demo` with 2,000 retriever rows took 12 min for the retriever alone on a shared
# machine, hence FULL's 1,000.
QUICK = DemoBudget(n_products=300, n_queries=60, log_rows=200, **training_budget(FIT_QUICK))
FULL = DemoBudget(n_products=2000, n_queries=500, log_rows=5000, **training_budget(FIT_FULL))


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
    """Run every step under ``workdir`` and return the report (evaluation, examples, timings).

    The training steps are :func:`pipeline.fit.fit_models`, always redone here (no resume):
    the demo regenerates its world and shows a whole run.
    """
    from pipeline.data import load_dataset
    from pipeline.fit import fit_models, run_paths
    from pipeline.fit_state import FitSteps
    from pipeline.scoring import score_logs
    from pipeline.search import TwoStageSearcher
    from pipeline.world.sample import write_sample
    from rerank.loading import load_reranker

    budget = budget or (QUICK if quick else FULL)
    root = ensure_writable_dir(workdir, "demo directory")
    paths = run_paths(root)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    with _timed(timings, "generate sample world"):
        write_sample(paths["data"], n_products=budget.n_products, n_queries=budget.n_queries, seed=seed)
        dataset = load_dataset(paths["data"])
    steps = FitSteps(root, resume=False, say=_say)
    fit, fitted = fit_models(root, dataset, budget, steps=steps, seed=seed, progress=progress)
    timings.update(steps.timings())
    searcher = TwoStageSearcher(fitted.retriever(), load_reranker(paths["reranker"], "torch", "fp32"), dataset.catalog)
    with _timed(timings, "example searches"):
        examples, example_summary = _examples(searcher, dataset, "test", 3, budget.candidates)
    with _timed(timings, "score query log"):
        log_path = paths["data"] / "query_log.parquet"
        _write_query_log(dataset, log_path, budget.log_rows, seed)
        scored = score_logs(log_path, paths["runs"] / "scored.parquet", searcher=searcher, k=10,
                            candidates=budget.candidates, batch_size=256, show_progress=progress)
    try_query = examples[0]["query"] if examples else dataset.split_queries("test")[0]
    return {
        "workdir": str(root), "quick": quick, "budget": asdict(budget), "seed": seed, "paths": fit["paths"],
        "retriever": fit["retriever"], "reranker": fit["reranker"], "fusion": fit["fusion"],
        "evaluation": fit["evaluation"], "evaluation_unseen": fit.get("evaluation_unseen"),
        "examples": examples, "example_summary": example_summary,
        "scored_log": scored, "timings": timings, "seconds": round(time.perf_counter() - started, 1),
        "try": try_query,
    }


__all__: list[str] = ["run_demo", "DemoBudget", "QUICK", "FULL"]
