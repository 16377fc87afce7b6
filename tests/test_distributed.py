"""Ray engine (pipeline.scoring.ray) against the local engine, on the quick demo's real models.

One local 2-CPU Ray instance serves the whole module (start-up costs seconds); the engine
reuses an initialised Ray instead of starting its own. The acceptance checks: identical
output to the local engine on the sample query log, and a batch that fails once is retried
by Ray with every row still in the output exactly once.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'shoprank[ray]'); "
                                        "`make test` installs it and runs these tests")

from pipeline.distributed import FAIL_ONCE_ENV, build_index_ray  # noqa: E402
from pipeline.scoring import read_scored_metadata, score_logs  # noqa: E402
from pipeline.scoring.ray import plan_batches, read_rows  # noqa: E402


def score_logs_ray(*args, **kwargs):
    """The one entry point with the Ray engine."""
    return score_logs(*args, engine="ray", **kwargs)

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow

K, CANDIDATES, BATCH = 5, 20, 48


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray for the module (no dashboard), shut down afterwards."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def artefacts(demo_run) -> dict[str, Path]:
    root, _ = demo_run
    return {"index_dir": root / "indexes/default", "reranker": root / "models/reranker",
            "catalog": root / "data/sample/catalog.parquet"}


@pytest.fixture(scope="module")
def local_scored(demo_run, artefacts, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The demo's sample query log scored by the local engine (the reference)."""
    log = demo_run[0] / "data/sample/query_log.parquet"
    out = tmp_path_factory.mktemp("local") / "scored.parquet"
    report = score_logs(log, out, k=K, candidates=CANDIDATES, batch_size=BATCH, show_progress=False, **artefacts)
    return log, out, report


def _same_rows(a: Path, b: Path) -> None:
    """Same columns, rows and order; floats equal to 1e-5."""
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=False, rtol=0, atol=1e-5)


def test_plan_and_row_reader_cut_the_local_engines_batches(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"query": [f"q{i}" for i in range(23)]}).to_parquet(path, row_group_size=5)
    plan = plan_batches(23, 10)
    assert [(p["start"], p["stop"]) for p in plan] == [(0, 10), (10, 20), (20, 23)]
    assert read_rows(path, 8, 17, ["query"]).column("query").to_pylist() == [f"q{i}" for i in range(8, 17)]
    assert plan_batches(0, 10) == []


def test_ray_engine_output_equals_local_engine(local_ray, artefacts, local_scored, tmp_path):
    log, reference, local_report = local_scored
    out = tmp_path / "ray.parquet"
    report = score_logs_ray(log, out, k=K, candidates=CANDIDATES, batch_size=BATCH, workers=2,
                            show_progress=False, **artefacts)
    _same_rows(reference, out)
    assert pq.read_schema(out).remove_metadata() == pq.read_schema(reference).remove_metadata()
    meta, local_meta = read_scored_metadata(out), read_scored_metadata(reference)
    for key in ("kind", "models", "params", "rows_in"):
        assert meta[key] == local_meta[key]
    for key in ("mode", "rows_in", "rows_out", "batches", "skipped", "models"):
        assert report[key] == local_report[key]
    assert report["engine"] == "ray" and report["workers"] == 2
    assert sum(w["rows"] for w in report["per_worker"]) == report["rows_in"]


def test_a_batch_that_fails_once_is_retried_and_every_row_is_there_once(
        local_ray, artefacts, local_scored, tmp_path, monkeypatch):
    log, reference, _ = local_scored
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_ONCE_ENV, f"{BATCH + 3}:{marker}")  # the second batch fails on its first attempt
    out = tmp_path / "ray.parquet"
    report = score_logs_ray(log, out, k=K, candidates=CANDIDATES, batch_size=BATCH, workers=2,
                            show_progress=False, **artefacts)
    assert marker.read_text().strip().endswith(f"rows {BATCH}-{2 * BATCH}")  # the failure did happen
    scored = pd.read_parquet(out)
    n = pq.ParquetFile(log).metadata.num_rows
    assert sorted(scored["input_row"].unique()) == list(range(n))  # every row...
    assert scored.groupby("input_row").size().eq(K).all()          # ...exactly once (K hits each)
    assert not scored.duplicated(["input_row", "rank"]).any()
    assert report["rows_in"] == n and report["rows_out"] == len(scored)
    _same_rows(reference, out)


