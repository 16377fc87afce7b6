"""The multi-task cross-encoder on ONNX Runtime: export once, score pairs without torch.

:func:`export_reranker` traces the whole model — BERT, pair pooling, mixture of experts, gates,
towers and the funnel products — into one graph whose output is the task probabilities
``(batch, tasks)``, and writes it (fp32 + int8) to ``<reranker>/onnx/`` (layout in
:mod:`pipeline.core.onnx`). The export's manifest records the reranker's manifest id and
weight checksums; :class:`OnnxCrossEncoder` refuses an export whose source no longer matches
the reranker directory (retrained after exporting).

:class:`OnnxCrossEncoder` has the part of :class:`~rerank.model.MultiTaskCrossEncoder`'s
surface the searcher uses (``tasks``, ``manifest``, ``predict``), with the same length-sorted,
dynamically padded batches, so the two backends are interchangeable.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import read_manifest
from pipeline.core.errors import ArtifactError
from pipeline.core.onnx import (FastTokenizer, export_module, length_sorted_batches, load_export,
                                   make_session, run_session, write_export)

RERANKER_KIND = "reranker"


def _source(manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies the exact reranker an export was made from."""
    return {"kind": RERANKER_KIND, "id": manifest.get("id"), "checksums": manifest.get("checksums")}


#: Reranker MatMuls that stay fp32 in the int8 graph: each layer's feed-forward up-projection.
#: Why: the similarity skip reads fine differences of the query and product vectors, and the
#: activations entering the GELU carry the outliers that dynamic int8 rounds worst. Of the
#: fp32 subsets tried, this one kept the served order closest to fp32 (docs/rerank.md), for
#: part of the int8 speed-up (benchmarks/search_speed.py).
KEEP_FP32 = ("/intermediate/dense/MatMul",)


def export_reranker(reranker_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Export a saved (checksum-verified) reranker to ``<reranker_dir>/onnx``."""
    from pipeline.core.runtime import import_torch
    from rerank.model import ENCODER_DIR, MultiTaskCrossEncoder

    torch = import_torch()
    path = Path(reranker_dir)
    model = MultiTaskCrossEncoder.load(path)

    class Probabilities(torch.nn.Module):
        """Keyword-argument wrapper (the TorchScript exporter traces BERT reliably this way)
        returning probabilities instead of log-probabilities."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).exp()

    batch = model.tokenize(["comfy couch", "red running shoes for men"],
                           ["Sofa | Acme | Furniture", "Trail runner shoe | Fleet | Shoes | colour: red"])
    example = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return write_export(path / "onnx", lambda graph: export_module(Probabilities(), example, graph, ["probs"]),
                        source=_source(model.manifest), tokenizer_json=path / ENCODER_DIR / "tokenizer.json",
                        max_length=model.config.max_length, extra={"tasks": list(model.tasks)}, keep_fp32=KEEP_FP32)


class OnnxCrossEncoder:
    """Torch-free reranker on an export made by :func:`export_reranker`."""

    needs_torch = False

    def __init__(self, session: Any, tokenizer: FastTokenizer, tasks: Sequence[str],
                 manifest: dict[str, Any], precision: str) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self._tasks = tuple(tasks)
        self.manifest = manifest
        self.precision = precision
        self._tokenizers = {tokenizer.max_length: tokenizer}  # one per max_length asked for

    @classmethod
    def load(cls, reranker_dir: str | os.PathLike[str], *, precision: str = "int8",
             threads: int | None = None) -> "OnnxCrossEncoder":
        """Open ``<reranker_dir>/onnx`` after checking it was exported from this very reranker."""
        path = Path(reranker_dir)
        manifest = read_manifest(path, kind=RERANKER_KIND)
        graph, tokenizer_json, export = load_export(path, precision, _source(manifest))
        tasks = export.get("tasks") or []
        if list(tasks) != list(manifest.get("tasks") or []):
            raise ArtifactError(f"{path}: ONNX export predicts {tasks}, reranker manifest says {manifest.get('tasks')}")
        tokenizer = FastTokenizer(tokenizer_json, int(export["max_length"]))  # the reranker's, recorded at export
        return cls(make_session(graph, threads), tokenizer, tasks, manifest, precision)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    def predict(self, queries: Sequence[str], product_texts: Sequence[str], batch_size: int = 64,
                max_length: int | None = None) -> np.ndarray:
        """Probabilities (n, len(tasks)) float32 for (query, product text) pairs, in input order."""
        if len(queries) != len(product_texts):
            raise ValueError(f"{len(queries)} queries for {len(product_texts)} product texts")
        length = max_length or self.tokenizer.max_length
        if length not in self._tokenizers:  # built once: reading tokenizer.json is not free
            self._tokenizers[length] = self.tokenizer.with_max_length(length)
        tokenizer = self._tokenizers[length]
        out = np.zeros((len(queries), len(self.tasks)), dtype=np.float32)
        lengths = [len(q) + len(t) for q, t in zip(queries, product_texts)]
        for idx in length_sorted_batches(lengths, batch_size):
            feed = tokenizer([queries[i] for i in idx], [product_texts[i] for i in idx])
            out[idx] = run_session(self.session, feed)
        return out
