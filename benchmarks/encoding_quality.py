"""Does the int8 bi-encoder keep retrieval quality? Measured on 3,000 held-out queries.

The encoding section of ``search_speed.py`` times encoders on the 2,000-product demo catalog,
whose 72 test queries are too few to tell a 0.005 Recall@100 change from noise (one query's
recall moves the mean by ~0.01). This script answers the quality half of the encoding target
on a fresh world of the same size (same generator, another seed, 3,000 queries; the retriever
never saw it):

* baseline: catalog and queries encoded by ``SentenceTransformer.encode`` fp32;
* candidate: the catalog encoded by an int8 graph (default: the export's ``model_int8.onnx``;
  ``--graph`` for another quantisation), searched with **fp32 query vectors** from the ONNX
  fp32 graph, as ``build-index --backend onnx --precision int8`` + ``pipeline search`` do;
* exact search (IndexFlatIP) for both, so only the vectors differ;
* reported per split: ``dev`` (train + valid queries: the ones to look at when choosing
  quantisation settings) and ``test`` (report only), and ``all``; per measure both means,
  the mean paired difference with a 95% bootstrap interval, and how much of the baseline's
  top 100 the candidate keeps.

    python benchmarks/encoding_quality.py --workdir . [--graph G.onnx] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.runtime import import_faiss  # noqa: E402

faiss = import_faiss()

MEASURES = ("Recall@100", "nDCG@10")


def bootstrap_ci(diffs: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of paired per-query differences."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(rounds, len(diffs)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def main() -> None:
    from sentence_transformers import SentenceTransformer

    from pipeline.core.artifacts import sha256_file
    from pipeline.data import load_dataset, product_text, qrels_dict
    from pipeline.core.metrics import per_query
    from pipeline.core.onnx import GRAPH_FILES, ONNX_DIR, make_session
    from pipeline.world.sample import write_sample
    from retrieval.encoder import verify_model_folder
    from retrieval.onnx_encoder import OnnxBiEncoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--products", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--graph", type=Path, help="int8 graph to evaluate (default: the export's model_int8.onnx)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = args.workdir.resolve()
    world = root / "bench" / f"quality-world-{args.products}-{args.queries}-s{args.seed}"
    if not (world / "catalog.parquet").is_file():
        write_sample(world, n_products=args.products, n_queries=args.queries, seed=args.seed)
    retriever = root / "models/retriever"
    model_id = verify_model_folder(retriever)[0]
    fp32 = OnnxBiEncoder.load(retriever, model_id, precision="fp32", cache_size=0)
    int8 = OnnxBiEncoder.load(retriever, model_id, precision="int8", cache_size=0)
    graph = args.graph or retriever / ONNX_DIR / GRAPH_FILES["int8"]
    if args.graph:  # another quantisation of the same export: same tokenizer, same batching
        int8 = OnnxBiEncoder(make_session(args.graph), int8.tokenizer, int8.path, model_id, int8.name, int8.dim,
                             "int8", cache_size=0)

    ds = load_dataset(world)
    texts = product_text(ds.catalog)
    ids = ds.catalog["product_id"].astype(str).tolist()
    queries = ds.queries
    texts_q = queries["query"].tolist()
    qrels = qrels_dict(ds.qrels)
    st = SentenceTransformer(str(retriever), device="cpu", local_files_only=True)
    st_encode = lambda t: st.encode(t, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)  # noqa: E731
    systems = {
        "baseline": (st_encode(texts), st_encode(texts_q)),
        "int8": (int8.encode_products(texts, show_progress=False), fp32.encode_queries(texts_q)),
    }
    runs, hits_of = {}, {}
    for name, (catalog_vecs, query_vecs) in systems.items():
        index = faiss.IndexFlatIP(catalog_vecs.shape[1])
        index.add(np.ascontiguousarray(catalog_vecs, dtype=np.float32))
        scores, hits = index.search(np.ascontiguousarray(query_vecs, dtype=np.float32), 100)
        hits_of[name] = hits
        runs[name] = per_query({q: {ids[j]: float(s) for j, s in zip(h, sc)} for q, h, sc in zip(texts_q, hits, scores)},
                               {q: qrels.get(q, {}) for q in texts_q}, MEASURES)
    overlap = np.array([len(set(a) & set(b)) / 100 for a, b in zip(hits_of["baseline"], hits_of["int8"])])
    splits = {"dev": queries["split"].isin(["train", "valid"]).to_numpy(),
              "test": (queries["split"] == "test").to_numpy(), "all": np.ones(len(queries), bool)}
    report: dict[str, Any] = {"world": world.name, "products": len(texts), "graph": graph.name,
                              "graph_sha256": sha256_file(graph)[:12],
                              "baseline": "SentenceTransformer.encode fp32 (catalog + queries)",
                              "int8": "catalog by the int8 graph, queries by the ONNX fp32 graph (as pipeline search)",
                              "splits": {}}
    for split, mask in splits.items():
        keys = [q for q, m in zip(texts_q, mask) if m]
        entry: dict[str, Any] = {"queries": len(keys), "top100_overlap": round(float(overlap[mask].mean()), 4)}
        for measure in MEASURES:
            a = np.array([runs["baseline"][measure][q] for q in keys])
            b = np.array([runs["int8"][measure][q] for q in keys])
            entry[measure] = {"baseline": round(float(a.mean()), 4), "int8": round(float(b.mean()), 4),
                              "delta": round(float((b - a).mean()), 4), "delta_ci95": bootstrap_ci(b - a)}
        report["splits"][split] = entry
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
