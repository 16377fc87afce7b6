"""The one place the retriever's inference backend is chosen and its query/product encoder loaded.

Two encoders make the same vectors from the same weights: :class:`~retrieval.encoder.BiEncoder`
(sentence-transformers on torch) and :class:`~retrieval.onnx_encoder.OnnxBiEncoder` (ONNX
Runtime, torch-free, from ``pipeline export-onnx``). build-index, the searcher, adding products
to an index and Ray's encoding actors all load through here, so "auto" means the same thing
everywhere: ONNX Runtime when the model folder has an export, else torch; precision "auto" is
:func:`pipeline.core.onnx.auto_precision`. Torch encodes in fp32 only, because int8 product
vectors are an ONNX graph, not a torch mode.

Importing this module is torch-free: the torch encoder imports torch only when it loads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.core.errors import ArtifactError, ShoprankError
from pipeline.core.onnx import auto_precision, check_choices, has_export
from retrieval.encoder import BiEncoder, verify_model_folder
from retrieval.onnx_encoder import DEFAULT_CACHE_SIZE, OnnxBiEncoder

#: How an index's vectors were made when its manifest does not say (indexes built by torch).
TORCH_FP32 = "torch-fp32"

ModelDir = str | os.PathLike[str] | None


def choose_backend(model_dir: ModelDir, backend: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """The (backend, precision) a request resolves to for the model at ``model_dir``
    (None = the bundled MiniLM, which has no export), refusing combinations that cannot run."""
    check_choices(backend, precision)
    if backend == "auto":
        backend = "onnx" if model_dir is not None and has_export(model_dir) else "torch"
    precision = auto_precision(backend, precision)
    if backend == "torch" and precision != "fp32":
        raise ShoprankError("--precision int8 needs --backend onnx")
    return backend, precision


def load_encoder(model_dir: ModelDir, backend: str = "auto", precision: str = "auto", *,
                 model_id: str | None = None, threads: int | None = None,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> Any:
    """A checksum-verified encoder of ``model_dir`` (None = the bundled MiniLM) on the backend
    :func:`choose_backend` picks.

    ``model_id`` (the weights' sha256, as an index manifest records it) refuses other weights;
    the ONNX encoder also refuses an export made from other weights. ``threads`` and
    ``cache_size`` apply to ONNX Runtime (its session threads, its query-vector LRU cache).
    """
    backend, precision = choose_backend(model_dir, backend, precision)
    if backend == "onnx":
        if model_dir is None:
            raise ShoprankError("--backend onnx needs a trained retriever (--model) exported with `pipeline export-onnx`")
        if model_id is None:
            model_id = verify_model_folder(Path(model_dir))[0]
        return OnnxBiEncoder.load(model_dir, model_id, precision=precision, threads=threads, cache_size=cache_size)
    encoder = BiEncoder.load(model_dir)
    if model_id is not None and encoder.model_id != model_id:
        raise ArtifactError(f"{model_dir}: weights {encoder.model_id[:12]}… are not the expected {model_id[:12]}…")
    return encoder


def load_index_encoder(model_dir: str | os.PathLike[str], model_id: str, encoded_with: str | None = TORCH_FP32, *,
                       threads: int | None = None, cache_size: int = DEFAULT_CACHE_SIZE,
                       torch_without_export: bool = False) -> Any:
    """The encoder that makes vectors the way an index manifest's ``encoded_with`` says
    (``torch-fp32``, ``onnx-fp32``, ``onnx-int8``: the inverse of ``describe()``), so products
    added later, or encoded on other machines, match the vectors already built.

    ``torch_without_export``: when the ONNX export has since been removed, fall back to the
    torch model of the same weights instead of refusing.
    """
    backend, _, precision = (encoded_with or TORCH_FP32).partition("-")
    if backend == "onnx" and torch_without_export and not has_export(model_dir):
        backend, precision = "torch", "fp32"
    return load_encoder(model_dir, backend, precision or "auto", model_id=model_id, threads=threads,
                        cache_size=cache_size)
