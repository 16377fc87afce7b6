"""BiEncoder: bundled model checksum, refusal of tampered weights, normalised shared-space vectors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ArtifactError
from retrieval.encoder import BUNDLED_SHA256, BiEncoder, bundled_model_path


@pytest.fixture(scope="module")
def encoder() -> BiEncoder:
    return BiEncoder.load()


def tampered_copy(dest: Path, keep_card: bool = True) -> Path:
    """Copy the bundled model and flip bytes in the middle of model.safetensors."""
    shutil.copytree(bundled_model_path(), dest)
    if not keep_card:
        (dest / "README.md").unlink()
    weights = dest / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        chunk = fh.read(16)
        fh.seek(weights.stat().st_size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    return dest


def test_bundled_model_is_verified_and_described(encoder: BiEncoder) -> None:
    assert encoder.model_id == BUNDLED_SHA256
    assert encoder.dim == 384
    desc = encoder.describe()
    assert desc["model_id"] == BUNDLED_SHA256 and desc["dim"] == 384


def test_vectors_are_normalised_float32_and_deterministic(encoder: BiEncoder) -> None:
    texts = ["red trail running shoe", "stainless steel saucepan set", "waterproof hiking boots"]
    a = encoder.encode_queries(texts)
    b = encoder.encode_products(list(reversed(texts)), show_progress=False)[::-1]
    assert a.dtype == np.float32 and a.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # one shared model: the same text gives the same vector through either method, in input order
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert encoder.encode_queries([]).shape == (0, 384)


def test_related_texts_are_closer(encoder: BiEncoder) -> None:
    q = encoder.encode_queries(["running trainers"])[0]
    p = encoder.encode_products(["Road Running Shoe | Marlowe | Running Shoes", "Copper Saucepan Set | Orbis | Saucepans"],
                                show_progress=False)
    assert q @ p[0] > q @ p[1]


def test_tampered_copy_of_bundled_model_is_refused(tmp_path: Path) -> None:
    folder = tampered_copy(tmp_path / "minilm")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        BiEncoder.load(folder)


def test_trained_model_manifest_checksum_is_enforced(tmp_path: Path) -> None:
    folder = tampered_copy(tmp_path / "tuned", keep_card=False)
    (folder / "manifest.json").write_text(json.dumps({"kind": "retriever", "weights_sha256": BUNDLED_SHA256}))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        BiEncoder.load(folder)


def test_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as err:
        BiEncoder.load(tmp_path / "nope")
    assert "\n" not in str(err.value)
