"""The one place the reranker's inference backend is chosen and the model loaded.

A trained reranker runs either as :class:`~rerank.model.MultiTaskCrossEncoder` (torch; its int8
is dynamic quantisation of the Linear layers) or as :class:`~rerank.onnx_model.OnnxCrossEncoder`
(ONNX Runtime, torch-free, from ``pipeline export-onnx``). Search, batch scoring and
evaluation load through here, so "auto" means the same thing everywhere: ONNX Runtime when
the reranker has an export, else torch; precision "auto" is
:func:`pipeline.core.onnx.auto_precision`.

Importing this module is torch-free: the torch model is imported only when it is loaded.
"""
from __future__ import annotations

import os
from typing import Any

from pipeline.core.onnx import auto_precision, check_choices, has_export
from rerank.onnx_model import OnnxCrossEncoder

RerankerDir = str | os.PathLike[str] | None


def choose_backend(reranker_dir: RerankerDir, backend: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """The (backend, precision) a request resolves to for the reranker at ``reranker_dir``
    (None: no reranker, so "auto" is torch)."""
    check_choices(backend, precision)
    if backend == "auto":
        backend = "onnx" if reranker_dir is not None and has_export(reranker_dir) else "torch"
    return backend, auto_precision(backend, precision)


def load_reranker(reranker_dir: str | os.PathLike[str], backend: str = "auto", precision: str = "auto", *,
                  threads: int | None = None) -> Any:
    """The checksum-verified reranker at ``reranker_dir`` on the backend :func:`choose_backend`
    picks; an ONNX export made from another training run is refused."""
    backend, precision = choose_backend(reranker_dir, backend, precision)
    if backend == "onnx":
        return OnnxCrossEncoder.load(reranker_dir, precision=precision, threads=threads)
    from rerank.model import MultiTaskCrossEncoder

    return MultiTaskCrossEncoder.load(reranker_dir, quantize=precision == "int8")
