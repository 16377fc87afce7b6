"""Load test of `pipeline serve`: throughput and latency under concurrent clients, next to
the obvious baseline (the same searcher called sequentially in-process). Writes JSON.

What it measures: for each client concurrency (default 1, 2, 4, 8, 16), closed-loop clients
(each sends its next GET /search as soon as the previous answer arrives, over a kept-alive
connection) run for ``--seconds``; per level: requests/s, p50/p99 latency of answered
requests, 200s, 503s (the bounded queue refusing, by design) and other errors. The baseline
is ``TwoStageSearcher.search`` in a loop in this process, over the same queries. Both go
through the query-vector cache the same way (the query list repeats), and /metrics' hit
ratio is recorded.

The server is a separate process (`python -m pipeline serve`) bound to 127.0.0.1 only; the
client threads share the machine's cores with it, so on a small machine the client's own
cost is part of what is measured.

Inputs: ``--workdir`` holding a demo build (``make demo`` or ``pipeline demo --quick``).

    python benchmarks/serve_load.py --workdir . [--seconds 10] [--concurrency 1,2,4,8,16] [--max-queue 16] [--out FILE]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FALLBACK_QUERIES = ["comfy couch", "red running shoes", "waterproof jacket for hiking", "desk lamp",
                    "sofa for a small apartment", "kids rain boots", "cheap office chair", "linen sheets"]


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def load_queries(workdir: Path, n: int) -> list[str]:
    """Test-split queries of the demo world (else a fixed list), at most ``n``."""
    path = workdir / "data/sample/queries.parquet"
    if path.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pylist()
        queries = [r["query"] for r in table if r.get("split") == "test"] or [r["query"] for r in table]
        return queries[:n]
    return FALLBACK_QUERIES[:n]


def baseline(workdir: Path, queries: list[str], seconds: float, k: int, candidates: int) -> dict[str, Any]:
    """Sequential in-process searches for ``seconds`` (one warm-up pass first, not timed)."""
    from pipeline.search import TwoStageSearcher

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        searcher = TwoStageSearcher.load()
        for query in queries[:4]:
            searcher.search(query, k=k, candidates=candidates)
        latencies: list[float] = []
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            searcher.search(queries[i % len(queries)], k=k, candidates=candidates)
            latencies.append(time.perf_counter() - t0)
            i += 1
        wall = time.perf_counter() - started
    finally:
        os.chdir(cwd)
    return {"requests": len(latencies), "qps": round(len(latencies) / wall, 2), **latency_summary(latencies),
            "backend": f"{searcher.backend}-{searcher.precision}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: Path, port: int, workers: int, max_queue: int, log: Any) -> subprocess.Popen[bytes]:
    """The service in its own process; its log goes to a file (a pipe nobody reads would fill
    with access-log lines and stall the server)."""
    cmd = [sys.executable, "-m", "pipeline", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--max-queue", str(max_queue)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 180 s")


def run_level(port: int, queries: list[str], concurrency: int, seconds: float, k: int,
              candidates: int) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``seconds``."""
    latencies: list[float] = []
    counts = {"ok": 0, "rejected_503": 0, "errors": 0}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = offset
        while time.perf_counter() < stop:
            path = "/search?" + urllib.parse.urlencode({"q": queries[i % len(queries)], "k": k,
                                                        "candidates": candidates})
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - t0
            with lock:
                if status == 200:
                    counts["ok"] += 1
                    latencies.append(elapsed)
                elif status == 503:
                    counts["rejected_503"] += 1
                else:
                    counts["errors"] += 1
            if status == 503:
                time.sleep(0.05)  # a polite client backs off (Retry-After says 1 s; shortened to keep load on)
            i += 7
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": counts["ok"], "qps": round(counts["ok"] / wall, 2),
            **latency_summary(latencies), **counts}


def scrape(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    wanted = ("shoprank_query_cache_hit_ratio", "shoprank_overload_rejections_total", "shoprank_model_capacity")
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each level and of the baseline.")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here (run_all.py keeps "
                        "it in benchmarks/results/serve_load.json).")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    queries = load_queries(workdir, args.queries)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"seconds": args.seconds, "k": args.k, "candidates": args.candidates, "queries": len(queries),
                     "workers": args.workers, "max_queue": args.max_queue},
        "baseline_in_process_sequential": baseline(workdir, queries, args.seconds, args.k, args.candidates),
    }
    port = free_port()
    log = tempfile.TemporaryFile()
    server = start_server(workdir, port, args.workers, args.max_queue, log)
    try:
        run_level(port, queries, 1, min(2.0, args.seconds), args.k, args.candidates)  # warm-up, not reported
        report["levels"] = [run_level(port, queries, int(c), args.seconds, args.k, args.candidates)
                            for c in args.concurrency.split(",")]
        report["metrics"] = scrape(port)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
