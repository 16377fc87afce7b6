"""OpenVINO vs ONNX Runtime int8 on the demo build's exported graphs. Prints JSON.

A measurement for the "fast stage 2" question, not part of ``run_all.py``: OpenVINO is not a
project dependency. Install it in a separate virtual environment that still sees the shared
venv's packages, and run the script from there::

    /work/main/.venv/bin/python -m venv /tmp/ovenv && /tmp/ovenv/bin/pip install openvino
    PYTHONPATH=.:/work/main/.venv/lib/python3.11/site-packages /tmp/ovenv/bin/python \\
        benchmarks/openvino.py --workdir /tmp/casc

Two models, the graphs ``pipeline export-onnx`` wrote (``<model>/onnx/model.onnx`` fp32 and
``model_int8.onnx``, ORT dynamic quantisation of the MatMuls):

* the cross-encoder (``models/reranker``): ``--pairs`` (100) (query, product text) pairs, the
  demo's test queries with their first retrieved candidates, at the export's max length;
* the bi-encoder (``models/retriever``): ``--texts`` (256) catalog product texts.

Variants, timed interleaved (each repeat runs every variant once, in turn, so drift in the
machine hits all of them alike), each a full pass over the inputs including tokenisation
(the same :class:`~pipeline.core.onnx.FastTokenizer` and length-sorted batches of 64):

* ``ort_int8`` — the project's loader as search runs it (``OnnxCrossEncoder`` /
  ``OnnxBiEncoder``, ``make_session``: all cores, no spinning) — the reference for ``ratio``;
* ``ort_fp32`` — the same on the fp32 graph — the reference for ``max_abs_diff``;
* ``ov_fp32_*`` — OpenVINO reading the fp32 ONNX graph (``Core.read_model`` +
  ``compile_model`` on CPU): ``default`` (no config), ``latency`` (``PERFORMANCE_HINT`` LATENCY,
  ``INFERENCE_NUM_THREADS`` = cores), ``f32`` (the latency config with
  ``INFERENCE_PRECISION_HINT`` f32), ``bf16`` (the same with bf16, when the CPU has it);
* ``ov_ortint8_*`` — OpenVINO reading the ORT int8 graph (default and latency), when it compiles.

Before any OpenVINO object exists, ``ort_int8`` is also timed alone
(``ov.ort_int8_before_openvino``): OpenVINO's CPU thread pool then shares the two cores with
ORT's, which the interleaved numbers include and a process running one backend would not.

The JSON goes to stdout and, in ``run_all.py``'s layout (command, seconds, machine, result),
to ``benchmarks/results/openvino.json``.

Reported per variant: ``items_per_s`` (median pass), ``ratio_vs_ort_int8`` (> 1 = faster) and
``max_abs_diff`` vs ``ort_fp32`` (probabilities for the cross-encoder, unit vectors for the
bi-encoder). NNCF post-training quantisation (OpenVINO's own int8) is out of scope here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

# This file is named openvino.py: drop its own folder from the path, or `import openvino` imports it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.onnx import length_sorted_batches  # noqa: E402

BATCH = 64  # what OnnxCrossEncoder.predict / OnnxBiEncoder.encode_* use by default


class OVModel:
    """One compiled OpenVINO model behind the project's tokenise → length-sorted batches → run."""

    def __init__(self, core: Any, graph: Path, config: dict[str, Any], tokenizer: Any, width: int) -> None:
        model = core.read_model(str(graph))
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = {i.get_any_name() for i in self.compiled.inputs}
        self.tokenizer = tokenizer
        self.width = width

    def property(self, name: str) -> str:
        try:
            return str(self.compiled.get_property(name))
        except Exception:  # noqa: BLE001 — not every property is readable on every version
            return "?"

    def run(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        for idx in length_sorted_batches([len(t) + (len(pairs[i]) if pairs else 0) for i, t in enumerate(texts)],
                                         BATCH):
            feed = self.tokenizer([texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx])
            result = self.request.infer({k: v for k, v in feed.items() if k in self.inputs})
            out[idx] = next(iter(result.values()))
        return out


def ov_configs(cores: int, bf16: bool) -> dict[str, dict[str, Any]]:
    latency = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": cores}
    configs = {"default": {}, "latency": latency, "f32": {**latency, "INFERENCE_PRECISION_HINT": "f32"}}
    if bf16:
        configs["bf16"] = {**latency, "INFERENCE_PRECISION_HINT": "bf16"}
    return configs


def bench(variants: dict[str, Callable[[], np.ndarray]], n_items: int, repeats: int) -> dict[str, Any]:
    """Warm each variant once, then time ``repeats`` interleaved passes; outputs of the last pass."""
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up (OV compiles shapes lazily)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - started)
    ref_speed = n_items / statistics.median(times["ort_int8"])
    out = {}
    for name, ts in times.items():
        speed = n_items / statistics.median(ts)
        out[name] = {"items_per_s": round(speed, 1), "ratio_vs_ort_int8": round(speed / ref_speed, 3),
                     "median_ms": round(statistics.median(ts) * 1000, 1), "min_ms": round(min(ts) * 1000, 1),
                     "max_abs_diff_vs_ort_fp32": float(np.abs(outputs[name] - outputs["ort_fp32"]).max())}
    return out