def test_without_retries_a_failing_batch_fails_the_job_with_one_line(local_ray, artefacts, local_scored,
                                                                     tmp_path, monkeypatch):
    """Retries are a bounded budget (a deterministic bug must not loop): with none, the
    injected failure ends the job with a one-line error and no output file."""
    from pipeline.core.errors import ShoprankError

    log, _, _ = local_scored
    monkeypatch.setenv(FAIL_ONCE_ENV, f"0:{tmp_path / 'failed-once'}")
    out = tmp_path / "ray.parquet"
    with pytest.raises(ShoprankError, match="Ray job failed") as info:
        score_logs_ray(log, out, k=K, candidates=CANDIDATES, batch_size=BATCH, workers=1, retries=0,
                       show_progress=False, **artefacts)
    assert "\n" not in str(info.value) and not out.exists()


def test_pairs_mode_equals_local_engine_including_skips(local_ray, artefacts, demo_run, tmp_path):
    catalog = pd.read_parquet(artefacts["catalog"])
    queries = pd.read_parquet(demo_run[0] / "data/sample/query_log.parquet")["query"].tolist()[:30]
    pids = catalog["product_id"].tolist()[:30]
    pids[4], queries[7] = "no-such-product", "   "
    log = tmp_path / "pairs.parquet"
    pd.DataFrame({"query": queries, "product_id": pids}).to_parquet(log)
    local = score_logs(log, tmp_path / "local.parquet", batch_size=8, show_progress=False, **artefacts)
    remote = score_logs_ray(log, tmp_path / "ray.parquet", batch_size=8, workers=2, show_progress=False, **artefacts)
    _same_rows(tmp_path / "local.parquet", tmp_path / "ray.parquet")
    assert remote["mode"] == "pairs" and remote["skipped"] == local["skipped"] == {
        "product_id not in catalog": 1, "empty query": 1}
    assert remote["first_skipped_row"] == local["first_skipped_row"]


def test_retrieval_mode_and_catalog_change_reach_every_actor(local_ray, changed_catalog_index, tmp_path,
                                                            monkeypatch):
    """--retrieval hybrid and --allow-catalog-change are the searcher's load options, so the
    Ray actors load with them too: the Ray engine then writes what the local engine writes
    (no reranker here: retrieval order), and records the hybrid fusion among the models."""
    monkeypatch.chdir(tmp_path)  # no models/reranker here
    catalog = pd.read_parquet(changed_catalog_index["changed"])
    queries = [" ".join(title.lower().split()[:2]) for title in catalog["title"].tolist()[:8]] * 2
    log = tmp_path / "log.parquet"
    pd.DataFrame({"query": queries}).to_parquet(log)
    options = dict(index_dir=changed_catalog_index["index_dir"], catalog=changed_catalog_index["changed"],
                   retrieval="hybrid", allow_catalog_change=True, k=K, batch_size=4, show_progress=False)
    local = score_logs(log, tmp_path / "local.parquet", **options)
    remote = score_logs_ray(log, tmp_path / "ray.parquet", workers=2, **options)
    assert remote["models"] == local["models"] and local["models"]["retrieval"].startswith("hybrid-")
    assert remote["rows_out"] == local["rows_out"] == len(queries) * K
    _same_rows(tmp_path / "local.parquet", tmp_path / "ray.parquet")


