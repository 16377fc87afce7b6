"""compare-rerankers: the seed statistics and checks on known numbers, and one real run of
two variants over two seeds on the tiny world (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.experiments import load_experiment

_experiment = load_experiment("compare_rerankers")
acceptance, summarise, within_query_auc = _experiment.acceptance, _experiment.summarise, _experiment.within_query_auc
within_query_examined_auc = _experiment.within_query_examined_auc


def test_within_query_auc_ignores_between_query_differences() -> None:
    # Query a: score orders its two products correctly; query b: wrongly. A global AUC would
    # see b's higher scores as "better" products; within-query it is one right, one wrong.
    queries = ["a", "a", "b", "b", "c", "c"]
    labels = np.array([1, 0, 1, 0, 0, 0])
    scores = np.array([0.2, 0.1, 0.8, 0.9, 0.5, 0.4])
    assert within_query_auc(queries, labels, scores) == pytest.approx(0.5)  # c has one class: skipped
    assert np.isnan(within_query_auc(["a", "a"], np.array([0, 0]), np.array([1.0, 2.0])))  # no query has both classes


def test_examined_auc_does_not_reward_exposure() -> None:
    # Two products with the same click rate per examination (0.1): "top" was shown at
    # position 1 (100 examinations, 10 clicks), "deep" at position 10 (100 impressions seen a
    # fifth of the time: 20 examinations, 2 clicks). A third, "bad", was examined 50 times and
    # clicked once. "Engaged at least once" cannot tell the two good products apart from
    # exposure; the examined-impression AUC ranks by what users did once they looked.
    queries = ["q"] * 3
    clicks = np.array([10.0, 2.0, 1.0])
    exams = np.array([100.0, 20.0, 50.0])
    exposure = np.array([100.0, 20.0, 50.0])  # a score that copies how often the ranker showed each
    preference = np.array([1.0, 1.0, 0.0])    # a score that knows users like top and deep alike
    assert within_query_examined_auc(queries, clicks, exams, preference) > within_query_examined_auc(
        queries, clicks, exams, exposure)
    # By hand: positives (clicks) 10, 2, 1 against negatives (examined, not clicked) 90, 18, 49;
    # top and deep tie with each other, bad ties with itself.
    assert within_query_examined_auc(queries, clicks, exams, preference) == pytest.approx(
        (12 * 49 + 0.5 * 12 * 108 + 0.5 * 1 * 49) / (13 * 157))
    nan = np.array([np.nan, 20.0, 50.0])  # a product without an examination count is left out
    assert within_query_examined_auc(queries, clicks, nan, preference) == pytest.approx(
        (2 * 49 + 0.5 * 2 * 18 + 0.5 * 1 * 49) / (3 * 67))


def _split(per_query: dict[str, float], ndcg: float | None = None, auc: float = 0.6) -> dict:
    row = {"per_query": per_query, "ndcg@10": ndcg if ndcg is not None else float(np.mean(list(per_query.values())))}
    for task in ("click", "add_to_cart", "purchase"):
        row[f"{task}_wq_auc"] = auc
        row[f"{task}_ndcg@10"] = auc / 2
    return row


def test_summary_interval_bootstrap_and_checks() -> None:
    queries = [f"q{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    base = {q: float(v) for q, v in zip(queries, rng.uniform(0.3, 0.7, len(queries)))}
    retrieval = {"test": _split(base, auc=0.65), "unseen": _split(base, auc=0.65)}
    runs = []
    for shift in (0.04, 0.05, 0.06):
        better = {q: v + shift for q, v in base.items()}
        runs.append({"seed": 0, "train_seconds": 1.0, "retrieval_weight": 0.5,
                     "test": {**_split(better, auc=0.7), "unblended": 0.5},
                     "unseen": {**_split({q: v - 0.02 for q, v in base.items()}), "unblended": 0.5}})
    rows = summarise({"mmoe_funnel": runs}, retrieval)
    by = {r["system"]: r for r in rows}
    default = by["mmoe_funnel"]
    assert default["seeds"] == 3
    assert default["ndcg@10_ci_low"] < default["ndcg@10"] < default["ndcg@10_ci_high"]
    assert default["diff"] == pytest.approx(0.05, abs=1e-9)  # seed-averaged per-query gain
    assert default["diff_ci_low"] == pytest.approx(0.05, abs=1e-9)  # identical per-query gains
    assert default["unseen_diff"] == pytest.approx(-0.02, abs=1e-9)
    checks = acceptance(rows, retrieval)
    assert checks["default_gain_ge_0.03"] and checks["default_gain_ci_above_0"]
    assert checks["click_wq_auc_above_retrieval"]
    assert not checks["unseen_no_negative_transfer"]  # −0.02 < −0.01


@pytest.mark.slow
def test_compare_two_variants_two_seeds_end_to_end(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Real training, blend fit on valid, served-order evaluation, int8 check, results.json."""
    compare_rerankers = _experiment.compare_rerankers

    results = compare_rerankers(tiny_data_dir, tmp_path / "cmp", variants=["mmoe_funnel", "single_purchase"],
                                seeds=2, retriever_steps=2, candidates=8, epochs=1, train_queries=3,
                                valid_queries=3, test_queries=4, max_shown_per_query=2, negatives=1,
                                batch_size=8, progress=False)
    by = {r["system"]: r for r in results["rows"]}
    assert set(by) == {"retrieval_only", "mmoe_funnel", "single_purchase"}
    for name in ("mmoe_funnel", "single_purchase"):
        row = by[name]
        assert row["seeds"] == 2 and row["ndcg@10_ci_low"] <= row["ndcg@10"] <= row["ndcg@10_ci_high"]
        assert 0.0 <= row["retrieval_weight"] <= 1.0 and "vs_retrieval" in row
    assert [r["seed"] for r in results["runs"]["mmoe_funnel"]] == [13, 14]
    checks = results["checks"]
    assert {"default_gain_ge_0.03", "purchase_wq_auc_above_retrieval", "mmoe_purchase_ndcg_ge_single_purchase",
            "int8_within_0.005", "propensity_within_10%", "served_click_exam_auc_above_retrieval"} <= set(checks)
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert saved["partial"] is False and saved["rows"] == json.loads(json.dumps(results["rows"]))
    manifest = json.loads((tmp_path / "cmp" / "reranker-mmoe_funnel-seed14" / "manifest.json").read_text())
    assert "retrieval_weight" in manifest["fusion"]  # the blend was fitted and saved per run

    # A rerun of the same comparison resumes: every (variant, seed) model is reused, not
    # retrained, and gives the same rows; a changed setting (more epochs) is retrained.
    again = compare_rerankers(tiny_data_dir, tmp_path / "cmp", variants=["mmoe_funnel", "single_purchase"],
                              seeds=2, retriever_steps=2, candidates=8, epochs=1, train_queries=3,
                              valid_queries=3, test_queries=4, max_shown_per_query=2, negatives=1,
                              batch_size=8, progress=False, int8=False)
    assert all(run["reused"] for runs in again["runs"].values() for run in runs)
    assert [r["ndcg@10"] for r in again["rows"]] == [r["ndcg@10"] for r in results["rows"]]
    changed = compare_rerankers(tiny_data_dir, tmp_path / "cmp", variants=["single_purchase"], seeds=1,
                                retriever_steps=2, candidates=8, epochs=2, train_queries=3, valid_queries=3,
                                test_queries=4, max_shown_per_query=2, negatives=1, batch_size=8, progress=False,
                                int8=False)
    assert not changed["runs"]["single_purchase"][0]["reused"]