def alone(fn: Callable[[], np.ndarray], n_items: int, repeats: int) -> dict[str, Any]:
    """ORT int8 timed on its own, before any OpenVINO model exists in the process (its
    thread pool could otherwise share the cores with ORT's during the interleaved runs)."""
    fn()
    ts = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - started)
    return {"items_per_s": round(n_items / statistics.median(ts), 1), "median_ms": round(statistics.median(ts) * 1000, 1),
            "min_ms": round(min(ts) * 1000, 1)}


def add_ov(variants: dict[str, Callable[[], np.ndarray]], info: dict[str, Any], core: Any, onnx_dir: Path,
           tokenizer: Any, width: int, args_of: Callable[[OVModel], Callable[[], np.ndarray]], cores: int,
           bf16: bool) -> None:
    """Compile the OpenVINO variants (fp32 graph, then the ORT int8 graph) into ``variants``."""
    for graph, prefix, configs in ((onnx_dir / "model.onnx", "ov_fp32", ov_configs(cores, bf16)),
                                   (onnx_dir / "model_int8.onnx", "ov_ortint8",
                                    {k: v for k, v in ov_configs(cores, False).items() if k in ("default", "latency")})):
        for cname, config in configs.items():
            name = f"{prefix}_{cname}"
            try:
                model = OVModel(core, graph, config, tokenizer, width)
            except Exception as exc:  # noqa: BLE001 — report, do not die: "does it compile" is a result
                info[name] = {"error": str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)}
                continue
            info[name] = {"config": {k: str(v) for k, v in config.items()},
                          "compiled": {p: model.property(p) for p in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT",
                                                                       "INFERENCE_NUM_THREADS", "NUM_STREAMS")}}
            variants[name] = args_of(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "openvino.json")
    args = ap.parse_args()
    started = time.perf_counter()
    import openvino as ov
    import onnxruntime as ort

    from pipeline.data import load_dataset, product_text, qrels_dict
    from rerank.onnx_model import OnnxCrossEncoder
    from retrieval.onnx_encoder import OnnxBiEncoder

    root = args.workdir.resolve()
    reranker_dir, retriever_dir = root / "models" / "reranker", root / "models" / "retriever"
    index_manifest = json.loads((root / "indexes" / "default" / "manifest.json").read_text())
    cores = len(os.sched_getaffinity(0))
    cpu_flags = Path("/proc/cpuinfo").read_text()
    bf16 = "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags

    dataset = load_dataset(root / "data" / "sample")
    texts_all = product_text(dataset.catalog)
    # Pairs: test queries (with qrels) and their first retrieved candidates, as a search would score them.
    from pipeline.search import TwoStageSearcher

    searcher = TwoStageSearcher.load(root / "indexes" / "default", None, warn=False, reranker_required=False)
    qrels = qrels_dict(dataset.qrels)
    queries = [q for q in dataset.split_queries("test") if q in qrels]
    per_query = 50
    pair_q: list[str] = []
    pair_t: list[str] = []
    for query in queries:
        ids, _ = searcher.retriever.search([query], k=per_query)
        for pid in ids[0]:
            pair_q.append(query)
            pair_t.append(searcher.catalog.text(searcher._row[str(pid)]))
        if len(pair_q) >= args.pairs:
            break
    pair_q, pair_t = pair_q[:args.pairs], pair_t[:args.pairs]
    del searcher

    result: dict[str, Any] = {"workdir": str(root), "cores": cores, "repeats": args.repeats,
                              "versions": {"openvino": ov.__version__, "onnxruntime": ort.__version__},
                              "cpu_bf16": bf16}

    # Cross-encoder. The OpenVINO Core is created only after ORT int8 was timed alone (below).
    ce_int8 = OnnxCrossEncoder.load(reranker_dir, precision="int8")
    ce_fp32 = OnnxCrossEncoder.load(reranker_dir, precision="fp32")
    ort_alone = alone(lambda: ce_int8.predict(pair_q, pair_t), len(pair_q), args.repeats)
    model_id = index_manifest["model_id"]
    texts = [str(t) for t in texts_all[: args.texts]]
    be_int8 = OnnxBiEncoder.load(retriever_dir, model_id, precision="int8")
    be_alone = alone(lambda: be_int8.encode_products(texts, show_progress=False), len(texts), args.repeats)
    core = ov.Core()
    width = len(ce_int8.tasks)
    variants: dict[str, Callable[[], np.ndarray]] = {
        "ort_int8": lambda: ce_int8.predict(pair_q, pair_t), "ort_fp32": lambda: ce_fp32.predict(pair_q, pair_t)}
    info: dict[str, Any] = {"ort_int8_before_openvino": ort_alone}
    add_ov(variants, info, core, reranker_dir / "onnx", ce_int8.tokenizer, width,
           lambda m: (lambda: m.run(pair_q, pair_t)), cores, bf16)
    result["ov_cpu_capabilities"] = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    print(f"cross-encoder: {list(variants)}", file=sys.stderr)
    result["cross_encoder"] = {"pairs": len(pair_q), "max_length": ce_int8.tokenizer.max_length,
                               "queries": len(set(pair_q)), "variants": bench(variants, len(pair_q), args.repeats),
                               "ov": info}
    del variants, ce_int8, ce_fp32

    # Bi-encoder.
    be_fp32 = OnnxBiEncoder.load(retriever_dir, model_id, precision="fp32")
    variants = {"ort_int8": lambda: be_int8.encode_products(texts, show_progress=False),
                "ort_fp32": lambda: be_fp32.encode_products(texts, show_progress=False)}
    info = {"ort_int8_before_openvino": be_alone}
    add_ov(variants, info, core, retriever_dir / "onnx", be_int8.tokenizer, be_int8.dim,
           lambda m: (lambda: m.run(texts)), cores, bf16)
    print(f"bi-encoder: {list(variants)}", file=sys.stderr)
    result["bi_encoder"] = {"texts": len(texts), "max_length": be_int8.tokenizer.max_length,
                            "variants": bench(variants, len(texts), args.repeats), "ov": info}

    best = {part: max(((n, v["ratio_vs_ort_int8"]) for n, v in result[part]["variants"].items()
                       if n.startswith("ov_")), key=lambda x: x[1], default=(None, 0.0))
            for part in ("cross_encoder", "bi_encoder")}
    wins = best["cross_encoder"][1] > 1.3
    result["best_openvino"] = {k: {"variant": v[0], "ratio_vs_ort_int8": v[1]} for k, v in best.items()}
    result["conclusion"] = (
        f"OpenVINO best on the cross-encoder: {best['cross_encoder'][0]} at {best['cross_encoder'][1]}x ORT int8 "
        f"(bi-encoder: {best['bi_encoder'][0]} at {best['bi_encoder'][1]}x). "
        + ("Clear win (>1.3x): worth a --backend openvino." if wins else
           "No clear win (<=1.3x): ONNX Runtime int8 stays; the next step is OpenVINO's own int8 (NNCF), "
           "out of scope here."))
    text = json.dumps(result, indent=2)
    write_part(args.out, result, " ".join(sys.argv[1:]), time.perf_counter() - started)
    print(text)


def write_part(path: Path, result: dict[str, Any], argv: str, seconds: float) -> None:
    """Write ``result`` in run_all.py's per-benchmark layout, so ``run_all.py --assemble`` (which
    reads every ``results/*.json``) takes it in like the others."""
    from benchmarks.run_all import machine, write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"command": f"openvino.py {argv}".strip(), "seconds": round(seconds, 1), "quick": False,
                      "machine": machine(), "result": result})


if __name__ == "__main__":
    main()
