"""Batch scoring machinery: streaming, parts + atomic commit, exactly-once resume, dedup.

These tests drive :func:`pipeline.scoring.score_logs` (local engine) with a small deterministic scorer (a
hash of query and product), because what they check is the bookkeeping, not the models;
the end-to-end kill/resume test with the real models lives in test_cli_search.py.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.scoring import read_scored_metadata, score_logs
from pipeline.scoring.local import parts_dir
from pipeline.core.errors import DataError, ShoprankError
from pipeline.search import SearchHit

PRODUCTS = [f"p{i:03d}" for i in range(40)]
TASKS = ("click", "add_to_cart", "purchase")


def _h(*parts: str) -> float:
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class HashScorer:
    """Deterministic stand-in for TwoStageSearcher: scores are a hash of (query, product)."""

    tasks = TASKS

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def manifest_ids(self) -> dict[str, str]:
        return {"index": "idx1", "reranker": "rr1"}

    def has_product(self, product_id: str) -> bool:
        return product_id in PRODUCTS

    def _hit(self, query: str, pid: str, rank, rscore) -> SearchHit:
        probs = {t: _h(query, pid, t) for t in TASKS}
        return SearchHit(rank, pid, pid.upper(), rscore, probs, float(np.mean(list(probs.values()))))

    def search_many(self, queries, k=10, candidates=100):
        out = []
        for q in queries:
            self.calls.append(q)
            if self.fail_after is not None and len(self.calls) > self.fail_after:
                raise RuntimeError("simulated crash")
            ranked = sorted(PRODUCTS, key=lambda p: -_h(q, p))[:k]
            out.append([self._hit(q, p, r, _h(q, p)) for r, p in enumerate(ranked, 1)])
        return out

    def score_pairs(self, query, product_ids):
        self.calls.append(query)
        return [self._hit(query, p, None, float("nan")) for p in product_ids]


def _log(tmp_path, n=230, unique=37, name="log.parquet", **extra):
    queries = [f"query {i % unique}" for i in range(n)]
    frame = pd.DataFrame({"query_id": [f"q{i}" for i in range(n)], "query": queries, **extra})
    path = tmp_path / name
    frame.to_parquet(path, row_group_size=50)
    return path


def test_queries_mode_every_row_gets_k_rows_and_repeats_are_computed_once(tmp_path):
    path = _log(tmp_path)
    scorer = HashScorer()
    report = score_logs(path, tmp_path / "out.parquet", searcher=scorer, k=5, batch_size=64, show_progress=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert report["rows_in"] == 230 and report["rows_out"] == len(out) == 230 * 5
    assert len(scorer.calls) == 37 == report["computed"]  # each distinct query once
    assert out.groupby("input_row").size().eq(5).all()
    assert out["input_row"].tolist() == sorted(out["input_row"].tolist())
    row = out[out.input_row == 101]
    assert row["query"].unique().tolist() == ["query 27"] and row["query_id"].unique().tolist() == ["q101"]
    assert row["rank"].tolist() == [1, 2, 3, 4, 5]
    assert list(out.columns) == ["input_row", "query_id", "query", "rank", "product_id", "retrieval_score",
                                 "p_click", "p_add_to_cart", "p_purchase", "score"]
    meta = read_scored_metadata(tmp_path / "out.parquet")
    assert meta["models"] == {"index": "idx1", "reranker": "rr1"} and meta["rows_in"] == 230
    assert not parts_dir(tmp_path / "out.parquet").exists()


def test_crash_then_resume_equals_uninterrupted_run(tmp_path):
    path = _log(tmp_path, n=300, unique=300)
    full = tmp_path / "full.parquet"
    score_logs(path, full, searcher=HashScorer(), k=3, batch_size=40, show_progress=False)

    out = tmp_path / "resumed.parquet"
    with pytest.raises(RuntimeError):
        score_logs(path, out, searcher=HashScorer(fail_after=130), k=3, batch_size=40, show_progress=False)
    assert not out.exists()  # no half-written final file
    assert len(list(parts_dir(out).glob("part-*.parquet"))) == 3  # 3 complete batches of 40

    second = HashScorer()
    report = score_logs(path, out, searcher=second, k=3, batch_size=40, resume=True, show_progress=False)
    assert report["batches_resumed"] == 3 and len(second.calls) == 300 - 120
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(full))


def test_resume_refuses_changed_parameters(tmp_path):
    path = _log(tmp_path, n=100, unique=100)
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        score_logs(path, out, searcher=HashScorer(fail_after=50), k=3, batch_size=20, show_progress=False)
    with pytest.raises(ShoprankError, match="cannot resume, the params changed"):
        score_logs(path, out, searcher=HashScorer(), k=4, batch_size=20, resume=True, show_progress=False)
    # without --resume the stale parts are discarded and the job starts over
    report = score_logs(path, out, searcher=HashScorer(), k=4, batch_size=20, show_progress=False)
    assert report["batches_resumed"] == 0 and report["rows_out"] == 400


def test_pairs_mode_scores_given_pairs_and_skips_bad_rows(tmp_path):
    frame = pd.DataFrame({
        "query": ["red sofa", "red sofa", "  ", "red sofa", "lamp", None],
        "product_id": ["p001", "p002", "p003", "p001", "nope", "p004"],
    })
    path = tmp_path / "pairs.parquet"
    frame.to_parquet(path)
    scorer = HashScorer()
    report = score_logs(path, tmp_path / "o.parquet", searcher=scorer, batch_size=4, show_progress=False)
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert report["mode"] == "pairs"
    assert out["input_row"].tolist() == [0, 1, 3]
    assert out["product_id"].tolist() == ["p001", "p002", "p001"]
    assert out["rank"].isna().all() and out["retrieval_score"].isna().all()
    assert out.loc[0, "p_click"] == out.loc[2, "p_click"] == pytest.approx(_h("red sofa", "p001", "click"))
    assert report["skipped"] == {"empty query": 2, "product_id not in catalog": 1}
    assert report["first_skipped_row"]["empty query"] == 2


def test_csv_and_jsonl_inputs_stream_too(tmp_path):
    frame = pd.DataFrame({"query": ["a b", "c d", "a b"]})
    frame.to_csv(tmp_path / "log.csv", index=False)
    frame.to_json(tmp_path / "log.jsonl", orient="records", lines=True)
    for name in ("log.csv", "log.jsonl"):
        report = score_logs(tmp_path / name, tmp_path / f"{name}.parquet", searcher=HashScorer(), k=2,
                            batch_size=2, show_progress=False)
        assert report["rows_out"] == 6 and report["computed"] == 2


@pytest.mark.parametrize("case", ["missing_query_column", "unreadable", "missing_dir", "missing_input"])
def test_bad_inputs_are_one_line_errors(tmp_path, case):
    path = _log(tmp_path, n=10)
    out = tmp_path / "out.parquet"
    if case == "missing_query_column":
        pd.DataFrame({"text": ["x"]}).to_parquet(path)
        err, match = DataError, "missing required column 'query'"
    elif case == "unreadable":
        path.write_bytes(b"PAR1 this is not parquet")
        err, match = DataError, "not a readable Parquet file"
    elif case == "missing_dir":
        out = tmp_path / "nope" / "out.parquet"
        err, match = ShoprankError, "output directory does not exist"
    else:
        path = tmp_path / "absent.parquet"
        err, match = DataError, "query log not found"
    with pytest.raises(err, match=match) as info:
        score_logs(path, out, searcher=HashScorer(), show_progress=False)
    assert "\n" not in str(info.value)


def test_memory_stays_bounded_by_batch_not_log(tmp_path):
    """Peak Arrow allocation while scoring a 20k-row log stays far below the log's output size."""
    path = _log(tmp_path, n=20_000, unique=500)
    pool = pa.default_memory_pool()
    before = pool.max_memory()
    score_logs(path, tmp_path / "big.parquet", searcher=HashScorer(), k=10, batch_size=500, show_progress=False)
    meta = pq.ParquetFile(tmp_path / "big.parquet").metadata
    assert meta.num_rows == 200_000
    out_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    assert pool.max_memory() - before < out_bytes / 2
    assert json.loads(pq.read_schema(tmp_path / "big.parquet").metadata[b"shoprank"])["params"]["k"] == 10


