"""Speed and quality of the search path, every variant next to its obvious baseline. Prints JSON.

What it measures (2 CPU cores is the design target; numbers are only comparable within one run):

* **encoding** — products/s of ``SentenceTransformer.encode`` fp32 (baseline) vs the ONNX
  bi-encoder fp32 / int8, and each variant's Recall@100 / nDCG@10 on the demo world's test
  queries (exact search), so "faster" is always shown next to "as good".
* **rerank** — latency p50/p99 of scoring 25 / 50 / 100 candidates per query with
  ``sentence_transformers.CrossEncoder.predict`` fp32 (baseline: the same BERT, the obvious
  way), our torch model fp32 and int8 (dynamic quantisation), ONNX Runtime fp32 and int8, plus
  int8 at other max lengths; next to each, the two-stage nDCG@10 of that variant at that depth.
* **end to end** — warm ``TwoStageSearcher.search`` p50/p99 on the big sample index, torch fp32
  vs the ONNX default, and cold ``pipeline search`` wall time (a new process) for both backends;
  the index carries its lexical (bm25s) side, as ``build-index`` makes it, so the dense cold
  search is timed as users run it, next to ``onnx hybrid`` (``--retrieval hybrid``), which
  also reads the lexical side.
* **batch** — ``pipeline score-logs`` (subprocess: rows/s, queries/s, peak RSS) vs calling the
  warm searcher once per log row, over a log whose queries repeat the way real logs do (Zipf).

Inputs: ``--workdir`` holding a demo build (``make demo``: data/sample, models/retriever,
models/reranker). The script exports ONNX models if missing, generates a ``--products``-sized
sample world (same generator, default 100,000 products) and encodes it into an exact (flat)
index with a lexical side under ``<workdir>/bench/`` — cached across runs.

    python benchmarks/search_speed.py --workdir . [--products 100000] [--queries 80] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.runtime import import_faiss, import_torch  # noqa: E402

import_torch()  # one import order: torch, then faiss (baselines need torch in this process)
faiss = import_faiss()

from pipeline.data import load_dataset, product_text, qrels_dict  # noqa: E402
from pipeline.core.artifacts import atomic_write_text  # noqa: E402
from pipeline.core.metrics import aggregate  # noqa: E402

K = 10
DEPTHS = (25, 50, 100)


def pct(ms: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean of a list of milliseconds."""
    arr = np.asarray(ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "mean_ms": round(float(arr.mean()), 1), "n": int(arr.size)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def ndcg(runs: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    return round(aggregate(runs, {q: qrels[q] for q in runs}, ["nDCG@10"])["nDCG@10"], 4)


# ----------------------------------------------------------------------------- setup
def ensure_exports(root: Path) -> None:
    from pipeline.export import export_onnx
    from pipeline.core.onnx import has_export

    retriever, reranker = root / "models/retriever", root / "models/reranker"
    if not (retriever / "manifest.json").is_file() or not (reranker / "manifest.json").is_file():
        sys.exit(f"error: {root} holds no demo build (models/retriever, models/reranker); run `make demo` first")
    if not (has_export(retriever) and has_export(reranker)):
        export_onnx(retriever, reranker)


def ensure_world(root: Path, products: int, queries: int) -> Path:
    from pipeline.world.sample import write_sample

    world = root / "bench" / f"world-{products}"
    if not (world / "catalog.parquet").is_file():
        write_sample(world, n_products=products, n_queries=queries, seed=7)
    return world


def ensure_index(root: Path, world: Path, encoder: Any) -> tuple[Path, float]:
    """Exact (flat) index of the big world, encoded with the ONNX fp32 encoder (= torch vectors),
    with its lexical side. A cached index from before lexical sides is rebuilt from its own
    vectors (no re-encoding)."""
    from retrieval.index import Retriever, build_from_vectors

    index_dir = root / "bench" / f"{world.name}-index"
    timing = root / "bench" / f"{world.name}-index.encode.json"
    catalog = load_dataset(catalog=world / "catalog.parquet").catalog
    if (index_dir / "manifest.json").is_file() and timing.is_file():
        cached = Retriever.load(index_dir, load_encoder=False, mmap=False)
        if not cached.has_lexical:
            vecs = cached.index.reconstruct_n(0, cached.index.ntotal)
            build_from_vectors(vecs, cached.ids.tolist(), index_dir, index_type="flat", model=encoder.describe(),
                               lexical=product_text(catalog))
        return index_dir, float(json.loads(timing.read_text())["encode_seconds"])
    ms, vecs = timed(lambda: encoder.encode_products(product_text(catalog), batch_size=64, show_progress=True))
    build_from_vectors(vecs, catalog["product_id"].astype(str).tolist(), index_dir, index_type="flat",
                       model=encoder.describe(), lexical=product_text(catalog))
    timing.write_text(json.dumps({"encode_seconds": round(ms / 1000, 1), "products": len(vecs)}))
    return index_dir, ms / 1000


# ----------------------------------------------------------------------------- sections
def bench_encoding(root: Path, model_id: str) -> dict[str, Any]:
    """Throughput of each encoder variant on the demo catalog + its retrieval quality there."""
    from sentence_transformers import SentenceTransformer

    from pipeline.core.onnx import run_session
    from retrieval.onnx_encoder import OnnxBiEncoder

    ds = load_dataset(root / "data/sample")
    texts = product_text(ds.catalog)
    ids = ds.catalog["product_id"].astype(str).tolist()
    test = ds.split_queries("test")
    qrels = qrels_dict(ds.qrels)
    st = SentenceTransformer(str(root / "models/retriever"), device="cpu", local_files_only=True)
    variants: dict[str, Callable[[list[str]], np.ndarray]] = {
        "sentence-transformers fp32 (baseline)": lambda t: st.encode(t, batch_size=64, normalize_embeddings=True,
                                                                      convert_to_numpy=True),
    }
    onnx = {precision: OnnxBiEncoder.load(root / "models/retriever", model_id, precision=precision, cache_size=0)
            for precision in ("fp32", "int8")}
    for precision, enc in onnx.items():
        variants[f"onnx {precision}"] = lambda t, enc=enc: enc.encode_products(t, show_progress=False)
    # What each choice of the default path is worth: batches in input order instead of sorted by
    # length (padding to each batch's longest text), and one ORT thread instead of one per core.
    int8 = onnx["int8"]
    variants["onnx int8, batches in input order"] = lambda t: np.concatenate(
        [run_session(int8.session, int8.tokenizer(t[s:s + 64])) for s in range(0, len(t), 64)])
    one_thread = OnnxBiEncoder.load(root / "models/retriever", model_id, precision="int8", cache_size=0, threads=1)
    variants["onnx int8, 1 thread"] = lambda t: one_thread.encode_products(t, show_progress=False)
    out: dict[str, Any] = {"products": len(texts), "queries": len(test), "variants": {},
                           "note": "catalog encoded by each variant; queries by its fp32 counterpart, as "
                                   "`pipeline search` encodes queries in fp32 whatever the index precision"}
    # Three interleaved rounds, median per variant: one pass each drifted by ~15% between runs.
    times: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, np.ndarray] = {}
    for name, encode in variants.items():
        encode(texts[:128])  # warm-up
    for _ in range(3):
        for name, encode in variants.items():
            ms, vectors[name] = timed(lambda: encode(texts))
            times[name].append(ms)
    for name, encode in variants.items():
        ms, vecs = statistics.median(times[name]), vectors[name]
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        encode_queries = variants["onnx fp32"] if name.startswith("onnx") else encode
        _, hits = index.search(np.ascontiguousarray(encode_queries(test), dtype=np.float32), 100)
        run = {q: {ids[j]: 100.0 - r for r, j in enumerate(row)} for q, row in zip(test, hits)}
        metrics = aggregate(run, {q: qrels.get(q, {}) for q in test}, ["nDCG@10", "Recall@100"])
        out["variants"][name] = {"products_per_s": round(len(texts) / (ms / 1000), 1),
                                 "runs_s": [round(t / 1000, 2) for t in times[name]],
                                 "recall@100": round(metrics["Recall@100"], 4), "ndcg@10": round(metrics["nDCG@10"], 4)}
    base = out["variants"]["sentence-transformers fp32 (baseline)"]
    for row in out["variants"].values():
        row["speedup_vs_baseline"] = round(row["products_per_s"] / base["products_per_s"], 2)
        row["recall@100_delta"] = round(row["recall@100"] - base["recall@100"], 4)
    return out


def candidates_for(queries: list[str], retriever: Any) -> list[list[str]]:
    ids, _ = retriever.search(queries, k=max(DEPTHS))
    return ids


def bench_rerank(root: Path, world: Path, queries: list[str], cands: list[list[str]],
                 qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Latency per depth and two-stage nDCG@10 per (variant, depth)."""
    from sentence_transformers import CrossEncoder

    from pipeline.search import CatalogText
    from rerank.fusion import fuse
    from rerank.model import MultiTaskCrossEncoder
    from rerank.onnx_model import OnnxCrossEncoder

    catalog = CatalogText.read(world / "catalog.parquet")
    row = {p: i for i, p in enumerate(catalog.ids)}
    rdir = root / "models/reranker"
    torch_fp32 = MultiTaskCrossEncoder.load(rdir)
    max_length = torch_fp32.config.max_length
    ce = CrossEncoder(str(rdir / "encoder"), num_labels=1, max_length=max_length, device="cpu",
                      local_files_only=True)
    ort_int8 = OnnxCrossEncoder.load(rdir, precision="int8")
    tasks = torch_fp32.tasks
    variants: dict[str, Callable[[list[str], list[str]], np.ndarray | None]] = {
        "CrossEncoder.predict fp32 (baseline, latency only)":
            lambda q, t: (ce.predict(list(zip(q, t)), batch_size=64, show_progress_bar=False), None)[1],
        "torch fp32": lambda q, t: torch_fp32.predict(q, t),
        "torch int8 (dynamic)": lambda q, t, m=MultiTaskCrossEncoder.load(rdir, quantize=True): m.predict(q, t),
        "onnx fp32": lambda q, t, m=OnnxCrossEncoder.load(rdir, precision="fp32"): m.predict(q, t),
        "onnx int8": lambda q, t: ort_int8.predict(q, t),
    }
    for length in (16, 24, 48):
        if length != max_length:
            variants[f"onnx int8 max_length {length}"] = lambda q, t, n=length: ort_int8.predict(q, t, max_length=n)
    out: dict[str, Any] = {"queries": len(queries), "max_length": max_length, "variants": {}}
    retrieval_runs = {depth: {q: {p: float(depth - r) for r, p in enumerate(c[:K])} for q, c in zip(queries, cands)}
                      for depth in DEPTHS}
    out["retrieval_only_ndcg@10"] = ndcg(retrieval_runs[100], qrels)
    for name, predict in variants.items():
        rows: dict[str, Any] = {}
        for depth in DEPTHS:
            latencies, run = [], {}
            for q, c in zip(queries, cands):
                c = c[:depth]
                texts = [catalog.text(row[p]) for p in c]
                predict([q] * 4, texts[:4])  # warm the shapes a little; not timed
                ms, probs = timed(lambda: predict([q] * len(c), texts))
                latencies.append(ms)
                if probs is not None:
                    scores = fuse(probs, tasks)
                    order = np.argsort(-scores, kind="stable")[:K]
                    run[q] = {c[i]: float(K - r) for r, i in enumerate(order)}
            rows[str(depth)] = {**pct(latencies), "ndcg@10": ndcg(run, qrels) if run else None}
        out["variants"][name] = rows
    base = out["variants"]["CrossEncoder.predict fp32 (baseline, latency only)"]
    for rows in out["variants"].values():
        for depth, row in rows.items():
            row["speedup_p50_vs_baseline"] = round(base[depth]["p50_ms"] / row["p50_ms"], 2)
    ref = out["variants"]["torch fp32"]
    for rows in out["variants"].values():
        for depth, row in rows.items():
            if row["ndcg@10"] is not None:
                row["ndcg@10_delta_vs_torch_fp32"] = round(row["ndcg@10"] - ref[depth]["ndcg@10"], 4)
    return out


def bench_end_to_end(root: Path, world: Path, index_dir: Path, queries: list[str],
                     qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Warm TwoStageSearcher latency for torch fp32 and both ONNX precisions."""
    from pipeline.search import TwoStageSearcher

    out: dict[str, Any] = {}
    for backend, precision in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
        searcher = TwoStageSearcher.load(index_dir, root / "models/reranker", catalog=world / "catalog.parquet",
                                         backend=backend, precision=precision)
        if hasattr(searcher.retriever.encoder, "cache"):
            searcher.retriever.encoder.cache.maxsize = 0  # measure encoding, not cache hits
        searcher.search(queries[0], k=K, candidates=100)
        rows = {}
        for depth in DEPTHS:
            latencies, run = [], {}
            for q in queries:
                ms, hits = timed(lambda: searcher.search(q, k=K, candidates=depth))
                latencies.append(ms)
                run[q] = {h.product_id: float(K - i) for i, h in enumerate(hits)}
            rows[str(depth)] = {**pct(latencies), "ndcg@10": ndcg(run, qrels)}
        # retrieval alone (encode + exact search), the first-stage share of the latency
        ret = [timed(lambda: searcher.retriever.search([q], k=100))[0] for q in queries]
        rows["retrieval_only_k100"] = pct(ret)
        out[f"{backend} {precision}"] = rows
    return out


def bench_cold(root: Path, world: Path, index_dir: Path, runs: int = 5) -> dict[str, Any]:
    """Wall time of a new `pipeline search` process, end to end (files in the page cache).

    The first ONNX run starts from an empty checksum-stamp cache, so it re-hashes the index and
    graphs (what the first search over files copied in from elsewhere pays; a build or export
    stamps what it wrote); the others reuse the stamps.
    """
    import tempfile

    exe = Path(sys.executable).with_name("pipeline")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as stamps:
        env = {**os.environ, "SHOPRANK_CACHE_DIR": stamps}
        for name, backend, retrieval, repeats in (("onnx", "onnx", "dense", runs), ("onnx hybrid", "onnx", "hybrid", runs),
                                                  ("torch", "torch", "dense", 2)):
            walls = []
            for _ in range(1 + repeats):
                cmd = [str(exe), "search", "comfy couch", "--index", str(index_dir), "--reranker",
                       str(root / "models/reranker"), "--catalog", str(world / "catalog.parquet"),
                       "--backend", backend, "--retrieval", retrieval, "--json"]
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
                walls.append(time.perf_counter() - start)
                if proc.returncode:
                    raise SystemExit(f"cold search failed: {proc.stderr[-500:]}")
            out[name] = {"first_run_s": round(walls[0], 2), "median_s": round(statistics.median(walls[1:]), 2),
                            "max_s": round(max(walls[1:]), 2), "runs_s": [round(w, 2) for w in walls[1:]]}
    return out


def run_measured(cmd: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run a child process; (its own peak RSS in KiB, stdout, stderr). ``os.wait4`` gives this
    child's rusage (RUSAGE_CHILDREN is a max over every earlier child, e.g. the torch runs)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{Path(cmd[0]).name} {cmd[1]} failed: {stderr[-500:]}")
    return usage.ru_maxrss, stdout, stderr


def bench_batch(root: Path, world: Path, index_dir: Path, queries: list[str], rows: int) -> dict[str, Any]:
    """score-logs (subprocess, default backend) vs the warm searcher called once per log row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.search import TwoStageSearcher

    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, len(queries) + 1)
    picked = [queries[i] for i in rng.choice(len(queries), size=rows, p=weights / weights.sum())]
    log = root / "bench" / "query_log.parquet"
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(rows)], "query": picked}), log)
    out_file = root / "bench" / "scored.parquet"
    exe = Path(sys.executable).with_name("pipeline")
    cmd = [str(exe), "score-logs", "--input", str(log), "--output", str(out_file), "--index", str(index_dir),
           "--reranker", str(root / "models/reranker"), "--catalog", str(world / "catalog.parquet"),
           "--no-progress", "--json"]
    start = time.perf_counter()
    peak_kib, stdout, stderr = run_measured(cmd, root)
    wall = time.perf_counter() - start
    report = json.loads(stdout)
    searcher = TwoStageSearcher.load(index_dir, root / "models/reranker", catalog=world / "catalog.parquet")
    searcher.search(picked[0])
    loop_ms, _ = timed(lambda: [searcher.search(q, k=K, candidates=100) for q in picked])
    return {
        "log_rows": rows, "unique_queries": len(set(picked)), "backend": searcher.manifest_ids()["backend"],
        "score_logs": {"rows_per_s_in": round(rows / report["seconds"], 2), "output_rows_per_s": report["rows_per_s"],
                       "job_seconds": report["seconds"], "process_wall_s": round(wall, 1),
                       "peak_rss_mib": round(peak_kib / 1024, 1)},
        "searcher_per_row": {"rows_per_s_in": round(rows / (loop_ms / 1000), 2), "seconds": round(loop_ms / 1000, 1)},
        "speedup": round((rows / report["seconds"]) / (rows / (loop_ms / 1000)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--world-queries", type=int, default=600)
    ap.add_argument("--queries", type=int, default=80, help="Test queries timed per variant.")
    ap.add_argument("--log-rows", type=int, default=300)
    ap.add_argument("--sections", default="encoding,rerank,end_to_end,cold,batch")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = args.workdir.resolve()
    sections = set(args.sections.split(","))

    from retrieval.index import Retriever
    from retrieval.onnx_encoder import OnnxBiEncoder

    ensure_exports(root)
    model_id = json.loads((root / "models/retriever/manifest.json").read_text())["weights_sha256"]
    result: dict[str, Any] = {"workdir": str(root), "products": args.products}
    started = time.perf_counter()
    if "encoding" in sections:
        result["encoding"] = bench_encoding(root, model_id)
    world = ensure_world(root, args.products, args.world_queries)
    encoder = OnnxBiEncoder.load(root / "models/retriever", model_id, precision="fp32", cache_size=0)
    index_dir, encode_s = ensure_index(root, world, encoder)
    result["index"] = {"path": str(index_dir), "type": "flat", "encode_seconds_onnx_fp32": round(encode_s, 1)}
    ds = load_dataset(world)
    qrels = qrels_dict(ds.qrels)
    queries = [q for q in ds.split_queries("test") if q in qrels][: args.queries]
    retriever = Retriever.load(index_dir, encoder=encoder)
    cands = candidates_for(queries, retriever)
    if "rerank" in sections:
        result["rerank"] = bench_rerank(root, world, queries, cands, qrels)
    if "end_to_end" in sections:
        result["end_to_end_warm"] = bench_end_to_end(root, world, index_dir, queries, qrels)
    if "cold" in sections:
        result["cold_search"] = bench_cold(root, world, index_dir)
    if "batch" in sections:
        result["batch"] = bench_batch(root, world, index_dir, ds.split_queries("test"), args.log_rows)
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
