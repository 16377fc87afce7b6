"""The quick demo builds every artefact at the default paths and reports honestly."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from pipeline.core.artifacts import read_manifest
import pytest

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow

def test_quick_demo_builds_everything_at_default_paths(demo_run):
    root, report = demo_run
    for rel in ("data/sample/catalog.parquet", "models/retriever/manifest.json", "models/reranker/manifest.json",
                "indexes/default/manifest.json", "runs/scored.parquet", "runs/eval/qrels.txt",
                "models/retriever/onnx/manifest.json", "models/reranker/onnx/manifest.json"):
        assert (root / rel).is_file(), rel
    assert set(report["timings"]) == {"generate sample world", "train retriever", "export retriever (onnx)",
                                      "build index", "train reranker", "evaluate", "example searches",
                                      "score query log", "export reranker (onnx)"}
    assert read_manifest(root / "indexes/default")["encoded_with"] == "onnx-int8"


def test_quick_demo_evaluation_and_examples(demo_run):
    _, report = demo_run
    rows = {(r["system"], r["subset"]): r for r in report["evaluation"]["rows"]}
    assert {s for s, _ in rows} == {"bm25", "dense-zero-shot", "dense-fine-tuned", "two-stage", "oracle-rerank",
                                    "lexical", "hybrid", "two-stage-hybrid"}  # the index has a lexical side
    assert rows[("oracle-rerank", "all")]["nDCG@10"] >= rows[("dense-fine-tuned", "all")]["nDCG@10"]
    paired = {p["system"]: p for p in report["evaluation"]["paired"]}
    assert paired["two-stage"]["baseline"] == "dense-fine-tuned"
    assert paired["two-stage"]["ci_low"] <= paired["two-stage"]["diff"] <= paired["two-stage"]["ci_high"]
    # Vocabulary mismatch: BM25 cannot match what shares no word; the dense retriever can.
    assert rows[("dense-fine-tuned", "mismatch")]["nDCG@10"] > rows[("bm25", "mismatch")]["nDCG@10"]
    summary = report["example_summary"]
    assert len(report["examples"]) == min(3, summary["top1_relevant"])
    for example in report["examples"]:
        assert example["hits"][0]["relevance"] >= 2
        assert {"p_click", "p_add_to_cart", "p_purchase"} <= set(example["hits"][0])


def test_quick_demo_scored_log_carries_model_ids(demo_run):
    root, report = demo_run
    scored = report["scored_log"]
    assert scored["rows_out"] == scored["rows_in"] * 10 and scored["computed"] < scored["rows_in"]
    meta = json.loads(pq.read_schema(root / "runs/scored.parquet").metadata[b"shoprank"])
    assert meta["models"]["reranker"] == read_manifest(root / "models/reranker")["id"]
    assert meta["models"]["index"] == read_manifest(root / "indexes/default")["id"]


def test_quick_demo_fits_the_first_stage_blend_on_valid(demo_run):
    root, report = demo_run
    fusion = read_manifest(root / "models/reranker")["fusion"]
    assert fusion["split"] == "valid" and 0.0 <= fusion["retrieval_weight"] <= 1.0
    assert fusion["retrieval_weight"] == report["fusion"]["retrieval_weight"]
    assert set(fusion["by_alpha"]) >= {"0", "1"}


def test_quick_demo_reports_stage_two_on_unseen_product_types(demo_run):
    """The demo also compares two-stage with dense on the `unseen` split (product types no
    training query asked about), with its paired bootstrap: the no-negative-transfer check."""
    _, report = demo_run
    unseen = report["evaluation_unseen"]
    assert unseen["split"] == "unseen"
    assert {r["system"] for r in unseen["rows"]} == {"dense-fine-tuned", "two-stage"}
    paired = {p["system"]: p for p in unseen["paired"]}
    assert paired["two-stage"]["baseline"] == "dense-fine-tuned"
