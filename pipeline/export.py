"""`pipeline export-onnx`: export both trained encoders for the fast, torch-free search path.

Exports live next to their models (``models/retriever/onnx``, ``models/reranker/onnx``), so an
index finds its query encoder's export through the model path it records, and a retrained
model with a stale export is detected by checksum (see :mod:`pipeline.core.onnx`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipeline.core.errors import ArtifactError


def export_onnx(retriever: str | os.PathLike[str] | None, reranker: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Export the retriever and/or the reranker; return what was written (paths, sizes, seconds)."""
    if retriever is None and reranker is None:
        raise ArtifactError("nothing to export: pass --retriever and/or --reranker")
    report: dict[str, Any] = {}
    for name, path in (("retriever", retriever), ("reranker", reranker)):
        if path is None:
            continue
        path = Path(path)
        if not (path / "manifest.json").is_file() and not (path / "modules.json").is_file():
            raise ArtifactError(f"{path}: no trained {name} here (no manifest.json)")
        started = time.perf_counter()
        if name == "retriever":
            from retrieval.onnx_encoder import export_bi_encoder

            manifest = export_bi_encoder(path)
        else:
            from rerank.onnx_model import export_reranker

            manifest = export_reranker(path)
        out = path / "onnx"
        report[name] = {"export": str(out), "seconds": round(time.perf_counter() - started, 1),
                        "files": {f.name: f.stat().st_size for f in sorted(out.iterdir())},
                        "source": manifest["source"]}
    return report
