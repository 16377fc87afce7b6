"""CLI: train-reranker / adapt-lm / compare-rerankers as subprocesses — one-line errors on bad
input (exit 2, no traceback), and real tiny runs that write loadable artefacts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_dir_is_one_line_error(tmp_path: Path) -> None:
    _one_line_error(_run("train-reranker", "--data", "nowhere", "--out", "m", cwd=tmp_path), "nowhere")
    _one_line_error(_run("compare-rerankers", "--data", "nowhere", cwd=tmp_path), "nowhere")


def test_prior_weight_without_an_index_is_one_line_error(tiny_data_dir: Path, tmp_path: Path) -> None:
    """The retriever-order prior needs a retriever; without --index it is refused before training."""
    proc = _run("train-reranker", "--data", str(tiny_data_dir), "--prior-weight", "1", "--out", "m", cwd=tmp_path)
    _one_line_error(proc, "needs a prior")
    assert not (tmp_path / "m").exists()


def test_bad_options_are_one_line_errors(tiny_data_dir: Path, tmp_path: Path) -> None:
    proc = _run("train-reranker", "--data", str(tiny_data_dir), "--architecture", "transformer-xl",
                "--out", "m", cwd=tmp_path)
    _one_line_error(proc, "unknown architecture")
    proc = _run("train-reranker", "--data", str(tiny_data_dir), "--tasks", "purchase,click", "--out", "m", cwd=tmp_path)
    _one_line_error(proc, "funnel order")
    proc = _run("train-reranker", "--data", str(tiny_data_dir), "--objective", "pairwise", "--out", "m", cwd=tmp_path)
    _one_line_error(proc, "unknown objective")
    assert not (tmp_path / "m").exists()


def test_catalog_without_engagement_is_refused(tiny_data_dir: Path, tmp_path: Path) -> None:
    proc = _run("train-reranker", "--catalog", str(tiny_data_dir / "catalog.parquet"), "--out", "m", cwd=tmp_path)
    _one_line_error(proc, "engagement")


def test_corrupt_reranker_is_refused_through_library_error_path(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    code = "from rerank.model import MultiTaskCrossEncoder as M; M.load('m')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "ArtifactError" in proc.stderr and "no manifest.json" in proc.stderr


def test_adapt_lm_then_train_reranker_on_it(tiny_data_dir: Path, tmp_path: Path) -> None:
    """The domain-adapted encoder is a plain HF folder the reranker can start from."""
    proc = _run("adapt-lm", "--data", str(tiny_data_dir), "--out", "dbert", "--max-steps", "2",
                "--batch-size", "8", "--max-length", "32", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["steps"] == 2 and report["train_loss"] > 0
    assert json.loads((tmp_path / "dbert" / "manifest.json").read_text())["kind"] == "domain-bert"
    proc = _run("train-reranker", "--data", str(tiny_data_dir), "--encoder", "dbert", "--out", "rr",
                "--max-queries", "2", "--max-shown", "4", "--negatives", "1", "--epochs", "1",
                "--batch-size", "16", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tasks"] == ["click", "add_to_cart", "purchase"] and report["encoder"] == "dbert"
    assert set(report["validation"]) >= {"click_ndcg@10", "purchase_auc", "primary"}
    from rerank.model import MultiTaskCrossEncoder

    model = MultiTaskCrossEncoder.load(tmp_path / "rr")
    assert model.manifest["inputs"]["base_encoder"]["path"] == "dbert"
    assert model.predict(["x"], ["y"]).shape == (1, 3)


@pytest.mark.parametrize("variants", ["mmoe_funnel,nonsense"])
def test_compare_rejects_unknown_variant(tiny_data_dir: Path, tmp_path: Path, variants: str) -> None:
    proc = _run("compare-rerankers", "--data", str(tiny_data_dir), "--variants", variants, cwd=tmp_path)
    _one_line_error(proc, "nonsense")
