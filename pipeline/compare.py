"""`pipeline compare-rerankers`: one command that trains and evaluates every reranker variant
on the sample world's test split, reranking the fine-tuned retriever's top-100.

Rows: retrieval only, single-task click, single-task purchase, shared-bottom, MMoE with
independent heads, MMoE with funnel heads, MMoE + domain adaptation (and the int8 MMoE on
ONNX Runtime and on torch dynamic quantisation, to measure the quantisation cost), and MMoE
funnel trained with the listwise objective and with both objectives (the rows without an
objective in their name are pointwise). Columns: NDCG@10 graded by ground-truth relevance, and per
task (click, add_to_cart, purchase) NDCG@10 graded by that task's engagement counts and AUC
(see :mod:`rerank.evaluation`).

Why it lives in pipeline/: it needs both stages (retriever candidates feed the reranker),
and stages never import each other. Every variant is trained on the *same* reduced data
(same queries, same sampled negatives, same seed), so differences come from the model.

CPU budget: the full sample world is far too big to train seven cross-encoders on 2 cores,
so the defaults subsample queries and cap skipped rows per query; the flags scale it up.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import atomic_write_text
from pipeline.config import DEFAULT_DATA_DIR
from pipeline.data import Dataset, load_dataset, qrels_dict
from pipeline.core.errors import DataError
from pipeline.core.runtime import DEFAULT_SEED

VARIANTS: dict[str, dict[str, Any]] = {
    "single_click": {"architecture": "single", "heads": "independent", "tasks": ("click",)},
    "single_purchase": {"architecture": "single", "heads": "independent", "tasks": ("purchase",)},
    "shared_bottom": {"architecture": "shared_bottom", "heads": "funnel"},
    "mmoe_independent": {"architecture": "mmoe", "heads": "independent"},
    "mmoe_funnel": {"architecture": "mmoe", "heads": "funnel"},
    "mmoe_funnel_domain": {"architecture": "mmoe", "heads": "funnel", "domain": True},
    "mmoe_funnel_listwise": {"architecture": "mmoe", "heads": "funnel", "objective": "listwise"},
    "mmoe_funnel_both": {"architecture": "mmoe", "heads": "funnel", "objective": "both"},
}
# Run order (table order is VARIANTS'): the rows the acceptance checks need come first, and
# results.json is rewritten after every variant, so a run cut short still answers them.
RUN_ORDER = ("mmoe_funnel", "single_purchase", "single_click", "shared_bottom", "mmoe_independent",
             "mmoe_funnel_domain", "mmoe_funnel_listwise", "mmoe_funnel_both")
COLUMNS = ["system", "ndcg@10", "click_ndcg@10", "click_auc", "add_to_cart_ndcg@10", "add_to_cart_auc",
           "purchase_ndcg@10", "purchase_auc", "train_seconds"]


def _reduced(dataset: Dataset, keep: set[str]) -> Dataset:
    """The dataset restricted to the chosen queries (so every variant trains on the same ones)."""
    return replace(dataset, queries=dataset.queries[dataset.queries["query"].isin(keep)].reset_index(drop=True))


def _retriever(dataset: Dataset, work: Path, index_dir: Path | None, retriever_dir: Path | None,
               retriever_steps: int, seed: int, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Load the given index, or build one from the given / a freshly fine-tuned retriever."""
    from retrieval.encoder import BiEncoder
    from retrieval.index import Retriever, build_index
    from retrieval.train import train_retriever

    if index_dir is not None:
        return Retriever.load(index_dir), {"index": str(index_dir)}
    info: dict[str, Any] = {}
    if retriever_dir is None:
        retriever_dir = work / "retriever"
        rep = train_retriever(dataset, retriever_dir, epochs=1, max_steps=retriever_steps, seed=seed,
                              compare=False, show_progress=progress)
        info["retriever_trained"] = {k: rep[k] for k in ("seconds", "validation") if k in rep}
    info["retriever"] = str(retriever_dir)
    encoder = BiEncoder.load(retriever_dir)
    build_index(dataset.catalog, encoder, work / "index", "flat", show_progress=progress)
    return Retriever.load(work / "index", encoder), info


