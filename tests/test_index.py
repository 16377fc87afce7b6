"""FAISS index: presets, recall of the approximate types, slots/tombstones, add/remove/compact,
integrity checks, and real text search on the tiny world."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import ArtifactError, DataError
from retrieval.encoder import BiEncoder
from retrieval.index import (
    Retriever, add_products, build_from_vectors, build_index, compact_index, remove_products,
)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(n: int, dim: int, seed: int = 0, centers: int = 64) -> np.ndarray:
    """Unit vectors around a few centres: text embeddings cluster by topic, isotropic noise does not."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(centers, size=n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def encoder() -> BiEncoder:
    return BiEncoder.load()


@pytest.fixture(scope="module")
def catalog(tiny_data_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(tiny_data_dir / "catalog.parquet")


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_approximate_indexes_recall_against_flat(tmp_path: Path, index_type: str) -> None:
    vecs, queries = clustered_vectors(4000, 48), clustered_vectors(50, 48, seed=1)
    ids = [f"p{i}" for i in range(len(vecs))]
    build_from_vectors(vecs, ids, tmp_path / "flat", index_type="flat")
    manifest = build_from_vectors(vecs, ids, tmp_path / index_type, index_type=index_type)
    assert manifest["factory"].startswith("HNSW" if index_type == "hnsw" else "IVF")
    if index_type == "ivfpq":
        assert manifest["factory"].endswith("RFlat") and manifest["search_params"]["nprobe"] >= 1
    truth, _ = Retriever.load(tmp_path / "flat", load_encoder=False).search_vectors(queries, 100)
    got, scores = Retriever.load(tmp_path / index_type, load_encoder=False).search_vectors(queries, 100)
    recall = np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got)])
    assert recall >= 0.95, recall
    assert all(np.all(np.diff(s) <= 1e-6) for s in scores)  # sorted by score


def test_manifest_records_what_made_the_index(tmp_path: Path) -> None:
    m = build_from_vectors(unit_vectors(300, 16), [f"p{i}" for i in range(300)], tmp_path / "i",
                           index_type="hnsw", efSearch=64)
    for key in ("factory", "dim", "count", "index_sha256", "build_seconds", "query_latency_ms", "search_params"):
        assert key in m
    assert m["dim"] == 16 and m["count"] == 300 and m["search_params"]["efSearch"] == 64
    assert Retriever.load(tmp_path / "i", load_encoder=False).info()["live"] == 300


def test_flat_remove_deletes_and_hnsw_remove_tombstones(tmp_path: Path) -> None:
    vecs = unit_vectors(500, 16)
    ids = [f"p{i}" for i in range(500)]
    for kind, counted in (("flat", "removed"), ("hnsw", "tombstoned")):
        build_from_vectors(vecs, ids, tmp_path / kind, index_type=kind)
        m = remove_products(tmp_path / kind, ["p3", "p7"])
        assert m[counted] == 2 and m["live"] == 498
        r = Retriever.load(tmp_path / kind, load_encoder=False)
        got, _ = r.search_vectors(vecs[[3, 7, 9]], 10)
        assert all("p3" not in row and "p7" not in row for row in got)
        assert all(len(row) == 10 for row in got)  # over-fetch still fills k
        assert got[2][0] == "p9"
    compacted = compact_index(tmp_path / "hnsw")
    assert compacted["tombstoned"] == 0 and compacted["count"] == 498
    with pytest.raises(DataError, match="not live"):
        remove_products(tmp_path / "hnsw", ["p3"])


def test_corrupt_and_mismatched_indexes_are_refused(tmp_path: Path, encoder: BiEncoder) -> None:
    vecs = unit_vectors(200, 16)
    build_from_vectors(vecs, [f"p{i}" for i in range(200)], tmp_path / "i")
    index_file = tmp_path / "i" / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        Retriever.load(tmp_path / "i", load_encoder=False)
    # right model id, wrong dimension
    build_from_vectors(vecs, [f"p{i}" for i in range(200)], tmp_path / "d", model=encoder.describe() | {"dim": 16})
    with pytest.raises(ArtifactError, match="dimension"):
        Retriever.load(tmp_path / "d", encoder)
    # right dimension, another model
    other = {"model_id": "0" * 64, "model_path": "/elsewhere", "model_name": "other"}
    build_from_vectors(unit_vectors(50, 384), [f"p{i}" for i in range(50)], tmp_path / "o", model=other)
    with pytest.raises(ArtifactError, match="built with model"):
        Retriever.load(tmp_path / "o", encoder)
    with pytest.raises(ArtifactError, match="built with model"):  # attached after loading (parallel search load)
        Retriever.load(tmp_path / "o", load_encoder=False).use_encoder(encoder)


def test_verified_index_is_rehashed_only_after_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.core.artifacts as artifacts

    hashed: list[Path] = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p, *a: hashed.append(Path(p)) or real(p, *a))
    build_from_vectors(unit_vectors(200, 16), [f"p{i}" for i in range(200)], tmp_path / "i")
    assert len(hashed) == 1  # the build hashes the file once, and remembers it for the loads
    hashed.clear()
    Retriever.load(tmp_path / "i", load_encoder=False)
    Retriever.load(tmp_path / "i", load_encoder=False)
    assert hashed == []
    monkeypatch.setenv("SHOPRANK_VERIFY", "full")
    Retriever.load(tmp_path / "i", load_encoder=False)
    assert len(hashed) == 1
    monkeypatch.delenv("SHOPRANK_VERIFY")
    # Same size and the old mtime put back: the write still moved ctime, so it is re-hashed.
    index_file = tmp_path / "i" / "index.faiss"
    before = index_file.stat()
    time.sleep(0.02)
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    os.utime(index_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ArtifactError, match="corrupt"):
        Retriever.load(tmp_path / "i", load_encoder=False)
    assert len(hashed) == 2


def test_text_search_add_and_replace(tmp_path: Path, encoder: BiEncoder, catalog: pd.DataFrame) -> None:
    base, extra = catalog.iloc[:120].reset_index(drop=True), catalog.iloc[120:130].reset_index(drop=True)
    m = build_index(base, encoder, tmp_path / "idx", "hnsw", show_progress=False)
    assert m["model_id"] == encoder.model_id and m["count"] == 120 and m["catalog_fingerprint"]
    r = Retriever.load(tmp_path / "idx")  # encoder from the manifest
    ids, scores = r.search(base["title"].iloc[:5].tolist(), k=5)
    assert [row[0] for row in ids] == base["product_id"].iloc[:5].tolist()
    add_products(tmp_path / "idx", extra, encoder, show_progress=False)
    changed = base.iloc[[0]].assign(title="Inflatable Flamingo Pool Float")
    m = add_products(tmp_path / "idx", changed, encoder, show_progress=False)
    assert m["live"] == 130 and m["tombstoned"] == 1
    r = Retriever.load(tmp_path / "idx", encoder)
    ids, _ = r.search([extra["title"].iloc[0], "Inflatable Flamingo Pool Float"], k=3)
    assert ids[0][0] == extra["product_id"].iloc[0]
    assert ids[1][0] == base["product_id"].iloc[0]
    assert len(r.catalog_ids) == 130 and len(set(r.catalog_ids)) == 130
