"""Distilled student rerankers (rerank/distill.py) and the reranker cascade (pipeline/search.py).

Fast tests: which teacher layers a student keeps, the distillation loss, the cascade spec.
Slow tests (the quick demo build): a 2-layer student distilled from the demo's reranker
imitates it better than chance, saves, loads and exports like any reranker; a cascade with
M >= N is the teacher alone, with M = 0 the student alone; `pipeline search`, `score-logs`
and `serve` answer a cascade identically.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.core.errors import ShoprankError
from pipeline.search import CascadeSpec, TwoStageSearcher, parse_cascade
from rerank.distill import student_layers
from rerank.losses import DistillationLoss

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["comfy couch for the living room", "red running shoes", "desk lamp", "wireless headphones"]


# ----------------------------------------------------------------------------- fast
def test_student_layers_spread_keeps_first_and_last_and_refuses_out_of_range() -> None:
    assert student_layers(6, 2) == [0, 5]
    assert student_layers(6, 3) == [0, 2, 5]
    assert student_layers(6, 1) == [5]
    assert student_layers(6, 3, "first") == [0, 1, 2]
    for bad in (0, 6, 7):
        with pytest.raises(ValueError, match="out of range"):
            student_layers(6, bad)
    with pytest.raises(ValueError, match="layer choice"):
        student_layers(6, 2, "random")


def test_distillation_loss_prefers_the_teachers_order() -> None:
    torch.manual_seed(0)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    teacher = torch.log(torch.rand(7, 3) * 0.5 + 0.01).cumsum(-1)  # funnel-shaped log-probabilities
    labels, weights = torch.zeros(7, 3), torch.ones(7)
    loss = DistillationLoss(["click", "add_to_cart", "purchase"], engagement_weight=0.0)
    same, _ = loss(teacher.clone(), labels, weights, groups, teacher=teacher)
    reversed_order = teacher[[3, 2, 1, 0, 6, 5, 4]]
    worse, per_task = loss(reversed_order, labels, weights, groups, teacher=teacher)
    assert float(same) < float(worse) and per_task.shape == (3,)
    with pytest.raises(ValueError, match="teacher"):
        loss(teacher, labels, weights, groups)


@pytest.mark.parametrize("spec, expected", [("small:100,full:20", CascadeSpec(100, 20)), ("small:50", CascadeSpec(50, 0)),
                                            ("full:5, small:10", CascadeSpec(10, 5)), ("small:10,full:0", CascadeSpec(10, 0))])
def test_cascade_spec_parses(spec: str, expected: CascadeSpec) -> None:
    assert CascadeSpec.parse(spec) == expected
    assert parse_cascade(str(expected)) == expected


@pytest.mark.parametrize("spec, message", [("small:x", "not a whole number"), ("full:20", "stage is missing"),
                                           ("small:0", ">= 1"), ("small:5,full:-1", ">= 0"),
                                           ("small:5,small:6", "twice"), ("big:5", "not small:N"), ("small5", "not small:N")])
def test_bad_cascade_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ShoprankError, match=message) as info:
        CascadeSpec.parse(spec)
    assert "\n" not in str(info.value) and "--rerank-cascade" in str(info.value)


# ----------------------------------------------------------------------------- demo build
@pytest.fixture(scope="module")
def student(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A 2-layer student of the quick demo's reranker, one epoch on the retriever's candidates,
    exported to ONNX: (demo root, student dir, report)."""
    from pipeline.blend import distill_reranker_on_index
    from pipeline.data import load_dataset

    root, _ = request.getfixturevalue("demo_run")
    out = tmp_path_factory.mktemp("student") / "reranker-small"
    report = distill_reranker_on_index(load_dataset(root / "data" / "sample"), root / "models" / "reranker", out,
                                       index_dir=root / "indexes" / "default", candidates=20, layers=2, epochs=1,
                                       progress=False)
    return root, out, report


