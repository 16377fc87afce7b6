"""The benchmark harness (`make bench`): run every benchmark, write benchmarks/results.json.

Each benchmark is its own script that prints one JSON object (so any of them can be run and
read alone); this harness runs them as subprocesses, one after another (never in parallel:
they would measure each other), keeps each one's output in ``benchmarks/results/<name>.json``
and assembles ``benchmarks/results.json`` from all of them plus the machine it ran on (so
``--only`` re-runs one benchmark without losing the others):

* ``search_speed.py`` — encoding, rerank, end-to-end warm and cold search, batch scoring,
  each next to its obvious baseline and its nDCG@10;
* ``index_recall.py`` — FAISS flat / hnsw / ivfpq at 10k, 100k, 1M vectors vs IndexFlatIP;
* ``filter_recall.py`` — ``category=…`` filters keeping 50% / 5% / 0.5% of 100k products on flat
  and HNSW vs the same index unfiltered (Recall@10 against exact filtered search, latency), and
  the cold load cost of the index's lexical (bm25s) side;
* ``score_logs_memory.py`` — peak memory of score-logs on a 200k-row log;
* ``encoding_quality.py`` — int8 vs sentence-transformers fp32 catalog vectors, Recall@100 and
  nDCG@10 on 3,000 held-out queries with bootstrap intervals;
* ``serve_load.py`` — `pipeline serve` under 1-16 concurrent clients (QPS, p50/p99, 503s) vs
  sequential in-process search; time to ready, a saturation soak (statuses, server RSS) and a
  hot reload under load, with pass/fail ``checks``;
* ``microbatch.py`` — reranking N concurrent queries' candidates as N ONNX calls vs one
  concatenated call (what a micro-batcher would do): pairs/s, latency, score differences.
* ``cascade.py`` — the full reranker, its distilled 2-layer student and student→full
  cascades (M = 10, 20, 30) at 100 candidates: warm search p50/p99 and test nDCG@10.
* ``search_profile.py`` — one warm two-stage search split by stage (query tokenise/encode,
  FAISS, product text, rerank tokenise/ONNX run, fusion/blend, the rest) at 50 and 100 candidates.

    python benchmarks/run_all.py [--workdir DIR] [--quick] [--only search_speed,index_recall] [--assemble]

``--workdir`` must hold a demo build (`make demo` makes one in the repo root). ``--quick``
shrinks every benchmark (10k products, fewer queries, no 1M index) for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "onnxruntime", "faiss-cpu", "sentence-transformers", "transformers", "tokenizers",
             "numpy", "pyarrow")


def machine() -> dict:
    """Where the numbers come from: they mean little without it."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "memory_gib": round(mem, 1),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def commands(workdir: Path, quick: bool) -> dict[str, list[str]]:
    py = sys.executable
    speed = [py, str(HERE / "search_speed.py"), "--workdir", str(workdir)]
    # 1M ivfpq with 1,000 lists: the size-scaled preset (4,000) trains k-means on all 1M vectors
    index = [py, str(HERE / "index_recall.py"), "--ivfpq-nlist-1m", "1000"]
    filters = [py, str(HERE / "filter_recall.py")]
    memory = [py, str(HERE / "score_logs_memory.py"), "--workdir", str(workdir)]
    quality = [py, str(HERE / "encoding_quality.py"), "--workdir", str(workdir)]
    serve = [py, str(HERE / "serve_load.py"), "--workdir", str(workdir)]
    microbatch = [py, str(HERE / "microbatch.py"), "--workdir", str(workdir)]
    cascade = [py, str(HERE / "cascade.py"), "--workdir", str(workdir)]
    profile = [py, str(HERE / "search_profile.py"), "--workdir", str(workdir)]
    if quick:
        speed += ["--products", "10000", "--queries", "20", "--log-rows", "60"]
        index += ["--sizes", "10000"]
        filters += ["--products", "10000", "--queries", "50", "--load-runs", "2"]
        memory += ["--rows", "5000"]
        quality += ["--queries", "300"]
        serve += ["--seconds", "3", "--concurrency", "1,4,16", "--saturation-seconds", "10", "--rss-warmup", "3",
                  "--reload-seconds", "6"]
        microbatch += ["--reps", "2", "--concurrency", "1,4", "--threads", "server"]
        cascade += ["--repeats", "1"]
        profile += ["--repeats", "1"]
    return {"search_speed": speed, "index_recall": index, "filter_recall": filters, "score_logs_memory": memory,
            "encoding_quality": quality, "serve_load": serve, "microbatch": microbatch, "cascade": cascade,
            "search_profile": profile}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--assemble", action="store_true",
                    help="run nothing; rebuild results.json from benchmarks/results/*.json (after re-running one section)")
    args = ap.parse_args()
    todo = {} if args.assemble else commands(args.workdir.resolve(), args.quick)
    if args.only:
        unknown = set(args.only.split(",")) - set(todo)
        if unknown:
            sys.exit(f"error: unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(todo)}")
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    parts = HERE / "results"
    parts.mkdir(exist_ok=True)
    for name, cmd in todo.items():
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"error: {name} failed (exit {proc.returncode}); its stderr is above")
        part = {"command": " ".join(Path(c).name if c.endswith(".py") else c for c in cmd[1:]),
                "seconds": round(time.perf_counter() - started, 1), "quick": args.quick, "machine": machine(),
                "result": json.loads(proc.stdout)}
        write_json(parts / f"{name}{'-quick' if args.quick else ''}.json", part)
    results = {"machine": machine(), "benchmarks": {}}
    for file in sorted(parts.glob("*.json")):
        if file.stem.endswith("-quick") == args.quick:  # smoke numbers never mix with real ones
            results["benchmarks"][file.stem.removesuffix("-quick")] = json.loads(file.read_text())
    write_json(args.out, results)
    print(json.dumps({k: v.get("seconds") for k, v in results["benchmarks"].items()}))


def write_json(path: Path, payload: dict) -> None:
    """Write atomically (temporary sibling + rename): a crash never leaves half a file."""
    from pipeline.core.artifacts import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
