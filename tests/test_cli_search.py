"""`pipeline search` / `score-logs` through the real CLI (subprocesses), on the quick demo's
artefacts: default paths, pipeline.toml defaults, bad input, and SIGKILL + --resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.scoring import score_logs
from pipeline.scoring.local import parts_dir

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def test_search_uses_demo_artefacts_and_config_defaults(demo_run, tmp_path):
    root, report = demo_run
    config = tmp_path / "pipeline.toml"
    config.write_text("[search]\nk = 3\ncandidates = 15\n", encoding="utf-8")
    env = {"SHOPRANK_CONFIG": str(config)}
    result = _run("search", report["try"], "--json", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    hits = payload["results"][0]["hits"]
    assert payload["reranked"] and len(hits) == 3  # k from pipeline.toml
    assert {"p_click", "p_add_to_cart", "p_purchase", "score", "retrieval_score", "title"} <= set(hits[0])
    table = _run("search", report["try"], "--k", "2", cwd=root, env=env)  # the flag beats the file
    assert table.returncode == 0, table.stderr
    assert "p_purchase" in table.stdout and "retrieval_score" in table.stdout
    ranks = [line.split("│")[1].strip() for line in table.stdout.splitlines() if line.startswith("│")]
    assert [r for r in ranks if r.isdigit()] == ["1", "2"]


@pytest.mark.parametrize("query", ["", "   "])
def test_blank_search_is_one_line_error(tmp_path, query):
    _assert_one_line_error(_run("search", query, cwd=tmp_path), "query is empty")


def test_ten_thousand_character_query_is_answered_with_a_note(demo_run):
    root, _ = demo_run
    result = _run("search", "comfy couch " * 834, "--k", "2", "--candidates", "5", cwd=root)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "searched its first 512" in result.stderr and "p_click" in result.stdout


def test_search_without_reranker_says_so_and_uses_retrieval_order(demo_run, tmp_path):
    root, _ = demo_run
    result = _run("search", "comfy couch", "--index", str(root / "indexes/default"), "--catalog",
                  str(root / "data/sample/catalog.parquet"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no trained reranker" in result.stderr and "retrieval order" in result.stdout


@pytest.mark.parametrize("case", ["missing_query_column", "unreadable_parquet", "missing_dir", "read_only_dir"])
def test_score_logs_bad_input_is_one_line_error(tmp_path, case):
    log = tmp_path / "log.parquet"
    pd.DataFrame({"query": ["red sofa"]}).to_parquet(log)
    out = tmp_path / "out.parquet"
    if case == "missing_query_column":
        pd.DataFrame({"search_text": ["red sofa"]}).to_parquet(log)
        needle = "missing required column 'query'"
    elif case == "unreadable_parquet":
        log.write_bytes(b"PAR1" + os.urandom(64))
        needle = "not a readable Parquet file"
    elif case == "missing_dir":
        out = tmp_path / "no" / "such" / "out.parquet"
        needle = "output directory does not exist"
    else:
        if os.geteuid() == 0:  # root ignores permission bits; use a directory no one can create files in
            out = Path("/sys/out.parquet")
        else:
            ro = tmp_path / "ro"
            ro.mkdir(mode=0o555)
            out = ro / "out.parquet"
        needle = "output directory is not writable"
    result = _run("score-logs", "--input", str(log), "--output", str(out), cwd=tmp_path)
    _assert_one_line_error(result, needle)


def test_sigkill_then_resume_equals_uninterrupted_run(demo_run, tmp_path):
    root, _ = demo_run
    # 30 distinct queries, 2 per batch: every batch does real model work (no cache hits),
    # so there is a "half-way" to kill at; 15 batches in all.
    queries = pd.read_parquet(root / "data/sample/queries.parquet")["query"].drop_duplicates().tolist()[:30]
    log = tmp_path / "log.parquet"
    pd.DataFrame({"query_id": [f"r{i}" for i in range(len(queries))], "query": queries}).to_parquet(log)
    args = ["--k", "3", "--candidates", "5", "--batch-size", "2", "--no-progress"]

    full = tmp_path / "full.parquet"
    score_logs(log, full, index_dir=root / "indexes/default", reranker=root / "models/reranker",
               catalog=root / "data/sample/catalog.parquet", k=3, candidates=5, batch_size=2, show_progress=False)

    out = tmp_path / "scored.parquet"
    cmd = [sys.executable, "-m", "pipeline", "score-logs", "--input", str(log), "--output", str(out), *args]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts, deadline = parts_dir(out), time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(parts.glob("part-*.parquet"))) >= 7:  # 15 batches in all: kill half-way
            break
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("part-*.parquet")))
    assert not out.exists() and 7 <= done < 15

    resumed = _run("score-logs", "--input", str(log), "--output", str(out), *args, "--resume", "--json", cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["batches_resumed"] == done and report["rows_in"] == len(queries)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(full))
    meta = [json.loads(pq.read_schema(p).metadata[b"shoprank"]) for p in (out, full)]
    assert meta[0]["models"] == meta[1]["models"] and not parts.exists()