@pytest.mark.slow
def test_student_imitates_loads_and_exports(student: tuple[Path, Path, dict]) -> None:
    from rerank.model import MultiTaskCrossEncoder
    from rerank.onnx_model import OnnxCrossEncoder

    root, out, report = student
    teacher = json.loads((root / "models" / "reranker" / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"] == {"id": teacher["id"], "path": str(root / "models" / "reranker")}
    assert "retrieval_weight" in manifest["fusion"] and report["teacher_layers_used"] == [0, 5]
    assert report["agreement"] > 0.2  # per-query Spearman with the teacher on valid; chance is 0
    loaded = MultiTaskCrossEncoder.load(out)
    assert loaded.encoder.config.num_hidden_layers == 2 and loaded.tasks == tuple(teacher["tasks"])
    texts = ["Oslo 3-seat sofa | Ikea | furniture", "Trail runner shoe | Fleet | Shoes | colour: red"] * 3
    queries = ["comfy couch"] * 3 + ["red running shoes"] * 3
    in_memory = report["model"].predict(queries, texts)
    np.testing.assert_array_equal(loaded.predict(queries, texts), in_memory)
    onnx = OnnxCrossEncoder.load(out, precision="fp32")
    np.testing.assert_allclose(onnx.predict(queries, texts), in_memory, atol=1e-5)
    np.testing.assert_array_equal(OnnxCrossEncoder.load(out, precision="fp32").predict(queries, texts),
                                  onnx.predict(queries, texts))
    assert OnnxCrossEncoder.load(out, precision="int8").predict(queries, texts).shape == (6, 3)


def _cascade(base: TwoStageSearcher, small: Any, spec: str | None, teacher: bool = True) -> TwoStageSearcher:
    """A searcher on ``base``'s retriever and catalog with the blend off (retrieval_weight 0),
    so each model's own order decides and the comparisons below are not retrieval order."""
    return TwoStageSearcher(base.retriever, base.reranker if teacher else None, base.catalog, retrieval_weight=0.0,
                            catalog_verified=True, student=small if spec else None, cascade=spec)


def _ranked(searcher: TwoStageSearcher, k: int = 15, **kw: Any) -> list[list[tuple[str, float, float]]]:
    return [[(h.product_id, h.score, h.probs["purchase"]) for h in hits]
            for hits in searcher.search_many(QUERIES, k=k, **kw)]


@pytest.mark.slow
def test_cascade_extremes_are_the_teacher_and_the_student(student: tuple[Path, Path, dict]) -> None:
    from rerank.loading import load_reranker

    root, out, _ = student
    base = TwoStageSearcher.load(root / "indexes" / "default", root / "models" / "reranker", backend="torch")
    small = load_reranker(out, "torch")
    teacher_only = _ranked(_cascade(base, small, None), candidates=20)
    student_only = _ranked(TwoStageSearcher(base.retriever, small, base.catalog, retrieval_weight=0.0,
                                            catalog_verified=True), candidates=20)
    assert teacher_only != student_only  # otherwise the checks below prove nothing
    assert _ranked(_cascade(base, small, "small:20,full:20")) == teacher_only
    assert _ranked(_cascade(base, small, "small:20,full:50")) == teacher_only
    assert _ranked(_cascade(base, small, "small:20,full:0")) == student_only
    assert _ranked(_cascade(base, small, "small:20", teacher=False)) == student_only
    mixed = _cascade(base, small, "small:20,full:5")
    teacher_all = _ranked(_cascade(base, small, None), k=20, candidates=20)
    for hits, ref in zip(mixed.search_many(QUERIES, k=15), teacher_all):
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)  # one scale: the score order is the served order
        head = [h.product_id for h in hits[:5]]
        assert head == [pid for pid, _, _ in ref if pid in set(head)]  # the top 5 in the teacher's order
    ids = mixed.manifest_ids()
    assert ids["cascade"] == "small:20,full:5" and ids["student"] == small.manifest["id"]


@pytest.mark.slow
def test_search_score_logs_and_serve_agree_on_a_cascade(student: tuple[Path, Path, dict], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from pipeline.serve import Artefacts, ServeSettings
    from pipeline.serve.app import create_app

    root, out, _ = student
    cascade = ["--student", str(out), "--rerank-cascade", "small:20,full:4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text("\n".join(QUERIES[:2]) + "\n")
    cli = subprocess.run([sys.executable, "-m", "pipeline", "search", "--queries-file", str(queries_file), "--k", "6",
                          *cascade, "--json"], cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert cli.returncode == 0, cli.stderr
    searched = json.loads(cli.stdout)
    assert searched["models"]["cascade"] == "small:20,full:4"
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"query": QUERIES[:2]}), log)
    scored = tmp_path / "scored.parquet"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "score-logs", "--input", str(log), "--output", str(scored),
                           "--k", "6", "--no-progress", *cascade], cwd=root, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(scored).to_pylist()
    settings = ServeSettings(Artefacts(root / "indexes/default", root / "models/reranker",
                                       root / "data/sample/catalog.parquet", student=out, cascade="small:20,full:4"))
    with TestClient(create_app(settings)) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.2)
        for item in searched["results"]:
            served = client.get("/search", params={"q": item["query"], "k": 6}).json()
            assert served["models"] == searched["models"]
            expected = [(h["product_id"], h["score"], h["p_purchase"]) for h in item["hits"]]
            assert [(h["product_id"], h["score"], h["p_purchase"]) for h in served["hits"]] == expected
            rows = [r for r in table if r["query"] == item["query"]]
            assert [(r["product_id"], r["score"], r["p_purchase"]) for r in sorted(rows, key=lambda r: r["rank"])] \
                == expected
