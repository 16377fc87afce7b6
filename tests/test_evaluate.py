"""Evaluation: every system's metrics, mismatch subset, per-task AUCs, and agreement of the
reported numbers with pytrec_eval run directly on the written TREC run files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import pytrec_eval

from pipeline.data import load_dataset
from pipeline.core.errors import DataError
from pipeline.evaluate import SYSTEMS, evaluate

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow


def _read_trec(path, cols):
    out: dict[str, dict] = {}
    for line in open(path, encoding="utf-8"):
        parts = line.split()
        if cols == "run":
            out.setdefault(parts[0], {})[parts[2]] = float(parts[4])
        else:
            out.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return out


def _read_ranks(path):
    out: dict[str, dict] = {}
    for line in open(path, encoding="utf-8"):
        qid, _, doc, rank, _score, _system = line.split()
        out.setdefault(qid, {})[doc] = int(rank)
    return out


@pytest.fixture(scope="module")
def report(demo_run, tmp_path_factory):
    root, _ = demo_run
    run_dir = tmp_path_factory.mktemp("runs")
    return evaluate(root / "data/sample", index_dir=root / "indexes/default", reranker=root / "models/reranker",
                    run_dir=run_dir, candidates=20, max_engagement_pairs=300)


def test_every_system_overall_and_on_mismatch(report):
    table = {(r["system"], r["subset"]): r for r in report["rows"]}
    assert set(table) == {(s, sub) for s in SYSTEMS for sub in ("all", "mismatch", "brand-model")}
    assert table[("bm25", "all")]["queries"] == report["queries"] > table[("bm25", "mismatch")]["queries"] > 0
    for row in report["rows"]:  # an empty subset (no brand-model query in a tiny world) is NaN by design
        assert all(0.0 <= row[m] <= 1.0 for m in report["measures"]) or row["queries"] == 0
    # The reranker only reorders the retriever's candidates, so it cannot find more of them.
    assert table[("two-stage", "all")]["Recall@100"] <= table[("dense-fine-tuned", "all")]["Recall@100"] + 1e-9
    assert table[("two-stage-hybrid", "all")]["Recall@100"] <= table[("hybrid", "all")]["Recall@100"] + 1e-9
    # the index's lexical side indexes the same text as the standalone BM25 baseline
    assert table[("lexical", "all")]["nDCG@10"] == pytest.approx(table[("bm25", "all")]["nDCG@10"])
    tasks = {t["task"]: t for t in report["tasks"]}
    assert set(tasks) == {"click", "add_to_cart", "purchase"}
    assert all(0 <= t["auc"] <= 1 and t["pairs"] > 0 and 0 < t["positives"] < t["pairs"] for t in tasks.values())


def test_metrics_agree_with_pytrec_eval_on_the_run_files(report):
    """Second computation: pytrec_eval (trec_eval's code) straight on the files we wrote."""
    qrels = _read_trec(report["qrels_file"], "qrels")
    binary = {q: {d: int(g >= 2) for d, g in docs.items()} for q, docs in qrels.items()}
    graded_eval = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"})
    binary_eval = pytrec_eval.RelevanceEvaluator(binary, {"recip_rank", "recall_100"})
    rows = {(r["system"], r["subset"]): r for r in report["rows"]}
    for system, path in report["run_files"].items():
        run = _read_trec(path, "run")
        # MRR@10 needs a cut-off; cut by the file's rank column (score desc, ties by doc id asc,
        # as written). Scores become -rank so trec_eval's own tie order (doc id desc) cannot
        # reshuffle tied BM25 scores: both computations then see the same ranked list.
        ranks = _read_ranks(path)
        top10 = {q: {d: -float(r) for d, r in docs.items() if r <= 10} for q, docs in ranks.items()}
        ndcg = graded_eval.evaluate(run)
        rr = binary_eval.evaluate(top10)
        rec = binary_eval.evaluate(run)
        # queries a system returned nothing for count as 0 (our documented convention)
        mean = lambda res, key: float(np.mean([res.get(q, {}).get(key, 0.0) for q in qrels]))  # noqa: E731
        assert rows[(system, "all")]["nDCG@10"] == pytest.approx(mean(ndcg, "ndcg_cut_10"), abs=1e-6)
        assert rows[(system, "all")]["MRR@10"] == pytest.approx(mean(rr, "recip_rank"), abs=1e-6)
        assert rows[(system, "all")]["Recall@100"] == pytest.approx(mean(rec, "recall_100"), abs=1e-6)


def test_unknown_split_is_a_data_error(demo_run):
    root, _ = demo_run
    with pytest.raises(DataError, match="no queries in split 'holdout'"):
        evaluate(root / "data/sample", split="holdout", index_dir=root / "indexes/default", systems=["bm25"])


def test_evaluate_cli_json_and_explicit_files(demo_run, tmp_path):
    root, _ = demo_run
    data = root / "data/sample"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "--queries", str(data / "queries.parquet"),
         "--qrels", str(data / "qrels.parquet"), "--catalog", str(data / "catalog.parquet"),
         "--systems", "bm25,dense-fine-tuned", "--run-dir", str(tmp_path / "runs"), "--json"],
        cwd=root, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {r["system"] for r in payload["rows"]} == {"bm25", "dense-fine-tuned"}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["bm25.run", "dense-fine-tuned.run", "qrels.txt"]
