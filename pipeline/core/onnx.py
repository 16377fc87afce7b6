"""ONNX Runtime inference shared by both stages: export, int8 quantisation, sessions, tokenisers.

Why our own export instead of sentence-transformers' ``backend="onnx"``: that backend needs
``optimum-onnx``, which pins ``transformers<4.58`` (we run 5.x), and it still imports torch and
sentence-transformers at load time — ~3 s, twice the whole cold-search budget. Exporting the
module ourselves (TorchScript exporter, ``dynamo=False``) gives a graph that runs with only
``onnxruntime`` + ``tokenizers`` + ``numpy``: no torch in the search process at all.

An export is a directory next to the model it came from (``<model>/onnx/``)::

    model.onnx          fp32 graph (dynamic batch and sequence axes)
    model_int8.onnx     the same graph, weights int8 (ONNX Runtime dynamic quantisation)
    tokenizer.json      the model's fast tokenizer (same ids as transformers' AutoTokenizer)
    manifest.json       kind "onnx-export"; ``source`` = identity of the model it was exported
                        from; sha256 of each graph; max_length; opset; versions

Loaders compare ``source`` with the model they expect (:func:`load_export`) and refuse a stale
export (model retrained after export) with a one-line message.

Importing this module is cheap and torch-free; only :func:`export_module` imports torch.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import (
    atomic_directory, build_manifest, file_has_sha256, hash_file, read_manifest, remember_sha256, write_manifest,
)
from pipeline.core.errors import ArtifactError, ShoprankError

EXPORT_KIND = "onnx-export"
ONNX_DIR = "onnx"
PRECISIONS = ("fp32", "int8")
#: Inference backends of both encoders. Each stage resolves "auto" in one place
#: (:func:`retrieval.encoders.load_encoder`, :func:`rerank.loading.load_reranker`).
BACKENDS = ("auto", "onnx", "torch")
#: Precisions a user may ask for; "auto" is :func:`auto_precision`.
PRECISION_CHOICES = ("auto", *PRECISIONS)
GRAPH_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17


def export_module(module: Any, example: Mapping[str, Any], path: Path, output_names: Sequence[str]) -> None:
    """Export a torch module taking ``input_ids``/``attention_mask``/``token_type_ids`` keywords.

    Batch and sequence axes are dynamic, so one graph serves any batch with dynamic padding.
    """
    from pipeline.core.runtime import import_torch

    torch = import_torch()
    names = list(example)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes.update({name: {0: "batch"} for name in output_names})
    module.eval()
    # The tracer warns about Python bools in transformers' mask code; for an encoder with
    # inputs padded to the batch's longest they are constant (checked by the equality tests).
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), str(path), kwargs=dict(example), input_names=names,
                          output_names=list(output_names), dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)


#: ONNX Runtime dynamic quantisation settings, chosen by measurement (fine-tuned MMoE reranker,
#: 152 test queries × top-100, nDCG@10 fp32 0.7151): ORT defaults (Gather/embeddings and all
#: MatMuls int8) lost 0.0109; MatMul weights only, per-channel, 7-bit range lost 0.0046.
INT8_SETTINGS = {"op_types_to_quantize": ["MatMul"], "per_channel": True, "reduce_range": True,
                 "extra_options": {"MatMulConstBOnly": True}}


def quantize_int8(src: Path, dst: Path, keep_fp32: Sequence[str] = ()) -> list[str]:
    """int8 weights, activations quantised on the fly (no calibration data needed).

    Only MatMuls with constant weights (the BERT projections: ~all the FLOPs) are quantised;
    embeddings, attention-score products and the tiny heads stay fp32. ``reduce_range`` (7-bit
    weights) avoids the int16 saturation of x86 u8·s8 kernels, which cost ranking quality.
    ``keep_fp32``: substrings of node names that stay fp32 as well; returns those nodes' names.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = ([n.name for n in onnx.load(str(src), load_external_data=False).graph.node
             if n.op_type == "MatMul" and any(part in n.name for part in keep_fp32)] if keep_fp32 else [])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # hides ORT's "consider pre-processing" advice (static quantisation only)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=kept, **INT8_SETTINGS)
    finally:
        root.setLevel(level)
    return kept