def compare_rerankers(data_dir: str | os.PathLike[str] | None = None, out_dir: str | os.PathLike[str] = "runs/compare-rerankers",
                      *, index_dir: str | os.PathLike[str] | None = None,
                      retriever_dir: str | os.PathLike[str] | None = None, retriever_steps: int = 100,
                      variants: Sequence[str] | None = None, candidates: int = 100, epochs: int = 2,
                      max_length: int = 32, batch_size: int = 32, learning_rate: float = 1e-4, train_queries: int | None = 80,
                      valid_queries: int | None = 10, test_queries: int | None = 30,
                      max_shown_per_query: int | None = 12, negatives: int = 4, adapt_steps: int = 40,
                      int8: bool = True, weights: dict[str, float] | None = None, seed: int = DEFAULT_SEED,
                      progress: bool = True) -> dict[str, Any]:
    """Train + evaluate every variant; write ``results.json`` in ``out_dir``; return the results.

    ``weights``: fusion weights for the multi-task rows' ranking score (default
    :data:`rerank.fusion.DEFAULT_WEIGHTS`).
    """
    from rerank.adapt import adapt_lm
    from rerank.data import build_eval_pairs
    from rerank.evaluation import model_metrics, ranking_metrics
    from rerank.train import pick_queries, train_reranker

    started = time.time()
    names = list(variants or RUN_ORDER)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise DataError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    dataset = load_dataset(data_dir or DEFAULT_DATA_DIR)
    if dataset.engagement is None or dataset.queries is None or dataset.qrels is None:
        raise DataError(f"{data_dir or DEFAULT_DATA_DIR}: compare-rerankers needs engagement, queries and qrels")
    work = Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    retriever, retr_info = _retriever(dataset, work, Path(index_dir) if index_dir else None,
                                      Path(retriever_dir) if retriever_dir else None, retriever_steps, seed, progress)
    chosen = {split: pick_queries(dataset.split_queries(split), limit, seed)
              for split, limit in (("train", train_queries), ("valid", valid_queries), ("test", test_queries))}
    all_q = [q for qs in chosen.values() for q in qs]
    ids, scores = retriever.search(all_q, k=candidates)
    cands = {q: list(i) for q, i in zip(all_q, ids)}
    retrieval_score = {(q, str(p)): float(s) for q, row, sc in zip(all_q, ids, scores) for p, s in zip(row, sc)}
    small = _reduced(dataset, set(all_q))
    qrels = qrels_dict(dataset.qrels)
    test_pairs = build_eval_pairs(dataset.engagement, dataset.catalog, chosen["test"], candidates=cands,
                                  include_shown=False)
    base_score = np.array([retrieval_score[(q, p)] for q, p in zip(test_pairs["query"], test_pairs["product_id"])])
    rows: list[dict[str, Any]] = [{"system": "retrieval_only", **ranking_metrics(test_pairs, base_score, None, qrels)}]
    domain_dir: Path | None = None
    reports: dict[str, Any] = {}
    config = {"data_dir": str(data_dir or DEFAULT_DATA_DIR), "candidates": candidates, "epochs": epochs,
              "max_length": max_length, "batch_size": batch_size, "learning_rate": learning_rate,
              "train_queries": len(chosen["train"]), "valid_queries": len(chosen["valid"]),
              "test_queries": len(chosen["test"]), "test_pairs": len(test_pairs),
              "max_shown_per_query": max_shown_per_query, "negatives": negatives, "adapt_steps": adapt_steps,
              "seed": seed, "fusion_weights": weights, **retr_info}
    for name in names:
        spec = dict(VARIANTS[name])
        encoder = None
        if spec.pop("domain", False):
            if domain_dir is None:
                domain_dir = work / "domain-bert"
                reports["adapt_lm"] = adapt_lm(dataset.catalog, domain_dir, max_steps=adapt_steps, seed=seed,
                                               progress=progress)
            encoder = domain_dir
        rep = train_reranker(small, work / f"reranker-{name}", candidates=cands, encoder=encoder, seed=seed,
                             epochs=epochs, max_length=max_length, batch_size=batch_size, negatives=negatives,
                             learning_rate=learning_rate,
                             max_shown_per_query=max_shown_per_query, progress=progress, **spec)
        model = rep.pop("model")
        probs = model.predict(test_pairs["query"].tolist(), test_pairs["text"].tolist())
        rows.append({"system": name, **model_metrics(test_pairs, probs, model.tasks, qrels, weights),
                     "train_seconds": rep["train_seconds"]})
        reports[name] = {k: v for k, v in rep.items() if k != "history"}
        if int8 and name == "mmoe_funnel":
            rows.extend(_int8_rows(work / f"reranker-{name}", test_pairs, qrels, weights))
        _results(rows, reports, config, started, work, partial=True)
    results = _results(rows, reports, config, started, work, partial=False)
    results["results_file"] = str(work / "results.json")
    return results


