"""Index benchmark: flat / hnsw / ivfpq at 10k, 100k and 1M products, next to a plain
``faiss.IndexFlatIP`` baseline. Prints one JSON object (``--out PATH`` also writes it).

What is measured, per (size, index type):

* ``build_s`` - wall time of ``retrieval.index.build_from_vectors`` with the presets that
  ``pipeline build-index`` uses (train + add + write to disk + checksum + its 50-query
  latency probe); ``train_add_s`` is the train + add part alone (the manifest's figure).
* ``index_bytes`` - size of ``index.faiss`` on disk.
* ``memory`` - peak RSS of the build. Every build runs in its own child process (this
  script re-run with the hidden ``--one`` mode), which imports faiss (torch first, the
  project's one import order) and loads the vectors from an ``.npy`` file. ``inputs_mb``
  is the child's VmRSS at that point (interpreter + torch/faiss + vectors + ids); the
  peak counter is then reset (``echo 5 > /proc/self/clear_refs``; ``hwm_reset`` says
  whether that worked) and ``peak_rss_mb`` is VmHWM from /proc/self/status right after
  the build. ``build_extra_mb = peak_rss_mb - inputs_mb`` is what the build itself needs
  on top of holding the vectors (``vectors_mb`` = n x dim x 4 bytes, for scale).
* ``recall@100`` - against exact search (``IndexFlatIP`` on the same vectors), averaged
  over ``--queries`` queries searched in one batch through ``Retriever.search_vectors``.
* ``latency_ms`` - single-query search at k=100: the index is reloaded from disk with
  ``Retriever.load(dir, load_encoder=False)`` (memory-mapped where FAISS can), warmed up
  with 20 queries, then ``--queries`` queries are searched one at a time through
  ``Retriever.search_vectors`` (p50/p99/mean). ``faiss_latency_ms`` is the same loop on the
  raw ``retriever.index.search``, i.e. without the wrapper's id mapping.
* ``speedup_vs_flat_ip`` - baseline p50 (p99) / this index's ``latency_ms`` p50 (p99),
  single queries at k=100 both; the baseline is raw ``IndexFlatIP.search``, the indexes
  go through the wrapper (compare ``faiss_latency_ms`` for its share). > 1 = faster.

Threads: builds use FAISS's default OpenMP threads (one per core; ``--build-threads``),
searches use ONE thread (``--search-threads``). On a shared, oversubscribed CPU a
one-query OpenMP region with 2 threads waits for the second thread's time slice: flat
search at 10k measured 24-36 ms p50 with 2 threads against 0.27 ms with 1, i.e. the
2-thread number measures the scheduler, not the index.

Baseline (``flat_ip`` in each size's results): ``faiss.IndexFlatIP`` used directly - add
and search, no wrapper, nothing written by the project code - with the same memory and
latency measurement. Its batched search is the ground truth for recall.

Vectors are SYNTHETIC (encoding 1M titles with MiniLM would take well over an hour on 2
shared CPU cores): 384-d unit vectors drawn around 1,000 topic centres, which mimics how text
embeddings cluster (isotropic noise would be an unrealistically hard case for IVF).
Queries are drawn the same way. Absolute recall on real embeddings will differ; the
comparison between index types and sizes is the point.

Builds at 1M are slow on 2 cores, so two opt-in overrides apply at sizes >= 1,000,000
only: ``--hnsw-ef-construction-1m EF`` (efConstruction instead of the preset's 80) and
``--ivfpq-nlist-1m N`` (N IVF lists instead of the preset's 4*sqrt(n) = 4000, whose
k-means trains on all 1M vectors; FAISS caps training at 256 points per list, so fewer
lists also means a subsampled, much cheaper k-means). Whatever was passed is recorded in
that entry's ``params``, and its ``factory`` / ``search_params`` show what was built.
When a smaller size is in the same run, the larger HNSW entries carry an extrapolation
of their build time from it (n log n), to compare against.

Usage (from the repo root; the CPU is shared, so run it niced):

    nice -n 5 .venv/bin/python benchmarks/index_recall.py \\
        [--sizes 10000,100000,1000000] [--types flat,hnsw,ivfpq] [--queries 200] \\
        [--dim 384] [--k 100] [--hnsw-ef-construction-1m EF] [--ivfpq-nlist-1m N] \\
        [--build-threads N] \\
        [--search-threads N] [--work-dir DIR] [--out PATH]

Scratch files (vectors, indexes; ~6 GB at 1M) go to a temporary directory under
``--work-dir`` (default: the system temp dir) and are deleted as the run goes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
BASELINE = "flat_ip"
WARMUP_QUERIES = 20
LARGE = 1_000_000  # sizes at or above this use --hnsw-ef-construction-1m / --ivfpq-nlist-1m


def clustered(n: int, dim: int, seed: int, centers: int = 1000, noise: float = 1.0) -> np.ndarray:
    """Unit centre + Gaussian noise of norm ~``noise`` (cosine to its centre ~0.7), renormalised.

    Text embeddings are not spread uniformly on the sphere: they bunch around topics. A
    fixed set of 1,000 centres (seed 12345, shared by catalog and queries) reproduces that;
    pure isotropic noise would make every IVF list equally far and understate IVF recall.
    """
    centres = np.random.default_rng(12345).standard_normal((centers, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(centers, size=n)] + rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- child side

def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _percentiles(times_ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(times_ms, 50)), 3), "p99": round(float(np.percentile(times_ms, 99)), 3),
            "mean": round(float(np.mean(times_ms)), 3), "n": len(times_ms)}


def _time_single(search, queries: np.ndarray, warmup: np.ndarray, k: int) -> dict[str, float]:
    """Search one query at a time (after a warm-up) and return latency percentiles in ms."""
    for q in warmup:
        search(q[None, :], k)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None, :], k)
        times.append((time.perf_counter() - t0) * 1000)
    return _percentiles(times)


def run_one(kind: str, data_dir: Path, work_dir: Path, k: int, params: dict[str, Any],
            build_threads: int, search_threads: int) -> dict[str, Any]:
    """Build, measure and search one index in this (child) process; returns its result dict."""
    from pipeline.core.runtime import import_faiss

    faiss = import_faiss()
    if build_threads > 0:
        faiss.omp_set_num_threads(build_threads)
    build_threads = int(faiss.omp_get_max_threads())
    vecs = np.load(data_dir / "vectors.npy")
    queries = np.load(data_dir / "queries.npy")
    warmup = np.load(data_dir / "warmup.npy")
    n, dim = vecs.shape
    ids = [f"P{i:07d}" for i in range(n)]
    inputs_kb = _proc_status_kb("VmRSS")
    hwm_reset = _reset_peak_rss()
    hwm_before_kb = _proc_status_kb("VmHWM")
    out: dict[str, Any] = {"threads": {"build": build_threads, "search": search_threads}}

    if kind == BASELINE:
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(dim)
        index.add(vecs)
        build_s = time.perf_counter() - t0
        peak_kb = _proc_status_kb("VmHWM")
        out.update(factory="IndexFlatIP (faiss, direct)", build_s=round(build_s, 3))
        faiss.omp_set_num_threads(search_threads)
        out["latency_ms"] = _time_single(index.search, queries, warmup, k)
        _, truth = index.search(queries, k)
        np.save(data_dir / "truth.npy", truth.astype(np.int64))
        path = work_dir / "flat_ip.faiss"
        faiss.write_index(index, str(path))
        out["index_bytes"] = path.stat().st_size
        path.unlink()
        out["recall@%d" % k] = 1.0  # it is the ground truth
    else:
        from retrieval.index import Retriever, build_from_vectors

        target = work_dir / kind
        t0 = time.perf_counter()
        manifest = build_from_vectors(vecs, ids, target, index_type=kind, **params)
        build_s = time.perf_counter() - t0
        peak_kb = _proc_status_kb("VmHWM")
        out.update(factory=manifest["factory"], search_params=manifest["search_params"], params=params,
                   build_s=round(build_s, 3), train_add_s=manifest["build_seconds"],
                   index_bytes=manifest["index_bytes"])
        faiss.omp_set_num_threads(search_threads)
        t0 = time.perf_counter()
        retriever = Retriever.load(target, load_encoder=False)
        out["load_s"] = round(time.perf_counter() - t0, 3)
        out["latency_ms"] = _time_single(retriever.search_vectors, queries, warmup, k)
        out["faiss_latency_ms"] = _time_single(retriever.index.search, queries, warmup, k)
        got, _ = retriever.search_vectors(queries, k)
        truth = np.load(data_dir / "truth.npy")
        recall = [len(set(t.tolist()) & {int(g[1:]) for g in row}) / len(t) for t, row in zip(truth, got)]
        out["recall@%d" % k] = round(float(np.mean(recall)), 4)
        out["recall_min"] = round(float(np.min(recall)), 4)
        del retriever
        shutil.rmtree(target, ignore_errors=True)

    out["memory"] = {
        "source": "/proc/self/status of the build's child process (VmRSS before, VmHWM after)",
        "vectors_mb": round(vecs.nbytes / 2**20, 1),
        "inputs_mb": round(inputs_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "build_extra_mb": round((peak_kb - inputs_kb) / 1024, 1),
        "hwm_reset": hwm_reset,
        "hwm_before_build_mb": round(hwm_before_kb / 1024, 1),
    }
    return out


# ---------------------------------------------------------------------------- parent side

def spawn_one(kind: str, data_dir: Path, work_dir: Path, k: int, params: dict[str, Any],
              build_threads: int, search_threads: int) -> dict[str, Any]:
    """Run ``run_one`` in a fresh interpreter (own peak RSS) and return its JSON result."""
    result_path = work_dir / f"{kind}.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", kind, "--data-dir", str(data_dir),
           "--work-dir", str(work_dir), "--k", str(k), "--params", json.dumps(params),
           "--result", str(result_path), "--build-threads", str(build_threads),
           "--search-threads", str(search_threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"error": f"child exited with {proc.returncode}", "stderr_tail": tail, "child_wall_s": round(wall, 1)}
    result = json.loads(result_path.read_text())
    result_path.unlink()
    result["child_wall_s"] = round(wall, 1)
    return result


def machine_info() -> dict[str, Any]:
    from pipeline.core.runtime import import_faiss

    faiss = import_faiss()
    info: dict[str, Any] = {"cores_available": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                            "python": platform.python_version(), "numpy": np.__version__,
                            "faiss": getattr(faiss, "__version__", "?"), "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = round(int(fh.readline().split()[1]) / 2**20, 1)
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def write_atomic(path: Path, text: str) -> None:
    from pipeline.core.artifacts import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated catalog sizes")
    ap.add_argument("--types", default=",".join(INDEX_TYPES), help="comma-separated index presets")
    ap.add_argument("--queries", type=int, default=200, help="queries for recall and latency")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--hnsw-ef-construction-1m", type=int, default=None, metavar="EF",
                    help=f"efConstruction for HNSW at sizes >= {LARGE:,} (default: the preset's)")
    ap.add_argument("--ivfpq-nlist-1m", type=int, default=None, metavar="N",
                    help=f"IVF lists for ivfpq at sizes >= {LARGE:,} (default: the preset's 4*sqrt(n))")
    ap.add_argument("--build-threads", type=int, default=0,
                    help="OpenMP threads for building (default 0: FAISS's default, one per core)")
    ap.add_argument("--search-threads", type=int, default=1,
                    help="OpenMP threads for the single-query searches (default 1; see the docstring)")
    ap.add_argument("--work-dir", default=None, help="where scratch files go (default: system temp dir)")
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    # hidden child mode
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        result = run_one(args.one, Path(args.data_dir), Path(args.work_dir), args.k, json.loads(args.params),
                         args.build_threads, args.search_threads)
        Path(args.result).write_text(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = set(types) - set(INDEX_TYPES)
    if unknown:
        ap.error(f"unknown index type(s) {sorted(unknown)}; use {', '.join(INDEX_TYPES)}")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "index_recall", "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "setup": {"vectors": "synthetic clustered (1,000 centres, cosine to centre ~0.7)", "dim": args.dim,
                  "k": args.k, "queries": args.queries, "warmup_queries": WARMUP_QUERIES,
                  "baseline": "faiss.IndexFlatIP, used directly (ground truth for recall)",
                  "latency": "single queries at k, after warm-up; speedup_vs_flat_ip = baseline / index",
                  "build_threads": args.build_threads or "faiss default (one per core)",
                  "search_threads": args.search_threads,
                  "hnsw_ef_construction_1m": args.hnsw_ef_construction_1m,
                  "ivfpq_nlist_1m": args.ivfpq_nlist_1m},
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="index_recall_", dir=args.work_dir) as tmp_name:
        tmp = Path(tmp_name)
        hnsw_build_s: dict[int, float] = {}
        for n in sizes:
            log(f"n={n:,}: generating vectors")
            data_dir = tmp / f"n{n}"
            data_dir.mkdir()
            np.save(data_dir / "vectors.npy", clustered(n, args.dim, seed=0))
            np.save(data_dir / "queries.npy", clustered(args.queries, args.dim, seed=1))
            np.save(data_dir / "warmup.npy", clustered(WARMUP_QUERIES, args.dim, seed=2))
            size_results: dict[str, Any] = {}
            for kind in (BASELINE, *types):
                params: dict[str, Any] = {}
                if kind == "hnsw" and n >= LARGE and args.hnsw_ef_construction_1m:
                    params["ef_construction"] = args.hnsw_ef_construction_1m
                if kind == "ivfpq" and n >= LARGE and args.ivfpq_nlist_1m:
                    params["nlist"] = args.ivfpq_nlist_1m
                log(f"n={n:,}: {kind} {params or ''}")
                res = spawn_one(kind, data_dir, tmp, args.k, params, args.build_threads, args.search_threads)
                if kind == "hnsw" and "train_add_s" in res:
                    hnsw_build_s[n] = res["train_add_s"]
                    smaller = [m for m in hnsw_build_s if m < n]
                    if smaller:  # HNSW insertion is ~O(n log n)
                        m = max(smaller)
                        res["train_add_s_extrapolated_from"] = {
                            "n": m, "train_add_s": hnsw_build_s[m],
                            "estimate_s": round(hnsw_build_s[m] * (n / m) * math.log(n) / math.log(m), 1),
                            "note": "preset efConstruction at the smaller size; n log n scaling"}
                base = size_results.get(BASELINE, res).get("latency_ms")
                if base and "latency_ms" in res:
                    res["speedup_vs_flat_ip"] = {p: round(base[p] / res["latency_ms"][p], 2) for p in ("p50", "p99")}
                size_results[kind] = res
                report["results"][str(n)] = size_results
                log(f"n={n:,}: {kind} done: " + json.dumps({x: res.get(x) for x in
                    ("build_s", "recall@%d" % args.k, "latency_ms", "error")}))
                report["total_seconds"] = round(time.perf_counter() - started, 1)
                if args.out:  # after every index, so a run cut short still leaves its numbers
                    write_atomic(Path(args.out), json.dumps({**report, "complete": False}, indent=2) + "\n")
                if "error" in res and kind == BASELINE:
                    break  # no ground truth for this size
            shutil.rmtree(data_dir, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = True
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        write_atomic(Path(args.out), text + "\n")


if __name__ == "__main__":
    main()
