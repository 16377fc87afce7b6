"""`pipeline compare-rerankers`: every reranker variant, trained and served the way the
product does it, over several seeds, against the retriever it reranks.

Each variant is trained by :func:`rerank.train.train_reranker` on the retriever's
candidates (the encoder starts from the fine-tuned retriever unless the variant says
otherwise), its first-stage blend is fitted on the *valid* split (:func:`pipeline.blend.fit_fusion`),
and it is then scored as the searcher serves it: the retriever's top ``candidates`` per
test (and ``unseen``) query, reordered by the blended score. So a row is what a user of
that variant would get, and ``retrieval_only`` is what they get without stage 2.

Per variant and seed: relevance nDCG@10 blended (the served order) and unblended (the
model's order alone), per-task engagement nDCG@10 / AUC over the candidates, and the
within-query AUC of each task's probability among a query's shown products, and of the
served (blended) score (``served_*``), next to the retrieval score's on the same products. Over seeds: the mean and a 95% Student-t interval,
and a paired bootstrap over test queries of the seed-averaged per-query nDCG@10 against
retrieval only (:func:`pipeline.core.metrics.paired_bootstrap`).

Why it lives in benchmarks/ and not in the product package: it is an experiment, with
acceptance checks on the sample world, not something a shop runs to serve search. It needs
a source checkout; ``pipeline compare-rerankers`` is its command-line front end
(:func:`pipeline.cli.experiments.load_experiment`).
"""
from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DEFAULT_CANDIDATES, DEFAULT_DATA_DIR, DEFAULT_RUNS_DIR, POSITIONS_FILE
from pipeline.core.artifacts import atomic_write_text
from pipeline.core.errors import DataError
from pipeline.core.runtime import DEFAULT_SEED
from pipeline.core.tasks import COUNT_COLUMNS, TASKS
from pipeline.data import Dataset, load_dataset, qrels_dict
from pipeline.fit import FULL

#: Variant name -> the train_reranker settings that differ from the default reranker.
VARIANTS: dict[str, dict[str, Any]] = {
    "mmoe_funnel": {},
    "single_click": {"architecture": "single", "heads": "independent", "tasks": ("click",)},
    "single_purchase": {"architecture": "single", "heads": "independent", "tasks": ("purchase",)},
    "shared_bottom": {"architecture": "shared_bottom", "heads": "funnel"},
    "mmoe_independent": {"architecture": "mmoe", "heads": "independent"},
    "mmoe_funnel_pointwise": {"objective": "pointwise"},
    "mmoe_funnel_listwise": {"objective": "listwise"},
    "mmoe_funnel_ipw": {"debias": "ipw"},
    "mmoe_funnel_pal": {"debias": "pal"},
    "mmoe_funnel_minilm": {"init": "minilm"},
    "mmoe_funnel_prior": {"prior_weight": 1.0},
    "mmoe_funnel_no_skip": {"similarity_skip": False},
}
#: The default reranker (what `train-reranker` and the demo build) is this row.
DEFAULT_VARIANT = "mmoe_funnel"
#: Run order: the rows the acceptance checks read come first, and results.json is rewritten
#: after every (seed, variant), so a run cut short still answers them.
RUN_ORDER = tuple(VARIANTS)
COLUMNS = ["system", "seeds", "ndcg@10", "ci95", "vs_retrieval", "unblended", "retrieval_weight",
           "click_wq_auc", "add_to_cart_wq_auc", "purchase_wq_auc", "served_click_wq_auc",
           "served_add_to_cart_wq_auc", "served_purchase_wq_auc", "purchase_ndcg@10", "unseen_ndcg@10",
           "unseen_vs_retrieval", "train_seconds"]
_EVAL_SPLITS = ("test", "unseen")


def _reduced(dataset: Dataset, keep: set[str]) -> Dataset:
    """The dataset restricted to the chosen queries (so every variant trains on the same ones)."""
    return replace(dataset, queries=dataset.queries[dataset.queries["query"].isin(keep)].reset_index(drop=True))


