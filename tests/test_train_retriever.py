"""Engagement fine-tuning: depth weighting, hard-negative mining rules, and a real (tiny)
training run through sentence-transformers' trainer that saves a loadable model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import load_dataset
from retrieval.encoder import BUNDLED_SHA256, BiEncoder
from retrieval.train import DEPTH_COPIES, engagement_pairs, mine_hard_negatives, train_retriever
import pytest

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow


def test_engagement_pairs_weight_by_depth() -> None:
    eng = pd.DataFrame({"query": ["q", "q", "q", "q", "other"], "product_id": ["a", "b", "c", "d", "a"],
                        "impressions": [9, 9, 9, 9, 9], "clicks": [1, 2, 3, 0, 1],
                        "add_to_carts": [0, 1, 2, 0, 0], "purchases": [0, 0, 1, 0, 0]})
    pairs = engagement_pairs(eng, {"q"})
    assert dict(zip(pairs["product_id"], pairs["copies"])) == {
        "a": DEPTH_COPIES["clicks"], "b": DEPTH_COPIES["add_to_carts"], "c": DEPTH_COPIES["purchases"]}
    assert DEPTH_COPIES["purchases"] > DEPTH_COPIES["add_to_carts"] > DEPTH_COPIES["clicks"]


def test_mined_negatives_skip_engaged_products_and_near_duplicates() -> None:
    ids = ["pos", "also_engaged", "clone", "neg1", "neg2"]
    vecs = np.eye(5, dtype=np.float32)
    q = np.array([1.0, 0.9, 0.99, 0.5, 0.4], dtype=np.float32)
    vecs[2] = vecs[0]  # "clone" scores like the positive: probably an unlabelled positive
    pairs = pd.DataFrame({"query": ["q"], "product_id": ["pos"]})
    negs = mine_hard_negatives(pairs, {"q": {"pos", "also_engaged"}}, {"q": q}, vecs, ids, top_k=5)
    assert negs[0] in {"neg1", "neg2"}


def test_tiny_training_run_saves_a_plain_sentence_transformer(tiny_data_dir: Path, tmp_path: Path) -> None:
    dataset = load_dataset(tiny_data_dir)
    out = tmp_path / "retriever"
    small_pool = len(dataset.catalog) // 3  # validation on a pool, as on a large catalog
    report = train_retriever(dataset, out, epochs=1, batch_size=16, max_rows=64, seed=13, show_progress=False,
                             max_valid_products=small_pool)
    manifest = json.loads((out / "manifest.json").read_text())
    assert small_pool <= manifest["config"]["valid_products"] < len(dataset.catalog)
    assert manifest["kind"] == "retriever" and manifest["inputs"]["base_model_id"] == BUNDLED_SHA256
    assert report["model_id"] == manifest["weights_sha256"] != BUNDLED_SHA256  # weights actually changed
    assert len(report["valid_history"]) == 1
    for key in ("recall@100", "ndcg@10"):
        assert 0.0 <= report["valid_history"][0][key] <= 1.0
    assert "test" not in report  # test numbers are pipeline evaluate's alone
    assert 0.0 <= report["zero_shot_valid"]["ndcg@10"] <= 1.0

    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(out))  # standard format, no shoprank code needed
    ours = BiEncoder.load(out)
    assert ours.model_id == manifest["weights_sha256"]
    np.testing.assert_allclose(plain.encode(["red tent"], normalize_embeddings=True),
                               ours.encode_queries(["red tent"]), atol=1e-5)