@pytest.mark.parametrize("engine, options, match", [
    ("spark", {}, "--engine must be 'local' or 'ray'"),
    ("local", {"workers": 2}, "--address and --workers need --engine ray"),
    ("ray", {"resume": True}, "--resume is for the local engine"),
    ("ray", {"backend": "torch"}, "--backend/--precision are for the local engine"),
    ("ray", {"precision": "int8"}, "--backend/--precision are for the local engine"),
    ("ray", {"searcher": HashScorer()}, "pass model paths, not a searcher"),
])
def test_engine_options_it_cannot_honour_are_refused_before_any_work(tmp_path, engine, options, match):
    """One check for both engines, before the input is read or a model (or Ray) is loaded."""
    with pytest.raises(ShoprankError, match=match) as info:
        score_logs(tmp_path / "absent.parquet", tmp_path / "out.parquet", engine=engine, show_progress=False,
                   **options)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- a real index
def test_score_logs_refuses_a_changed_catalog_unless_allowed(tmp_path, changed_catalog_index, monkeypatch):
    """Like search, score-logs refuses a catalog whose product text changed since indexing and
    takes --allow-catalog-change to score with it anyway (here with hybrid retrieval)."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.core.errors import ArtifactError

    monkeypatch.chdir(tmp_path)  # no models/reranker here: retrieval order (with a note)
    log = _log(tmp_path, n=6, unique=3)
    args = ["score-logs", "--input", str(log), "--index", str(changed_catalog_index["index_dir"]),
            "--catalog", str(changed_catalog_index["changed"]), "--k", "3", "--no-progress", "--json"]
    refused = CliRunner().invoke(app, [*args, "--output", "refused.parquet"])
    assert isinstance(refused.exception, ArtifactError), refused.output
    assert "does not match index" in str(refused.exception) and "--allow-catalog-change" in str(refused.exception)
    assert not (tmp_path / "refused.parquet").exists()
    allowed = CliRunner().invoke(app, [*args, "--output", "allowed.parquet", "--allow-catalog-change",
                                       "--retrieval", "hybrid"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["models"]["retrieval"].startswith("hybrid-")
    assert pq.read_table(tmp_path / "allowed.parquet").num_rows == 6 * 3