def _int8_rows(reranker_dir: Path, test_pairs: Any, qrels: Any, weights: dict[str, float] | None) -> list[dict[str, Any]]:
    """The two int8 paths over the same pairs: ONNX Runtime (the product's int8 path, row
    ``mmoe_funnel_int8``) and torch dynamic quantisation (``mmoe_funnel_int8_torch``)."""
    from rerank.evaluation import model_metrics
    from rerank.model import MultiTaskCrossEncoder
    from rerank.onnx_model import OnnxCrossEncoder, export_reranker

    export_reranker(reranker_dir)
    queries, texts = test_pairs["query"].tolist(), test_pairs["text"].tolist()
    rows = []
    for system, model in (("mmoe_funnel_int8", OnnxCrossEncoder.load(reranker_dir, precision="int8")),
                          ("mmoe_funnel_int8_torch", MultiTaskCrossEncoder.load(reranker_dir, quantize=True))):
        t0 = time.time()
        probs = model.predict(queries, texts)
        rows.append({"system": system, **model_metrics(test_pairs, probs, model.tasks, qrels, weights),
                     "predict_seconds": round(time.time() - t0, 1)})
    return rows


def _results(rows: list[dict[str, Any]], reports: dict[str, Any], config: dict[str, Any], started: float,
             work: Path, partial: bool) -> dict[str, Any]:
    """Acceptance checks + table (in VARIANTS order), written to ``results.json``."""
    order = ["retrieval_only", *VARIANTS, "mmoe_funnel_int8", "mmoe_funnel_int8_torch"]
    rows = sorted(rows, key=lambda r: order.index(r["system"]))
    by = {r["system"]: r for r in rows}
    checks: dict[str, Any] = {}
    if "mmoe_funnel" in by:
        checks["mmoe_beats_retrieval_ndcg@10"] = by["mmoe_funnel"]["ndcg@10"] > by["retrieval_only"]["ndcg@10"]
        if "single_purchase" in by:
            checks["mmoe_purchase_ndcg_ge_single_purchase"] = (
                by["mmoe_funnel"]["purchase_ndcg@10"] >= by["single_purchase"]["purchase_ndcg@10"])
        if "mmoe_funnel_int8" in by:
            checks["int8_ndcg@10_drop"] = round(by["mmoe_funnel"]["ndcg@10"] - by["mmoe_funnel_int8"]["ndcg@10"], 4)
            checks["int8_within_0.005"] = abs(checks["int8_ndcg@10_drop"]) <= 0.005
    results = {"rows": rows, "checks": checks, "config": config, "reports": reports,
               "seconds": round(time.time() - started, 1), "partial": partial}
    atomic_write_text(work / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results