def write_export(out_dir: Path, build: Any, *, source: Mapping[str, Any], tokenizer_json: Path,
                 max_length: int, extra: Mapping[str, Any] | None = None,
                 keep_fp32: Sequence[str] = ()) -> dict[str, Any]:
    """Write an export directory atomically: ``build(tmp_fp32_path)`` writes the fp32 graph,
    then we quantise it (``keep_fp32``: see :func:`quantize_int8`), copy the tokenizer and
    write the manifest."""
    if not tokenizer_json.is_file():
        raise ArtifactError(f"{tokenizer_json}: no fast tokenizer file to export with the model")
    with atomic_directory(out_dir) as tmp:
        build(tmp / GRAPH_FILES["fp32"])
        kept = quantize_int8(tmp / GRAPH_FILES["fp32"], tmp / GRAPH_FILES["int8"], keep_fp32)
        (tmp / TOKENIZER_FILE).write_bytes(tokenizer_json.read_bytes())
        hashed = {name: hash_file(tmp / name) for name in (*GRAPH_FILES.values(), TOKENIZER_FILE)}
        manifest = build_manifest(
            EXPORT_KIND, config={"opset": OPSET, "max_length": max_length,
                                 "int8": {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                                          **INT8_SETTINGS, "kept_fp32": kept}},
            inputs={"source": dict(source)}, source=dict(source), max_length=max_length,
            checksums={name: digest for name, (digest, _) in hashed.items()},
            **dict(extra or {}),
        )
        write_manifest(tmp, manifest)
    for name, (digest, stat) in hashed.items():  # so the first search need not re-hash them
        remember_sha256(Path(out_dir) / name, digest, stat)
    return manifest


def check_choices(backend: str, precision: str) -> None:
    """Refuse a backend or precision nobody can run, before any model is loaded."""
    if backend not in BACKENDS:
        raise ShoprankError(f"unknown backend {backend!r}; --backend must be one of {', '.join(BACKENDS)}")
    if precision not in PRECISION_CHOICES:
        raise ShoprankError(f"unknown precision {precision!r}; --precision must be one of "
                            f"{', '.join(PRECISION_CHOICES)}")


def auto_precision(backend: str, precision: str) -> str:
    """The precision "auto" stands for on a resolved backend: int8 on ONNX Runtime, whose
    quantisation keeps ranking quality within the benchmarks' tolerance at about twice the
    speed, and fp32 on torch, whose dynamic int8 costs too much quality to be a default."""
    if precision != "auto":
        return precision
    return "int8" if backend == "onnx" else "fp32"


def has_export(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``<model_dir>/onnx`` holds an export (cheap: no hashing)."""
    return (Path(model_dir) / ONNX_DIR / "manifest.json").is_file()


def load_export(model_dir: str | os.PathLike[str], precision: str,
                expected_source: Mapping[str, Any]) -> tuple[Path, Path, dict[str, Any]]:
    """(graph path, tokenizer path, manifest) of a verified export of ``model_dir``.

    Refuses an export whose ``source`` differs from ``expected_source`` (the model was
    retrained or replaced after exporting) and any graph whose checksum does not match.
    """
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    export_dir = Path(model_dir) / ONNX_DIR
    if not (export_dir / "manifest.json").is_file():
        raise ArtifactError(f"{export_dir}: no ONNX export; run `pipeline export-onnx` first")
    manifest = read_manifest(export_dir, kind=EXPORT_KIND)
    source = manifest.get("source") or {}
    for key, value in expected_source.items():
        if source.get(key) != value:
            raise ArtifactError(f"{export_dir}: ONNX export is stale ({key} {str(source.get(key))[:12]!r} "
                                f"!= model's {str(value)[:12]!r}); re-run `pipeline export-onnx`")
    checksums = manifest.get("checksums") or {}
    paths = {}
    for name in (GRAPH_FILES[precision], TOKENIZER_FILE):
        file = export_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the ONNX export; re-run `pipeline export-onnx`")
        if not file_has_sha256(file, str(checksums.get(name))):
            raise ArtifactError(f"{file}: checksum mismatch with manifest (corrupt or replaced); "
                                "re-run `pipeline export-onnx`")
        paths[name] = file
    return paths[GRAPH_FILES[precision]], paths[TOKENIZER_FILE], manifest


def make_session(graph: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation.

    ``threads`` defaults to the cores this process may use.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No busy-waiting between runs: in search, ORT alternates with faiss's OpenMP threads on
    # the same cores, and spinning ORT threads steal them (measured in benchmarks/search_speed.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ArtifactError(f"{graph}: cannot load ONNX graph ({str(exc).splitlines()[0][:200]})") from None


class FastTokenizer:
    """The model's ``tokenizer.json`` through the ``tokenizers`` library (no transformers, no torch).

    Pads each batch to its longest member and truncates pairs ``longest_first`` at
    ``max_length`` — the same ids and masks transformers' fast tokenizer produces.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.max_length = max_length

    def with_max_length(self, max_length: int) -> "FastTokenizer":
        """The same tokenizer truncating at another length (e.g. to trade quality for speed)."""
        return FastTokenizer(self.path, max_length)

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        inputs: Any = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = self.tokenizer.encode_batch(inputs)
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches in order of text length, so dynamic padding wastes little compute."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def run_session(session: Any, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Run a one-output session, feeding only the inputs the graph declares."""
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
