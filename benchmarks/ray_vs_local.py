"""Local vs Ray engine on the same query log: wall time, rows/s, per-worker throughput (JSON).

Usage (after `pipeline demo` or `pipeline demo --quick` in WORKDIR)::

    python benchmarks/ray_vs_local.py --workdir WORKDIR [--rows 400] [--workers 2]

The input is built from the workdir's ``queries.parquet``: ``--rows`` rows cycling through
its queries, so ``--rows`` <= number of queries means every row is a distinct query and the
numbers measure the models, not the query cache (real logs repeat queries; the cache then
helps the local engine more, since each Ray actor has its own). Both engines score the same
file with the same parameters and the outputs are checked to be identical (1e-5).

What to read: ``per_worker_rows_per_s`` is scoring throughput of one actor with the model
already loaded; ``overhead_s`` is Ray start-up + actor model loading, paid once per job.
That is what the back-of-envelope in docs/scale-out.md extrapolates from.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="Where the demo wrote data/, models/, indexes/.")
    parser.add_argument("--rows", type=int, default=200, help="Input rows (cycling through the sample queries).")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray).")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads for the local engine (Ray actors get 1 per CPU they hold); "
                             "on a busy machine, 1 avoids thread oversubscription.")
    args = parser.parse_args(argv)
    if args.torch_threads:
        from pipeline.core.runtime import import_torch

        import_torch().set_num_threads(args.torch_threads)

    import numpy as np
    import pandas as pd

    from pipeline.scoring import score_logs

    root = args.workdir.resolve()
    queries = pd.read_parquet(root / "data/sample/queries.parquet")["query"].drop_duplicates().tolist()
    rows = [queries[i % len(queries)] for i in range(args.rows)]
    common = dict(index_dir=root / "indexes/default", reranker=root / "models/reranker",
                  catalog=root / "data/sample/catalog.parquet", k=args.k, candidates=args.candidates,
                  batch_size=args.batch_size, show_progress=False)
    with tempfile.TemporaryDirectory(prefix="ray-vs-local-") as tmp:
        log = Path(tmp) / "log.parquet"
        pd.DataFrame({"query_id": [f"r{i}" for i in range(len(rows))], "query": rows}).to_parquet(log)

        started = time.perf_counter()
        local = score_logs(log, Path(tmp) / "local.parquet", **common)
        local_wall = time.perf_counter() - started

        started = time.perf_counter()
        remote = score_logs(log, Path(tmp) / "ray.parquet", engine="ray", address=args.address, workers=args.workers, **common)
        ray_wall = time.perf_counter() - started

        a, b = pd.read_parquet(Path(tmp) / "local.parquet"), pd.read_parquet(Path(tmp) / "ray.parquet")
        identical = bool(a.shape == b.shape and (a.drop(columns=[c for c in a if c.startswith("p_") or "score" in c])
                                                 .equals(b.drop(columns=[c for c in b if c.startswith("p_") or "score" in c])))
                         and all(np.allclose(a[c], b[c], atol=1e-5, rtol=0, equal_nan=True)
                                 for c in a if c.startswith("p_") or "score" in c))

    per_worker = remote["per_worker"]
    busy = max((w["seconds"] for w in per_worker), default=0.0)
    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
                    "python": sys.version.split()[0], "local_torch_threads": args.torch_threads or "default"},
        "input": {"rows": len(rows), "distinct_queries": len(set(rows)), "k": args.k,
                  "candidates": args.candidates, "batch_size": args.batch_size},
        "local": {"wall_s": round(local_wall, 2), "rows_per_s": round(len(rows) / local_wall, 2),
                  "scoring_rows_per_s": local["rows_per_s"], "computed": local["computed"]},
        "ray": {"wall_s": round(ray_wall, 2), "rows_per_s": round(len(rows) / ray_wall, 2),
                "workers": remote["workers"], "computed": remote["computed"],
                "overhead_s": round(ray_wall - busy, 2), "per_worker": per_worker,
                "per_worker_rows_per_s": round(float(np.mean([w["rows_per_s"] for w in per_worker])), 2)},
        "identical_output": identical,
    }
    print(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
