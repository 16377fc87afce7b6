"""Reranker training speed by thread count, on a quiet and on a busy machine.

Why: on a shared machine a training process whose OpenMP pool has one thread per core runs
slower when other jobs hold cores (its threads wait for each other), while one thread per
*free* core keeps going. The trainers size their pool with
:func:`pipeline.core.runtime.training_threads` (``$SHOPRANK_THREADS`` or the CPUs this
process may use); this benchmark measures that choice against one thread, with and without a
competing busy process, each configuration in a fresh subprocess.

    python benchmarks/train_threads.py [--out benchmarks/results/train_threads.json]

Prints one JSON object: pairs per second of reranker training per (threads, load), under
the OpenMP wait policy the project sets (``OMP_WAIT_POLICY``; override it in the environment
to compare).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one_run(workdir: Path) -> dict[str, float]:
    """Train a small reranker in this process; report its speed."""
    from pipeline.data import load_dataset
    from pipeline.world.sample import write_sample
    from rerank.train import train_reranker

    data = workdir / "world"
    if not (data / "catalog.parquet").is_file():
        write_sample(data, n_products=300, n_queries=80, seed=13)
    report = train_reranker(load_dataset(data), workdir / "model", max_queries=40, max_valid_queries=2,
                            max_shown_per_query=8, negatives=2, epochs=1, batch_size=32, seed=13,
                            progress=False)
    return {"threads": report["threads"], "train_examples": report["train_examples"], "steps": report["steps"],
            "train_seconds": report["train_seconds"],
            "pairs_per_s": round(report["train_examples"] / max(report["train_seconds"], 1e-9), 2)}


def _busy() -> subprocess.Popen:
    """A competing job that keeps one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one-run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run is not None:
        print(json.dumps(_one_run(args.one_run)))
        return
    from pipeline.core.runtime import available_cpus, configure_environment

    configure_environment()  # the wait policy the trainers run with, passed on to each run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for load in ("quiet", "one core busy"):
            for threads in sorted({1, available_cpus()}):
                hog = _busy() if load != "quiet" else None
                try:
                    env = {**os.environ, "SHOPRANK_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
                    started = time.perf_counter()
                    out = subprocess.run([sys.executable, __file__, "--one-run", tmp], env=env, check=True,
                                         capture_output=True, text=True).stdout
                    row = json.loads(out.strip().splitlines()[-1])
                    rows.append({"load": load, **row, "wall_s": round(time.perf_counter() - started, 1)})
                finally:
                    if hog is not None:
                        hog.kill()
                sys.stderr.write(f"{rows[-1]}\n")
    result = {"benchmark": "train_threads", "available_cpus": available_cpus(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
