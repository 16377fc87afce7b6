"""What int8 costs in ranking quality: nDCG@10 of a reranker fp32 vs its int8 paths. Prints JSON.

Reranks the index's top-``--candidates`` for every test query of ``--data`` with the reranker
in fp32 (ONNX Runtime fp32 = torch fp32 to 1e-6), ONNX Runtime int8 (the product's int8
path: constant-weight MatMuls, per-channel, 7-bit; see ``pipeline.core.onnx.INT8_SETTINGS``)
and torch dynamic int8, and reports nDCG@10 (graded by the qrels) and the drop against fp32.

    python benchmarks/int8_quality.py --data data/sample --index indexes/default --reranker models/reranker
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.runtime import import_torch  # noqa: E402

import_torch()


def main() -> None:
    from pipeline.data import load_dataset, qrels_dict
    from pipeline.export import export_onnx
    from pipeline.core.metrics import aggregate
    from pipeline.core.onnx import has_export
    from pipeline.search import CatalogText
    from rerank.fusion import fuse
    from rerank.model import MultiTaskCrossEncoder
    from rerank.onnx_model import OnnxCrossEncoder
    from retrieval.index import Retriever

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/sample"))
    ap.add_argument("--index", type=Path, default=Path("indexes/default"))
    ap.add_argument("--reranker", type=Path, default=Path("models/reranker"))
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--max-queries", type=int, default=1000)
    args = ap.parse_args()

    if not has_export(args.reranker):
        export_onnx(None, args.reranker)
    ds = load_dataset(args.data)
    qrels = qrels_dict(ds.qrels)
    queries = [q for q in ds.split_queries("test") if q in qrels][: args.max_queries]
    cands, _ = Retriever.load(args.index).search(queries, k=args.candidates)
    catalog = CatalogText.read(args.data / "catalog.parquet")
    row = {p: i for i, p in enumerate(catalog.ids)}
    models = {"fp32 (onnx)": OnnxCrossEncoder.load(args.reranker, precision="fp32"),
              "int8 onnx": OnnxCrossEncoder.load(args.reranker, precision="int8"),
              "int8 torch dynamic": MultiTaskCrossEncoder.load(args.reranker, quantize=True)}
    out: dict = {"queries": len(queries), "candidates": args.candidates, "reranker": str(args.reranker),
                 "systems": {}}
    for name, model in models.items():
        run, started = {}, time.perf_counter()
        for q, c in zip(queries, cands):
            probs = model.predict([q] * len(c), [catalog.text(row[p]) for p in c])
            order = np.argsort(-fuse(probs, model.tasks), kind="stable")[:10]
            run[q] = {c[i]: float(10 - r) for r, i in enumerate(order)}
        score = aggregate(run, {q: qrels[q] for q in queries}, ["nDCG@10"])["nDCG@10"]
        out["systems"][name] = {"ndcg@10": round(score, 4), "seconds": round(time.perf_counter() - started, 1)}
    ref = out["systems"]["fp32 (onnx)"]["ndcg@10"]
    for row_ in out["systems"].values():
        row_["drop_vs_fp32"] = round(ref - row_["ndcg@10"], 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