def _retriever(dataset: Dataset, work: Path, index_dir: Path | None, retriever_dir: Path | None,
               retriever_steps: int, seed: int, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Load the given index, or build one from the given / a freshly fine-tuned retriever.

    A retriever and index this comparison built before (in ``work``) are reused, so a rerun
    resumes with the very retriever its finished reranker runs were trained against.
    """
    from pipeline.core.errors import ShoprankError
    from retrieval.encoder import BiEncoder
    from retrieval.index import Retriever, build_index
    from retrieval.train import train_retriever

    if index_dir is not None:
        return Retriever.load(index_dir), {"index": str(index_dir)}
    info: dict[str, Any] = {}
    if retriever_dir is None:
        retriever_dir = work / "retriever"
        if (retriever_dir / "manifest.json").is_file():
            info["retriever_reused"] = True
        else:
            rep = train_retriever(dataset, retriever_dir, epochs=1, max_steps=retriever_steps, seed=seed,
                                  show_progress=progress)
            info["retriever_trained"] = {k: rep[k] for k in ("seconds", "valid_history", "zero_shot_valid")
                                         if k in rep}
    info["retriever"] = str(retriever_dir)
    encoder = BiEncoder.load(retriever_dir)
    if (work / "index" / "manifest.json").is_file():
        try:
            return Retriever.load(work / "index", encoder), info
        except ShoprankError:  # built by another retriever or catalog: rebuild below
            pass
    build_index(dataset.catalog, encoder, work / "index", "flat", show_progress=progress)
    return Retriever.load(work / "index", encoder), info


def _mean_over_queries(queries: Sequence[str], metric: Callable[[list[int]], float]) -> float:
    """Mean of ``metric(rows)`` over each query's rows, skipping the queries it gives NaN."""
    from rerank.fusion import rows_by_query

    values = [metric(idx) for idx in rows_by_query(queries).values()]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def within_query_auc(queries: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean over queries of the AUC among that query's rows (queries with one class skipped).

    Why within a query: a reranker only ever orders one query's candidates, so an AUC over
    all pairs would reward learning which queries convert, not which products do.
    """
    from pipeline.core import metrics

    return _mean_over_queries(queries, lambda idx: metrics.auc(labels[idx], scores[idx]))


def within_query_examined_auc(queries: Sequence[str], counts: np.ndarray, examinations: np.ndarray,
                              scores: np.ndarray) -> float:
    """Mean over queries of :func:`pipeline.core.metrics.examined_auc` among that query's
    shown products: engaged against examined-but-skipped impressions.

    Why next to :func:`within_query_auc`: its label, "engaged at least once", is decided by
    how often and how high the logging ranker showed a product about as much as by the
    product, so a score that copies exposure wins it. This one compares what users did with
    the products they actually looked at (impressions weighted by the propensities fitted on
    the train queries' per-position log). Rows without a known examination count are left out.
    """
    from pipeline.core import metrics

    def examined(idx: list[int]) -> float:
        idx = [i for i in idx if np.isfinite(examinations[i])]
        return metrics.examined_auc(counts[idx], examinations[idx], scores[idx]) if idx else float("nan")

    return _mean_over_queries(queries, examined)


class _Split:
    """One evaluation split, fixed across variants: candidate pairs with their retrieval
    scores and engagement counts, the shown products with their retrieval scores, qrels."""

    def __init__(self, dataset: Dataset, retriever: Any, queries: Sequence[str], candidates: int,
                 qrels: Mapping[str, Mapping[str, int]], examinations: pd.Series | None = None) -> None:
        from pipeline.blend import retriever_prior
        from rerank.data import build_eval_pairs, text_lookup

        self.queries = [q for q in queries if q in qrels]
        self.qrels = {q: dict(qrels[q]) for q in self.queries}
        ids, scores = retriever.search(self.queries, k=candidates)
        cands = {q: [str(p) for p in row] for q, row in zip(self.queries, ids)}
        score_of = {(q, str(p)): float(s) for q, row, sc in zip(self.queries, ids, scores) for p, s in zip(row, sc)}
        self.pairs = build_eval_pairs(dataset.engagement, dataset.catalog, self.queries, candidates=cands,
                                      include_shown=False)
        self.retrieval = np.array([score_of[(q, p)] for q, p in zip(self.pairs["query"], self.pairs["product_id"])])
        texts = text_lookup(dataset.catalog)
        eng = dataset.engagement
        shown = eng[eng["query"].isin(set(self.queries)) & eng["product_id"].astype(str).isin(texts.keys())]
        self.shown_queries = shown["query"].astype(str).tolist()
        shown_ids = shown["product_id"].astype(str).tolist()
        self.shown_texts = [texts[p] for p in shown_ids]
        self.shown_counts = {t: shown[COUNT_COLUMNS[t]].to_numpy(dtype=np.float64) for t in TASKS}
        self.shown_labels = {t: c > 0 for t, c in self.shown_counts.items()}
        self.shown_exams = (examinations.reindex(pd.MultiIndex.from_arrays([self.shown_queries, shown_ids]))
                            .to_numpy(dtype=np.float64) if examinations is not None else None)
        self.shown_retrieval = retriever_prior(retriever, dataset.catalog)(self.shown_queries, shown_ids)

    def per_query(self, score: np.ndarray) -> dict[str, float]:
        from pipeline.core import metrics

        run = metrics.run_from_pairs(self.pairs["query"], self.pairs["product_id"], score)
        return metrics.per_query(run, self.qrels, ("nDCG@10",))["nDCG@10"]

    def retrieval_row(self) -> dict[str, Any]:
        from rerank.evaluation import ranking_metrics

        row = {k: v for k, v in ranking_metrics(self.pairs, self.retrieval, None, self.qrels).items()
               if k != "ndcg@10"}
        row["per_query"] = self.per_query(self.retrieval)
        row["ndcg@10"] = float(np.mean(list(row["per_query"].values())))
        for task in TASKS:
            row[f"{task}_wq_auc"] = within_query_auc(self.shown_queries, self.shown_labels[task], self.shown_retrieval)
            row[f"served_{task}_wq_auc"] = row[f"{task}_wq_auc"]
            row.update(self._examined(task, self.shown_retrieval, self.shown_retrieval))
        return row

    def _examined(self, task: str, score: np.ndarray, served: np.ndarray) -> dict[str, float]:
        """Within-query examined-impression AUCs of a task's score and of the served score
        (nothing without a per-position log)."""
        if self.shown_exams is None:
            return {}
        auc = lambda s: within_query_examined_auc(self.shown_queries, self.shown_counts[task],  # noqa: E731
                                                 self.shown_exams, s)
        return {f"{task}_exam_auc": auc(score), f"served_{task}_exam_auc": auc(served)}

    def model_row(self, model: Any, retrieval_weight: float, weights: Mapping[str, float] | None) -> dict[str, Any]:
        """The served (blended) order's metrics, the model's own order's, and within-query AUCs."""
        from rerank.evaluation import model_metrics
        from rerank.fusion import blend_by_query, fuse

        probs = model.predict(self.pairs["query"].tolist(), self.pairs["text"].tolist(), batch_size=128)
        tasks = list(model.tasks)
        own = probs[:, 0].astype(np.float64) if len(tasks) == 1 else fuse(probs, tasks, weights)
        served = blend_by_query(self.pairs["query"].tolist(), own, self.retrieval, 1.0 - retrieval_weight)
        row = {k: v for k, v in model_metrics(self.pairs, probs, tasks, self.qrels, weights).items() if k != "ndcg@10"}
        row["per_query"] = self.per_query(served)
        row["ndcg@10"] = float(np.mean(list(row["per_query"].values())))
        row["unblended"] = float(np.mean(list(self.per_query(own).values())))
        shown = model.predict(self.shown_queries, self.shown_texts, batch_size=128)
        shown_own = shown[:, 0].astype(np.float64) if len(tasks) == 1 else fuse(shown, tasks, weights)
        shown_served = blend_by_query(self.shown_queries, shown_own, self.shown_retrieval, 1.0 - retrieval_weight)
        for task in TASKS:
            score = shown[:, tasks.index(task)] if task in tasks else shown_own
            row[f"{task}_wq_auc"] = within_query_auc(self.shown_queries, self.shown_labels[task], score)
            row[f"served_{task}_wq_auc"] = within_query_auc(self.shown_queries, self.shown_labels[task], shown_served)
            row.update(self._examined(task, score, shown_served))
        return row


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds (the interval is the mean alone for one seed)."""
    from scipy import stats

    x = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def _mean_per_query(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {q: float(np.mean([r[q] for r in runs])) for q in runs[0]}


def summarise(raw: Mapping[str, Any], retrieval: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table row per system: means over seeds, the seed interval of nDCG@10, and the
    paired bootstrap (test and unseen) of the seed-averaged per-query nDCG@10 vs retrieval."""
    from pipeline.core import metrics

    rows = [{"system": "retrieval_only", "seeds": 0,
             **{k: round(float(v), 4) for k, v in retrieval["test"].items() if k != "per_query"},
             "unseen_ndcg@10": round(retrieval["unseen"]["ndcg@10"], 4) if "unseen" in retrieval else None}]
    for name, runs in raw.items():
        if not runs:
            continue
        row: dict[str, Any] = {"system": name, "seeds": len(runs)}
        mean, low, high = _interval([r["test"]["ndcg@10"] for r in runs])
        row.update({"ndcg@10": round(mean, 4), "ci95": f"{low:.4f}…{high:.4f}",
                    "ndcg@10_ci_low": round(low, 4), "ndcg@10_ci_high": round(high, 4)})
        keys = [k for k in runs[0]["test"] if k not in ("per_query", "ndcg@10")]
        row.update({k: round(float(np.nanmean([r["test"][k] for r in runs])), 4) for k in keys})
        row["retrieval_weight"] = round(float(np.mean([r["retrieval_weight"] for r in runs])), 3)
        row["train_seconds"] = round(float(np.mean([r["train_seconds"] for r in runs])), 1)
        for split, prefix in (("test", ""), ("unseen", "unseen_")):
            if split not in retrieval or split not in runs[0]:
                continue
            if prefix:
                row[f"{prefix}ndcg@10"] = round(float(np.mean([r[split]["ndcg@10"] for r in runs])), 4)
            boot = metrics.paired_bootstrap(_mean_per_query([r[split]["per_query"] for r in runs]),
                                            retrieval[split]["per_query"])
            row[f"{prefix}vs_retrieval"] = f"{boot['diff']:+.4f} ({boot['ci_low']:+.4f}…{boot['ci_high']:+.4f})"
            row[f"{prefix}diff"] = round(boot["diff"], 4)
            row[f"{prefix}diff_ci_low"] = round(boot["ci_low"], 4)
            row[f"{prefix}diff_ci_high"] = round(boot["ci_high"], 4)
        rows.append(row)
    return rows


def acceptance(rows: Sequence[Mapping[str, Any]], retrieval: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's checks, read off the summary rows (only those whose rows exist)."""
    by = {r["system"]: r for r in rows}
    checks: dict[str, Any] = {}
    default = by.get(DEFAULT_VARIANT)
    if default is None:
        return checks
    checks["default_gain_ndcg@10"] = default.get("diff")
    checks["default_gain_ge_0.03"] = bool(default.get("diff", -1) >= 0.03)
    checks["default_gain_ci_above_0"] = bool(default.get("diff_ci_low", -1) > 0)
    for task in TASKS:  # the task head's own probability, then the served (blended) score
        for key in (f"{task}_wq_auc", f"served_{task}_wq_auc", f"{task}_exam_auc", f"served_{task}_exam_auc"):
            base = retrieval["test"].get(key.removeprefix("served_"))
            if key in default and base is not None:
                checks[f"{key}_above_retrieval"] = bool(default[key] > base)
    if "single_purchase" in by:
        checks["mmoe_purchase_ndcg_ge_single_purchase"] = bool(
            default["purchase_ndcg@10"] >= by["single_purchase"]["purchase_ndcg@10"])
    if "unseen_diff" in default:
        checks["unseen_no_negative_transfer"] = bool(default["unseen_diff"] >= -0.01)
    return checks


def compare_rerankers(data_dir: str | os.PathLike[str] | None = None,
                      out_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR / "compare-rerankers",
                      *, index_dir: str | os.PathLike[str] | None = None,
                      retriever_dir: str | os.PathLike[str] | None = None, retriever_steps: int = 200,
                      variants: Sequence[str] | None = None, seeds: int = 1, candidates: int = DEFAULT_CANDIDATES,
                      epochs: int = FULL.reranker_epochs,
                      max_length: int | None = None, batch_size: int = 32, learning_rate: float = 1e-4,
                      train_queries: int | None = None, valid_queries: int | None = None,
                      test_queries: int | None = None, max_shown_per_query: int | None = FULL.reranker_max_shown,
                      negatives: int = FULL.reranker_negatives,
                      int8: bool = True, propensity: bool = True, weights: dict[str, float] | None = None,
                      seed: int = DEFAULT_SEED, progress: bool = True) -> dict[str, Any]:
    """Train + evaluate every variant for ``seeds`` seeds (``seed``, ``seed+1``, …); write
    ``results.json`` in ``out_dir`` after every run; return the results.

    The query subsets (``*_queries``: a seeded sample, all by default) and the retriever are
    the same for every variant and seed, so rows differ only by the model and its seed.
    ``max_length`` ``None`` = the trainer's default. The training defaults are the ``full``
    fit budget's (:data:`pipeline.fit.FULL`, what `make demo` trains), so the table measures
    the product's reranker.
    """
    from pipeline.blend import (examination_propensities, fit_fusion, retriever_candidates, retriever_encoder_dir,
                                retriever_prior)
    from rerank.train import pick_queries, train_reranker

    started = time.time()
    names = list(variants or RUN_ORDER)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise DataError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if seeds < 1:
        raise DataError(f"--seeds must be at least 1, got {seeds}")
    dataset = load_dataset(data_dir or DEFAULT_DATA_DIR)
    if dataset.engagement is None or dataset.queries is None or dataset.qrels is None:
        raise DataError(f"{data_dir or DEFAULT_DATA_DIR}: compare-rerankers needs engagement, queries and qrels")
    work = Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    retriever, retr_info = _retriever(dataset, work, Path(index_dir) if index_dir else None,
                                      Path(retriever_dir) if retriever_dir else None, retriever_steps, seed, progress)
    limits = {"train": train_queries, "valid": valid_queries, "test": test_queries, "unseen": test_queries}
    chosen = {split: pick_queries(dataset.split_queries(split), limit, seed) for split, limit in limits.items()}
    small = _reduced(dataset, {q for split in ("train", "valid") for q in chosen[split]})
    qrels = qrels_dict(dataset.qrels)
    positions = Path(data_dir or DEFAULT_DATA_DIR) / POSITIONS_FILE
    positions = positions if positions.is_file() else None
    exams = _examinations(positions, chosen["train"]) if positions is not None else None
    splits = {s: _Split(dataset, retriever, chosen[s], candidates, qrels, exams) for s in _EVAL_SPLITS if chosen[s]}
    retrieval = {s: split.retrieval_row() for s, split in splits.items()}
    cand_ids, _ = retriever_candidates(retriever, chosen["train"] + chosen["valid"], candidates)
    retriever_encoder = retriever_encoder_dir(retriever)
    config = {"data_dir": str(data_dir or DEFAULT_DATA_DIR), "seeds": list(range(seed, seed + seeds)),
              "candidates": candidates, "epochs": epochs, "max_length": max_length, "batch_size": batch_size,
              "learning_rate": learning_rate, "max_shown_per_query": max_shown_per_query, "negatives": negatives,
              "queries": {s: len(q) for s, q in chosen.items()}, "fusion_weights": weights, **retr_info}
    extra: dict[str, Any] = {}
    if propensity and positions is not None:
        from pipeline.world.simulate import propensity_report

        extra["propensity"] = propensity_report(positions, against_simulator=True)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for run_seed in range(seed, seed + seeds):
        for name in names:
            spec = dict(VARIANTS[name])
            init = spec.pop("init", "retriever")
            if spec.get("debias") == "ipw":
                spec["propensities"] = examination_propensities(dataset, positions)
            if spec.get("prior_weight"):
                spec["prior"] = retriever_prior(retriever, dataset.catalog)
            out = work / f"reranker-{name}-seed{run_seed}"
            kwargs = {"max_length": max_length} if max_length else {}
            encoder = retriever_encoder if init == "retriever" else None
            expected = _expected_report(spec, run_seed, epochs, max_length, negatives, max_shown_per_query, encoder,
                                        len(chosen["train"]), len(chosen["valid"]))
            rep = _finished_run(out, expected, candidates, weights) or train_reranker(
                small, out, candidates=cand_ids, seed=run_seed, epochs=epochs, encoder=encoder,
                batch_size=batch_size, negatives=negatives, learning_rate=learning_rate,
                max_shown_per_query=max_shown_per_query, progress=progress, **kwargs, **spec)
            model = rep.pop("model")
            fit = rep.get("fusion") or fit_fusion(small, model, retriever, reranker_dir=out, candidates=candidates,
                                                  weights=weights)
            result = {"seed": run_seed, "train_seconds": rep["train_seconds"], "reused": bool(rep.get("reused")),
                      "retrieval_weight": fit["retrieval_weight"],
                      **{s: split.model_row(model, fit["retrieval_weight"], weights) for s, split in splits.items()}}
            if int8 and name == DEFAULT_VARIANT and run_seed == seed:
                extra["int8"] = _int8_check(out, {s: splits[s] for s in ("test", "unseen") if s in splits},
                                            fit["retrieval_weight"], weights, result)
            raw[name].append(result)
            _write(work, raw, retrieval, config, extra, started, partial=True)
    results = _write(work, raw, retrieval, config, extra, started, partial=False)
    results["results_file"] = str(work / "results.json")
    return results


def _examinations(positions: Path, train_queries: Sequence[str]) -> pd.Series:
    """Expected examinations per shown (query, product), under propensities fitted on the
    train queries' rows of the per-position log (the evaluated queries' clicks stay out)."""
    from pipeline.data import load_position_log
    from rerank.propensity import estimate_propensities, expected_examinations

    log = load_position_log(positions)
    theta = estimate_propensities(log[log["query"].isin(set(train_queries))]).theta
    return expected_examinations(log, theta)


def _expected_report(spec: Mapping[str, Any], seed: int, epochs: int, max_length: int | None, negatives: int,
                     max_shown: int | None, encoder: Any, train_queries: int, valid_queries: int) -> dict[str, Any]:
    """The training report fields a finished run of this (variant, seed) must carry to be reused."""
    from rerank import DEFAULT_MAX_LENGTH
    from rerank.losses import MultiTaskLoss
    from rerank.train import BUNDLED_ENCODER, train_reranker

    defaults = {k: p.default for k, p in inspect.signature(train_reranker).parameters.items()}
    pick = lambda key: spec.get(key, defaults[key])  # noqa: E731
    loss = MultiTaskLoss(pick("tasks"), objective=pick("objective"), rank_weight=pick("rank_weight"),
                         point_weight=pick("point_weight"), prior_weight=pick("prior_weight"))
    return {"seed": seed, "epochs": epochs, "negatives": negatives, "max_shown_per_query": max_shown,
            "max_length": max_length or DEFAULT_MAX_LENGTH, "objective": pick("objective"),
            "debias": pick("debias"), "architecture": pick("architecture"), "heads": pick("heads"),
            "tasks": list(pick("tasks")), "label_mode": pick("label_mode"),
            "similarity_skip": pick("similarity_skip"),
            "encoder": str(encoder) if encoder else BUNDLED_ENCODER,
            "loss_weights": {"rank": loss.rank_weight, "point": loss.point_weight, "prior": loss.prior_weight},
            "train_queries": train_queries, "valid_queries": valid_queries}


def _finished_run(out: Path, expected: Mapping[str, Any], candidates: int,
                  weights: Mapping[str, float] | None) -> dict[str, Any] | None:
    """A model this comparison already trained, when its manifest says it was trained exactly
    as ``expected``: a long comparison that was cut short resumes instead of retraining.

    Its fitted blend is reused too when it was fitted for the same candidates and fusion
    weights; otherwise the caller refits it. ``None`` when there is nothing to reuse.
    """
    from pipeline.core.artifacts import read_manifest
    from rerank.model import MultiTaskCrossEncoder

    if not (out / "manifest.json").is_file():
        return None
    manifest = read_manifest(out)
    report = manifest.get("report", {})
    if any(report.get(k) != v for k, v in expected.items()):
        return None
    fusion = manifest.get("fusion")
    same_blend = fusion and fusion.get("candidates") == candidates and weights is None
    return {"model": MultiTaskCrossEncoder.load(out), "train_seconds": report.get("train_seconds"), "reused": True,
            **({"fusion": fusion} if same_blend else {})}


def _int8_check(reranker_dir: Path, splits: Mapping[str, _Split], retrieval_weight: float,
                weights: Mapping[str, float] | None, fp32: Mapping[str, Any]) -> dict[str, Any]:
    """The served nDCG@10 of the product's int8 path (ONNX Runtime) against fp32 torch.

    Measured per split and over the test and unseen queries pooled; the check reads the
    pooled difference. Why pooled: one query whose top 10 swaps two products moves a
    59-query mean by about 0.01, so a per-split difference at the 0.005 tolerance mostly
    measures which few queries happened to flip; more queries measure the quantisation.
    """
    from rerank.onnx_model import OnnxCrossEncoder, export_reranker

    export_reranker(reranker_dir)
    model = OnnxCrossEncoder.load(reranker_dir, precision="int8")
    report: dict[str, Any] = {}
    pooled_fp32: list[float] = []
    pooled_int8: list[float] = []
    for name, split in splits.items():
        row = split.model_row(model, retrieval_weight, weights)
        report[f"{name}_fp32_ndcg@10"] = round(fp32[name]["ndcg@10"], 4)
        report[f"{name}_int8_ndcg@10"] = round(row["ndcg@10"], 4)
        report[f"{name}_drop"] = round(fp32[name]["ndcg@10"] - row["ndcg@10"], 4)
        pooled_fp32 += list(fp32[name]["per_query"].values())
        pooled_int8 += [row["per_query"][q] for q in fp32[name]["per_query"]]
    drop = float(np.mean(pooled_fp32) - np.mean(pooled_int8))
    report.update({"queries": len(pooled_fp32), "drop": round(drop, 4), "within_0.005": bool(abs(drop) <= 0.005)})
    return report


def _write(work: Path, raw: Mapping[str, Any], retrieval: Mapping[str, Any], config: Mapping[str, Any],
           extra: Mapping[str, Any], started: float, partial: bool) -> dict[str, Any]:
    """Summary rows, acceptance checks and every per-seed run, written to ``results.json``."""
    rows = summarise(raw, retrieval)
    checks = acceptance(rows, retrieval)
    if "propensity" in extra:
        err = extra["propensity"].get("max_relative_error_1_10")
        checks["propensity_max_relative_error_1_10"] = None if err is None else round(err, 4)
        checks["propensity_within_10%"] = err is not None and err <= 0.10
    if "int8" in extra:
        checks["int8_ndcg@10_drop"] = extra["int8"]["drop"]
        checks["int8_within_0.005"] = extra["int8"]["within_0.005"]
    runs = {name: [{s: ({k: v for k, v in r[s].items() if k != "per_query"} if isinstance(r[s], dict) else r[s])
                    for s in r} for r in rs] for name, rs in raw.items()}
    results = {"rows": rows, "checks": checks, "config": dict(config), "runs": runs, **dict(extra),
               "seconds": round(time.time() - started, 1), "partial": partial}
    atomic_write_text(work / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results


__all__ = ["compare_rerankers", "summarise", "acceptance", "within_query_auc", "VARIANTS", "DEFAULT_VARIANT", "COLUMNS"]
