"""Stage-1 CLI through real subprocesses: build / info / remove / add, a SIGKILLed build
leaving the previous index intact, and one-line refusals of bad models and indexes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_encoder import tampered_copy

from retrieval.encoder import BUNDLED_SHA256, bundled_model_path
from retrieval.index import build_from_vectors

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0, proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert needle in errors[0], errors[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def work(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working dir with a small catalog, its extension, and a built hnsw index."""
    root = tmp_path_factory.mktemp("cli_retrieval")
    catalog = pd.read_parquet(tiny_data_dir / "catalog.parquet")
    catalog.iloc[:80].to_parquet(root / "small.parquet")
    catalog.iloc[80:90].to_parquet(root / "extra.parquet")
    # big enough (2,000 products) that encoding takes seconds even on a fast machine
    big = pd.concat([catalog.assign(product_id=catalog["product_id"] + f"-{i}") for i in range(5)])
    big.to_parquet(root / "big.parquet")
    proc = cli("build-index", "--catalog", "small.parquet", "--index-type", "hnsw", "--out", "indexes/main",
               "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


def info(work: Path, index: str = "indexes/main") -> dict:
    proc = cli("index", "info", "--index", index, "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_build_info_remove_add(work: Path) -> None:
    details = info(work)
    assert details["live"] == 80 and details["tombstoned"] == 0 and details["model_id"] == BUNDLED_SHA256
    assert details["build_seconds"] is not None and details["index_bytes"] > 0 and details["query_latency_ms"]
    first = pd.read_parquet(work / "small.parquet")["product_id"].iloc[0]
    subprocess_ok = cli("index", "remove", first, "--index", "indexes/main", cwd=work)
    assert subprocess_ok.returncode == 0, subprocess_ok.stderr
    assert info(work)["tombstoned"] == 1  # HNSW cannot delete: tombstone
    added = cli("index", "add", "--catalog", "extra.parquet", "--index", "indexes/main", cwd=work)
    assert added.returncode == 0, added.stderr
    details = info(work)
    assert details["live"] == 89 and details["tombstoned"] == 1
    assert_one_line_error(cli("index", "remove", "NOPE", "--index", "indexes/main", cwd=work), "not live")


def test_sigkill_during_build_leaves_previous_index(work: Path) -> None:
    build = ["build-index", "--catalog", "small.parquet", "--out", "indexes/victim", "--json"]
    assert cli(*build, cwd=work).returncode == 0
    before = json.loads((work / "indexes/victim/manifest.json").read_text())["id"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "build-index", "--catalog", "big.parquet",
                             "--out", "indexes/victim"], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it is encoding (the long part), then kill it
        if line.startswith("encoding"):
            break
    time.sleep(0.5)
    assert proc.poll() is None, "build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((work / "indexes/victim/manifest.json").read_text())["id"] == before
    assert info(work, "indexes/victim")["live"] == 80


def test_tampered_model_is_refused(work: Path, tmp_path: Path) -> None:
    folder = tampered_copy(tmp_path / "minilm")
    proc = cli("build-index", "--catalog", "small.parquet", "--model", str(folder), "--out", "indexes/x", cwd=work)
    assert_one_line_error(proc, "checksum mismatch")
    assert not (work / "indexes/x").exists()


def test_index_built_with_another_model_is_refused(work: Path, tmp_path: Path) -> None:
    other = tampered_copy(tmp_path / "other", keep_card=False)  # different weights, no bundled claim
    assert_one_line_error(cli("index", "info", "--index", "indexes/main", "--model", str(other), cwd=work),
                          "built with model")


def test_corrupt_index_file_is_refused(work: Path) -> None:
    rng = np.random.default_rng(0)
    build_from_vectors(rng.standard_normal((300, 32)).astype(np.float32), [f"p{i}" for i in range(300)],
                       work / "indexes/corrupt", index_type="hnsw")
    index_file = work / "indexes/corrupt/index.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 3] ^= 0xFF
    index_file.write_bytes(bytes(data))
    assert_one_line_error(cli("index", "info", "--index", "indexes/corrupt", cwd=work), "corrupt index file")


def test_wrong_dimension_index_is_refused(work: Path) -> None:
    model = {"model_id": BUNDLED_SHA256, "model_path": str(bundled_model_path()), "model_name": "bundled"}
    vecs = np.eye(16, dtype=np.float32)
    build_from_vectors(vecs, [f"p{i}" for i in range(16)], work / "indexes/dim16", model=model)
    proc = cli("index", "add", "--catalog", "extra.parquet", "--index", "indexes/dim16", cwd=work)
    assert_one_line_error(proc, "dimension")