def test_build_index_ray_gives_the_local_index(local_ray, tiny_data_dir, tmp_path):
    from retrieval.encoder import BiEncoder
    from retrieval.index import Retriever, build_index

    catalog = pd.read_parquet(tiny_data_dir / "catalog.parquet").head(150)
    encoder = BiEncoder.load()
    local = build_index(catalog, encoder, tmp_path / "local", show_progress=False)
    remote = build_index_ray(catalog, encoder, tmp_path / "ray", workers=2, chunk_size=40, show_progress=False)
    for key in ("model_id", "catalog_fingerprint", "dim", "count", "factory"):
        assert remote[key] == local[key]
    a, b = Retriever.load(tmp_path / "local", encoder), Retriever.load(tmp_path / "ray", encoder)
    assert a.catalog_ids == b.catalog_ids
    va = np.vstack([a.index.reconstruct(i) for i in range(a.index.ntotal)])
    vb = np.vstack([b.index.reconstruct(i) for i in range(b.index.ntotal)])
    np.testing.assert_allclose(va, vb, atol=1e-5)
    assert a.search(["comfy couch"], k=10)[0] == b.search(["comfy couch"], k=10)[0]



def test_build_index_ray_encodes_like_the_local_onnx_encoder(local_ray, tiny_data_dir, tmp_path):
    """Actors use the driver's encoding (ONNX fp32 / int8 from the model's export), not torch."""
    import shutil

    from pipeline.core.artifacts import bundled_model_path
    from retrieval.encoder import verify_model_folder
    from retrieval.index import Retriever, build_index
    from retrieval.onnx_encoder import OnnxBiEncoder, export_bi_encoder

    model = tmp_path / "model"
    shutil.copytree(bundled_model_path(), model)
    export_bi_encoder(model)
    model_id = verify_model_folder(model)[0]
    catalog = pd.read_parquet(tiny_data_dir / "catalog.parquet").head(150)
    vectors = {}
    for precision in ("fp32", "int8"):
        encoder = OnnxBiEncoder.load(model, model_id, precision=precision)
        local = build_index(catalog, encoder, tmp_path / f"local-{precision}", show_progress=False)
        remote = build_index_ray(catalog, encoder, tmp_path / f"ray-{precision}", workers=2, chunk_size=40,
                                 show_progress=False)
        assert remote["encoded_with"] == local["encoded_with"] == f"onnx-{precision}"
        vectors[precision] = [Retriever.load(tmp_path / f"{where}-{precision}", load_encoder=False).index
                              .reconstruct_n(0, len(catalog)) for where in ("local", "ray")]
    np.testing.assert_allclose(*vectors["fp32"], atol=1e-5)
    # int8 activations are quantised per batch, and Ray's chunks batch differently: close, not equal
    local_int8, ray_int8 = vectors["int8"]
    assert (local_int8 * ray_int8).sum(1).min() > 0.99
    assert not np.allclose(ray_int8, vectors["fp32"][0], atol=1e-4)  # really the int8 graph

def test_cli_ray_engine_refuses_what_it_cannot_do(tmp_path):
    """One-line errors, no traceback: non-Parquet logs and --resume are local-engine only."""
    log = tmp_path / "log.csv"
    log.write_text("query\nred sofa\n")
    for extra, expected in ((["--input", str(log)], "reads Parquet"),
                            (["--input", str(tmp_path / "x.parquet"), "--resume"], "--resume")):
        proc = subprocess.run([sys.executable, "-m", "pipeline", "score-logs", "--engine", "ray", *extra,
                               "--output", str(tmp_path / "out.parquet")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], proc.stderr


def test_cli_score_logs_engine_ray(local_ray, artefacts, local_scored, tmp_path):
    """`pipeline score-logs --engine ray --workers 2` end to end (in-process, sharing the module's Ray)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    log, reference, _ = local_scored
    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(app, [
        "score-logs", "--engine", "ray", "--workers", "2", "--input", str(log), "--output", str(out),
        "--k", str(K), "--candidates", str(CANDIDATES), "--batch-size", str(BATCH), "--no-progress", "--json",
        "--index", str(artefacts["index_dir"]), "--reranker", str(artefacts["reranker"]),
        "--catalog", str(artefacts["catalog"])])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds the report alone, Ray's output goes to stderr
    assert report["engine"] == "ray" and report["workers"] == 2
    _same_rows(reference, out)
