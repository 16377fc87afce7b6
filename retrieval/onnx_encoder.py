"""The bi-encoder on ONNX Runtime: export a sentence-transformers folder, encode without torch.

:func:`export_bi_encoder` writes ``<model>/onnx/`` (see :mod:`pipeline.core.onnx`): the BERT
transformer + mean pooling + L2 normalisation as one graph, so the runtime side is just
tokenise → run → vectors. :class:`OnnxBiEncoder` has the :class:`~retrieval.encoder.BiEncoder`
surface the index needs (``model_id``, ``dim``, ``encode_queries``, ``encode_products``,
``describe``), so an index built with torch vectors is searched with ONNX query vectors — the
model id (sha256 of the source weights) is the same, and :func:`pipeline.core.onnx.load_export`
refuses an export made from other weights.

A small LRU cache of query vectors (:class:`QueryEmbeddingCache`) sits in front of the
encoder: head queries repeat all day, and a cache hit skips tokenise + encode entirely.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.text import PRODUCT_TEXT_FIELDS
from pipeline.core.errors import ArtifactError
from pipeline.core.cache import LRUCache
from pipeline.core.onnx import (FastTokenizer, export_module, length_sorted_batches, load_export,
                                   make_session, run_session, write_export)

#: Query vectors kept by default (one float32 vector per distinct query).
DEFAULT_CACHE_SIZE = 10_000


class QueryEmbeddingCache(LRUCache[np.ndarray]):
    """Least-recently-used cache of query vectors, keyed by the exact query text."""


def cached_encode(cache: QueryEmbeddingCache | None, texts: Sequence[str], encode: Any) -> np.ndarray:
    """Encode ``texts`` through ``cache``: only texts not seen before reach ``encode`` (one call)."""
    if cache is None or not texts:
        return encode(list(texts))
    unique = list(dict.fromkeys(texts))
    vecs = {t: v for t in unique if (v := cache.get(t)) is not None}
    todo = [t for t in unique if t not in vecs]
    if todo:
        for text, vec in zip(todo, encode(todo)):
            cache.put(text, vec)
            vecs[text] = vec
    return np.stack([vecs[t] for t in texts])


def _pooling_mode(folder: Path) -> str:
    """The sentence-transformers pooling of a folder; we export mean and cls pooling."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean"
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
            mode = cfg.get("pooling_mode")  # sentence-transformers >= 6; older folders: one flag per mode
            if mode in ("mean", "cls"):
                return str(mode)
            if mode is None and cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if mode is None and cfg.get("pooling_mode_cls_token"):
                return "cls"
            raise ArtifactError(f"{folder}: pooling {cfg} is not supported by the ONNX export (mean or cls only)")
    return "mean"


def export_bi_encoder(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Export a (checksum-verified) sentence-transformers folder to ``<model_dir>/onnx``."""
    from pipeline.core.runtime import import_torch
    from retrieval.encoder import BiEncoder

    torch = import_torch()
    encoder = BiEncoder.load(model_dir)
    folder = encoder.path
    transformer = encoder.model[0].auto_model
    mode = _pooling_mode(folder)
    max_length = int(encoder.model.max_seq_length)

    class Embed(torch.nn.Module):
        """BERT → mean (or CLS) pooling → unit length: the whole sentence-transformers pipeline."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            if mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    tok = encoder.model.tokenizer(["a short example query", "ok"], padding=True, return_tensors="pt")
    example = {k: tok[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    tokenizer_json = folder / "tokenizer.json"
    return write_export(folder / "onnx", lambda path: export_module(Embed(), example, path, ["embedding"]),
                        source={"kind": "retriever", "model_id": encoder.model_id},
                        tokenizer_json=tokenizer_json, max_length=max_length,
                        extra={"dim": encoder.dim, "pooling": mode, "normalized": True})


class OnnxBiEncoder:
    """Torch-free bi-encoder on an export made by :func:`export_bi_encoder`."""

    needs_torch = False

    def __init__(self, session: Any, tokenizer: FastTokenizer, path: Path, model_id: str, name: str,
                 dim: int, precision: str, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.path = path
        self.model_id = model_id
        self.name = name
        self.dim = dim
        self.precision = precision
        self.cache = QueryEmbeddingCache(cache_size)

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], model_id: str, *, precision: str = "int8",
             threads: int | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> "OnnxBiEncoder":
        """Open ``<model_dir>/onnx`` for the model whose weights hash to ``model_id``
        (the id an index manifest records), refusing an export of other weights."""
        folder = Path(model_dir)
        graph, tokenizer_json, manifest = load_export(folder, precision, {"kind": "retriever", "model_id": model_id})
        tokenizer = FastTokenizer(tokenizer_json, int(manifest.get("max_length") or 256))
        return cls(make_session(graph, threads), tokenizer, folder.resolve(), model_id, folder.name,
                   int(manifest["dim"]), precision, cache_size)

    def describe(self) -> dict[str, Any]:
        """Same fields as :meth:`BiEncoder.describe` (the ONNX graph encodes the same model)."""
        return {"model_id": self.model_id, "model_path": str(self.path), "model_name": self.name, "dim": self.dim,
                "encoded_with": f"onnx-{self.precision}"}

    def _encode(self, texts: Sequence[str], batch_size: int, progress: str | None = None) -> np.ndarray:
        """Vectors in length-sorted batches over the whole list.

        The batches are the same with and without a progress bar, because a dynamically
        quantised int8 model scales each call's activations by its batch, so other
        batch-mates would give slightly different vectors (and another index).
        """
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = list(length_sorted_batches([len(t) for t in texts], batch_size))
        if progress is not None and len(batches) > 1:
            from rich.console import Console
            from rich.progress import track

            batches = track(batches, description=progress, console=Console(stderr=True))  # stdout may be JSON
        for idx in batches:
            out[idx] = run_session(self.session, self.tokenizer([texts[i] for i in idx]))
        return out

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Unit query vectors (n, dim) float32, through the LRU query cache."""
        return cached_encode(self.cache, [str(t) for t in texts], lambda todo: self._encode(todo, batch_size))

    def encode_products(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        """Unit product vectors (n, dim) float32 (no cache: catalogs are encoded once)."""
        return self._encode(texts, batch_size, "encoding (onnx)" if show_progress else None)

    def encode_catalog(self, catalog: Any, batch_size: int = 64, show_progress: bool = True,
                       fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> np.ndarray:
        """Encode a catalog DataFrame through the one shared product text template over ``fields``."""
        from pipeline.data import product_text

        return self.encode_products(product_text(catalog, fields), batch_size=batch_size, show_progress=show_progress)

