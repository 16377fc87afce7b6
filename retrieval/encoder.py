"""BiEncoder: one sentence-transformers model that embeds both queries and products.

Why a wrapper around ``SentenceTransformer`` at all:
* **Provenance.** Every vector we store must be traceable to the exact weights that made
  it, so an index never silently mixes vectors from two models. ``model_id`` is the sha256
  of the weights file; indexes record it and refuse a different query model.
* **Integrity.** The bundled all-MiniLM-L6-v2 ships with a known checksum; a folder that
  claims to be that model (byte-identical model card) or a shoprank-trained model (its
  ``manifest.json`` records ``weights_sha256``) must still match it, or we refuse to load.
* **One text template.** Product text comes from :func:`pipeline.data.product_text`, the
  template shared with the cross-encoder; a trained model records the fields it learned
  from (:func:`model_text_fields`), and indexes built with it use the same ones.

Queries and products share one model (a symmetric bi-encoder): short product titles and
short queries live in the same space, and one model halves memory and checksum work.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import BUNDLED_MODEL_NAME, BUNDLED_SHA256, MANIFEST, bundled_model_path, sha256_file
from pipeline.core.text import PRODUCT_TEXT_FIELDS
from pipeline.core.errors import ArtifactError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
RETRIEVER_KIND = "retriever"


def weights_file(folder: Path) -> Path:
    """The weights file of a sentence-transformers folder (safetensors preferred)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ArtifactError(f"{folder}: no model weights ({' or '.join(WEIGHT_FILES)}) — not a sentence-transformers folder")


def _claims_bundled(folder: Path) -> bool:
    """A copy of the bundled model carries its model card byte for byte; fine-tuned saves do not."""
    card, ref = folder / "README.md", bundled_model_path() / "README.md"
    return card.is_file() and ref.is_file() and card.read_bytes() == ref.read_bytes()


def verify_model_folder(folder: Path) -> tuple[str, str]:
    """Check a model folder's weights against what it claims to be; return (model_id, name).

    * the bundled model (or a copy of it) must hash to :data:`BUNDLED_SHA256`;
    * a shoprank-trained model must hash to the ``weights_sha256`` in its manifest;
    * any other sentence-transformers folder is accepted and identified by its hash.
    """
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: model folder does not exist")
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: not a sentence-transformers folder (no modules.json/config.json)")
    weights = weights_file(folder)
    digest = sha256_file(weights)
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc.__class__.__name__})") from None
        expected = manifest.get("weights_sha256")
        if expected and expected != digest:
            raise ArtifactError(
                f"{weights}: checksum mismatch (manifest says {expected[:12]}…, file is {digest[:12]}…); "
                "the model file was modified or corrupted"
            )
        return digest, str(manifest.get("name") or folder.name)
    if _claims_bundled(folder) or folder.resolve() == bundled_model_path().resolve():
        if digest != BUNDLED_SHA256:
            raise ArtifactError(
                f"{weights}: checksum mismatch for bundled {BUNDLED_MODEL_NAME} "
                f"(expected {BUNDLED_SHA256[:12]}…, found {digest[:12]}…); the model file was modified or corrupted"
            )
        return digest, BUNDLED_MODEL_NAME
    return digest, folder.name


def model_text_fields(folder: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The product text fields a shoprank-trained retriever was trained on (its manifest), or
    None for a model that records none (the bundled MiniLM, any other sentence-transformers
    folder): such a model may encode whatever fields an index asks for."""
    from pipeline.core.text import recorded_text_fields

    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc.__class__.__name__})") from None
    return recorded_text_fields(manifest) if manifest.get("kind") == RETRIEVER_KIND else None


class BiEncoder:
    """A verified sentence-transformers model with query/product encoding helpers.

    Attributes: ``model`` (the SentenceTransformer), ``path`` (its folder), ``model_id``
    (sha256 of the weights), ``name``, ``dim``.
    """

    def __init__(self, model: Any, path: Path, model_id: str, name: str) -> None:
        self.model = model
        self.path = path
        self.model_id = model_id
        self.name = name
        self.dim = int(model.get_embedding_dimension())

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, device: str = "cpu") -> "BiEncoder":
        """Load the bundled MiniLM (``path=None``) or any sentence-transformers folder, checksum-verified."""
        folder = Path(path) if path is not None else bundled_model_path()
        model_id, name = verify_model_folder(folder)
        from pipeline.core.runtime import import_torch, quiet_transformers

        import_torch()
        from sentence_transformers import SentenceTransformer

        try:
            with quiet_transformers():  # no "Loading weights" bar in the user's terminal
                model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ArtifactError(f"{folder}: cannot load sentence-transformers model ({first[:200]})") from None
        return cls(model, folder.resolve(), model_id, name)

    def describe(self) -> dict[str, Any]:
        """What an index manifest records about the model that made its vectors."""
        return {"model_id": self.model_id, "model_path": str(self.path), "model_name": self.name, "dim": self.dim}

    def _encode(self, texts: Sequence[str], batch_size: int, show_progress: bool) -> np.ndarray:
        """Encode with L2-normalisation; sentence-transformers sorts by length internally so
        each batch pads to similar lengths (the main CPU cost), then restores input order."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                                 convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Query vectors, float32 (n, dim), unit length."""
        return self._encode(texts, batch_size, show_progress)

    def encode_products(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        """Product vectors from :func:`pipeline.data.product_text` strings, float32 (n, dim), unit length."""
        return self._encode(texts, batch_size, show_progress)

    def encode_catalog(self, catalog: Any, batch_size: int = 64, show_progress: bool = True,
                       fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> np.ndarray:
        """Encode a catalog DataFrame through the one shared product text template over ``fields``."""
        from pipeline.data import product_text

        return self.encode_products(product_text(catalog, fields), batch_size=batch_size, show_progress=show_progress)
