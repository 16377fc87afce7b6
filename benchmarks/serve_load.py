"""Load test of `pipeline serve`: throughput and latency under concurrent clients, next to
the obvious baseline (the same searcher called sequentially in-process), then the service's
operational checks: time to ready, a saturation soak with the server's memory sampled, and a
hot reload under load. Writes JSON with a ``checks`` dict of booleans.

Phases, in order:

1. **baseline** — ``TwoStageSearcher.search`` in a loop in this process for ``--seconds``.
2. **time to ready** — ``--ready-starts`` fresh ``python -m pipeline serve`` processes; for
   each, seconds from spawning it until /healthz first answers and until /readyz returns 200
   (the median is checked against ``--ready-budget``: a replica that takes long to become
   ready stretches every deploy and every restart after a crash).
3. **levels** — for each client concurrency (default 1, 2, 4, 8, 16), closed-loop clients
   (each sends its next GET /search as soon as the previous answer arrives, over a kept-alive
   connection) run for ``--seconds``; per level: requests/s, p50/p99 latency of answered
   requests, 200s, 503s (the bounded queue refusing, by design) and failures.
4. **saturation** — the concurrency where throughput stops growing (the first level after
   which the next adds less than ``--saturation-growth``), times ``--saturation-factor``, for
   ``--saturation-seconds``. Only 200 and 503 are acceptable; any other status, a connection
   error or a request slower than ``--request-timeout`` is a failure. The server's RSS is
   sampled every 0.5 s; after ``--rss-warmup`` seconds it must stay within 10% of its first
   post-warm-up sample ("flat"): a leak under sustained overload shows up here first.
5. **reload under load** — a copy of the index rebuilt with ``pipeline index compact`` (same
   vectors, new manifest id, as after a real rebuild); while the same number of clients run,
   ``POST /admin/reload`` points the service at it. Every request must succeed, every request
   sent after the reload answered must carry the new index id, and every one answered before
   it was sent the old id.

The query list repeats, so the query-vector cache is hit the same way in the baseline and in
the service; /metrics' hit ratio is recorded. The server is a separate process bound to
127.0.0.1 only; the client threads share the machine's cores with it, so on a small machine
the client's own cost is part of what is measured.

Inputs: ``--workdir`` holding a demo build (``make demo`` or ``pipeline demo --quick``); it is
only read (the rebuilt index goes to a temporary directory).

    python benchmarks/serve_load.py --workdir . [--seconds 10] [--concurrency 1,2,4,8,16] [--max-queue 16]
        [--saturation-seconds 30] [--reload-seconds 15] [--request-timeout 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    import psutil
except ImportError:  # the /proc fallback in rss_bytes covers Linux
    psutil = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FALLBACK_QUERIES = ["comfy couch", "red running shoes", "waterproof jacket for hiking", "desk lamp",
                    "sofa for a small apartment", "kids rain boots", "cheap office chair", "linen sheets"]
#: How often the server's resident memory is read during the soak and the reload.
RSS_INTERVAL_S = 0.5
#: The band RSS must stay in after warm-up to count as flat, as a fraction of the first sample.
RSS_FLAT_BAND = 0.10
#: Statuses a loaded service may answer /search with: an answer, or a fast refusal by design.
ACCEPTABLE = ("200", "503")
INDEX_DIR = Path("indexes/default")


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


# ---------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One `pipeline serve` process, how long it took to come up, and its log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]
    alive_s: float
    ready_s: float
    ready: dict[str, Any]

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it hangs."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def probe(port: int, path: str) -> tuple[int, bytes] | None:
    """One GET on a fresh connection: (status, body), or None while nothing listens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def start_server(workdir: Path, workers: int, max_queue: int, admin_token: str | None = None,
                 timeout: float = 180.0) -> Server:
    """Spawn the service and wait until /readyz is 200, timing /healthz and /readyz from the
    spawn. Its log goes to a file (a pipe nobody reads would fill with access-log lines and
    stall the server); the token goes through the environment, not the process list."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--max-queue", str(max_queue)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SHOPRANK_ADMIN_TOKEN", None)
    if admin_token is not None:
        env["SHOPRANK_ADMIN_TOKEN"] = admin_token
    log = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    alive_s: float | None = None
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            log.close()
            raise SystemExit(f"error: the server exited ({proc.returncode}) before it was ready: {tail[0]}")
        answer = probe(port, "/readyz")
        if answer is not None:
            elapsed = time.perf_counter() - started
            alive_s = elapsed if alive_s is None else alive_s
            if answer[0] == 200:
                return Server(proc, port, log, round(alive_s, 3), round(elapsed, 3), json.loads(answer[1]))
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    log.close()
    raise SystemExit(f"error: the server did not become ready in {timeout:.0f} s")


def time_to_ready(workdir: Path, starts: int, workers: int, max_queue: int) -> dict[str, Any]:
    """Start the service ``starts`` times, one after another; the median is what a deploy waits."""
    runs = []
    for _ in range(starts):
        server = start_server(workdir, workers, max_queue)
        server.stop()
        runs.append({"alive_s": server.alive_s, "ready_s": server.ready_s,
                     "load_seconds": server.ready.get("load_seconds")})
    return {"starts": runs, "median_ready_s": round(statistics.median(r["ready_s"] for r in runs), 3),
            "median_alive_s": round(statistics.median(r["alive_s"] for r in runs), 3)}


# ---------------------------------------------------------------------------- clients
@dataclass
class Tally:
    """What the clients of one phase saw."""

    outcomes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    #: (sent, answered, index manifest id) of each 200, when tracking models.
    answers: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(n for kind, n in self.outcomes.items() if kind not in ACCEPTABLE)

    def summary(self, wall: float) -> dict[str, Any]:
        ok = self.outcomes.get("200", 0)
        return {"requests": ok, "qps": round(ok / wall, 2), **latency_summary(self.latencies), "ok": ok,
                "rejected_503": self.outcomes.get("503", 0), "errors": self.failures,
                "outcomes": dict(sorted(self.outcomes.items()))}


class ClosedLoopLoad:
    """``concurrency`` client threads, each sending GET /search as soon as its previous answer
    arrived, until :meth:`stop`. An answer slower than ``timeout`` counts as a timeout even
    when it eventually came (a real client would have given up on it)."""

    def __init__(self, port: int, queries: list[str], concurrency: int, k: int, candidates: int,
                 timeout: float, track_models: bool = False) -> None:
        self.port, self.queries, self.k, self.candidates = port, queries, k, candidates
        self.timeout, self.track_models = timeout, track_models
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(concurrency)]
        self.started = self.stopped = 0.0

    def start(self) -> ClosedLoopLoad:
        self.started = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.stopped = time.perf_counter()
        return self.tally

    def answered(self) -> int:
        with self._lock:
            return self.tally.outcomes.get("200", 0)

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def _client(self, offset: int) -> None:
        conn = self._connect()
        i = offset
        while not self._stop.is_set():
            path = "/search?" + urllib.parse.urlencode({"q": self.queries[i % len(self.queries)], "k": self.k,
                                                        "candidates": self.candidates})
            index_id = ""
            sent = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                kind = str(response.status)
                if kind == "200" and self.track_models:
                    index_id = str(json.loads(body)["models"]["index"])
            except TimeoutError:
                kind = "timeout"
            except (OSError, http.client.HTTPException):
                kind = "connection_error"
            answered = time.perf_counter()
            if kind not in ACCEPTABLE:
                conn.close()  # a failed exchange leaves the connection in an unknown state
                conn = self._connect()
            elif answered - sent > self.timeout:
                kind = "timeout"  # answered, but later than a real client would have waited
            with self._lock:
                self.tally.outcomes[kind] = self.tally.outcomes.get(kind, 0) + 1
                if kind == "200":
                    self.tally.latencies.append(answered - sent)
                    if self.track_models:
                        self.tally.answers.append((sent, answered, index_id))
            if kind == "503":
                time.sleep(0.05)  # a polite client backs off (Retry-After says 1 s; shortened to keep load on)
            i += 7
        conn.close()


def run_level(port: int, queries: list[str], concurrency: int, seconds: float, k: int, candidates: int,
              timeout: float) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``seconds``."""
    load = ClosedLoopLoad(port, queries, concurrency, k, candidates, timeout).start()
    time.sleep(seconds)
    tally = load.stop()
    return {"concurrency": concurrency, **tally.summary(load.stopped - load.started)}


def saturation_concurrency(levels: list[dict[str, Any]], growth: float) -> int:
    """The first concurrency after which one more level adds less than ``growth`` throughput
    (the last level when throughput grew all the way)."""
    ordered = sorted(levels, key=lambda level: level["concurrency"])
    for here, after in zip(ordered, ordered[1:]):
        if after["qps"] < here["qps"] * (1.0 + growth):
            return int(here["concurrency"])
    return int(ordered[-1]["concurrency"])


# ---------------------------------------------------------------------------- memory
def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process: psutil when installed, else /proc (Linux); None once gone."""
    if psutil is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if line is None else int(line.split()[1]) * 1024


class RssSampler:
    """Reads a process's RSS every ``interval`` seconds on a background thread."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def _run(self) -> None:
        while True:
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((time.perf_counter() - self.started, rss))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, warmup: float | None = None) -> dict[str, Any]:
        """First / last / max in MiB; with ``warmup``, whether every sample after it stays
        within the flat band of the first one after it."""
        mib = [(t, rss / 2**20) for t, rss in self.samples]
        if not mib:
            return {"samples": 0, "flat": False} if warmup is not None else {"samples": 0}
        out: dict[str, Any] = {"samples": len(mib), "interval_s": self.interval,
                               "first_mib": round(mib[0][1], 1), "last_mib": round(mib[-1][1], 1),
                               "max_mib": round(max(v for _, v in mib), 1)}
        if warmup is not None:
            after = [v for t, v in mib if t >= warmup]
            base = after[0] if after else None
            out.update({"warmup_s": warmup, "after_warmup_first_mib": None if base is None else round(base, 1),
                        "after_warmup_max_mib": round(max(after), 1) if after else None,
                        "after_warmup_min_mib": round(min(after), 1) if after else None,
                        "flat_band": RSS_FLAT_BAND,
                        "flat": base is not None and len(after) >= 2
                        and all(abs(v - base) <= RSS_FLAT_BAND * base for v in after)})
        return out


# ---------------------------------------------------------------------------- phases
def saturation_phase(server: Server, queries: list[str], concurrency: int, seconds: float, warmup: float,
                     k: int, candidates: int, timeout: float) -> dict[str, Any]:
    """Overload for ``seconds`` with the server's memory sampled."""
    with RssSampler(server.proc.pid) as sampler:
        load = ClosedLoopLoad(server.port, queries, concurrency, k, candidates, timeout).start()
        time.sleep(seconds)
        tally = load.stop()
    return {"concurrency": concurrency, "seconds": seconds, **tally.summary(load.stopped - load.started),
            "rss": sampler.summary(warmup)}


def rebuilt_index(workdir: Path, into: Path) -> tuple[Path, str]:
    """A copy of the demo's index rebuilt by `pipeline index compact` (same vectors, new
    manifest id): what a real rebuild hands a running service, without re-encoding."""
    target = into / "index-rebuilt"
    shutil.copytree(workdir / INDEX_DIR, target)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "index", "compact", "--index", str(target), "--json"],
                          cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: could not rebuild a copy of {workdir / INDEX_DIR}: {last}")
    return target, str(json.loads((target / "manifest.json").read_text(encoding="utf-8"))["id"])


def post_reload(port: int, token: str, index_dir: Path) -> dict[str, Any]:
    """POST /admin/reload to ``index_dir``: status, when it was sent and answered, its body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    sent = time.perf_counter()
    try:
        conn.request("POST", "/admin/reload", body=json.dumps({"index_dir": str(index_dir)}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        response = conn.getresponse()
        status, body = response.status, json.loads(response.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        status, body = -1, {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()
    return {"status": status, "sent": sent, "answered": time.perf_counter(), "body": body}


def reload_phase(server: Server, token: str, new_index: Path, new_id: str, queries: list[str], concurrency: int,
                 seconds: float, k: int, candidates: int, timeout: float) -> dict[str, Any]:
    """Clients run; a third of the way in, the service is reloaded onto ``new_index``; the
    clients go on for at least the rest of ``seconds`` after the reload has answered."""
    old_id = str(server.ready["models"]["index"])
    with RssSampler(server.proc.pid) as sampler:
        load = ClosedLoopLoad(server.port, queries, concurrency, k, candidates, timeout, track_models=True).start()
        time.sleep(seconds / 3)
        reload = post_reload(server.port, token, new_index)
        time.sleep(seconds * 2 / 3)
        tally = load.stop()
    before = [a for a in tally.answers if a[1] <= reload["sent"]]
    during = [a for a in tally.answers if a[1] > reload["sent"] and a[0] < reload["answered"]]
    after = [a for a in tally.answers if a[0] >= reload["answered"]]
    served = reload["body"].get("models", {}).get("index") if isinstance(reload["body"], dict) else None
    return {
        "concurrency": concurrency, **tally.summary(load.stopped - load.started),
        "reload": {"status": reload["status"], "seconds": round(reload["answered"] - reload["sent"], 3),
                   "load_seconds": reload["body"].get("seconds"), "error": reload["body"].get("error")},
        "old_index_id": old_id, "new_index_id": new_id, "reload_reported_index_id": served,
        "answers_before": len(before), "answers_while_reloading": len(during), "answers_after": len(after),
        "ids_before": sorted({a[2] for a in before}), "ids_while_reloading": sorted({a[2] for a in during}),
        "ids_after": sorted({a[2] for a in after}),
        "switched": (new_id != old_id and served == new_id and bool(before) and bool(after)
                     and all(a[2] == old_id for a in before) and all(a[2] == new_id for a in after)),
        "rss": sampler.summary(),
    }


def scrape(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    wanted = ("shoprank_query_cache_hit_ratio", "shoprank_overload_rejections_total", "shoprank_model_capacity",
              "shoprank_reloads_total")
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


def checks(report: dict[str, Any], ready_budget: float) -> dict[str, bool]:
    """The pass/fail summary of the run (latency is noisy on a shared machine and is not checked)."""
    saturation, reload = report["saturation"], report["reload_under_load"]
    return {
        f"time_to_ready_median_within_{ready_budget:g}s": report["time_to_ready"]["median_ready_s"] <= ready_budget,
        "levels_only_200_and_503": all(level["errors"] == 0 for level in report["levels"]),
        "saturation_only_200_and_503": saturation["errors"] == 0,
        "saturation_rss_flat": bool(saturation["rss"].get("flat")),
        "reload_answered_200": reload["reload"]["status"] == 200,
        "reload_no_failed_requests": reload["errors"] == 0,
        "reload_switched_manifest_id": reload["switched"],
    }


# ---------------------------------------------------------------------------- CLI
def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated client counts like 1,2,4, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected client counts >= 1, got {text!r}")
    return sorted(set(levels))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--seconds", type=positive(float), default=10.0,
                        help="Duration of each level and of the baseline.")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8, 16])
    parser.add_argument("--queries", type=positive(int), default=64)
    parser.add_argument("--k", type=positive(int), default=10)
    parser.add_argument("--candidates", type=positive(int), default=50)
    parser.add_argument("--workers", type=positive(int), default=1)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--request-timeout", type=positive(float), default=10.0,
                        help="A request unanswered after this many seconds counts as a failure.")
    parser.add_argument("--ready-starts", type=positive(int), default=3)
    parser.add_argument("--ready-budget", type=positive(float), default=3.0,
                        help="Seconds the median time to ready may take (checked).")
    parser.add_argument("--saturation-growth", type=positive(float), default=0.10,
                        help="Throughput growth below which one more level counts as saturated.")
    parser.add_argument("--saturation-factor", type=positive(int), default=4)
    parser.add_argument("--saturation-seconds", type=positive(float), default=30.0)
    parser.add_argument("--rss-warmup", type=float, default=5.0,
                        help="Seconds of the soak before RSS must stay flat.")
    parser.add_argument("--reload-seconds", type=positive(float), default=15.0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here (run_all.py keeps "
                        "it in benchmarks/results/serve_load.json).")
    args = parser.parse_args(argv)
    if args.max_queue < 0:
        parser.error(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.rss_warmup < args.saturation_seconds:
        parser.error(f"--rss-warmup must lie in [0, --saturation-seconds), got {args.rss_warmup}")
    if not (args.workdir / INDEX_DIR / "manifest.json").is_file():
        parser.error(f"{args.workdir}: no demo build here ({INDEX_DIR} missing); run `pipeline demo --quick` first")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    queries = load_queries(workdir, args.queries)
    knobs = {"k": args.k, "candidates": args.candidates, "timeout": args.request_timeout}
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"seconds": args.seconds, "k": args.k, "candidates": args.candidates, "queries": len(queries),
                     "workers": args.workers, "max_queue": args.max_queue, "request_timeout_s": args.request_timeout,
                     "saturation_factor": args.saturation_factor, "saturation_seconds": args.saturation_seconds,
                     "rss_warmup_s": args.rss_warmup, "reload_seconds": args.reload_seconds},
        "baseline_in_process_sequential": baseline(workdir, queries, args.seconds, args.k, args.candidates),
        "time_to_ready": time_to_ready(workdir, args.ready_starts, args.workers, args.max_queue),
    }
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        new_index, new_id = rebuilt_index(workdir, Path(scratch))
        server = start_server(workdir, args.workers, args.max_queue, admin_token=token)
        try:
            run_level(server.port, queries, 1, min(2.0, args.seconds), **knobs)  # warm-up, not reported
            report["levels"] = [run_level(server.port, queries, c, args.seconds, **knobs) for c in args.concurrency]
            saturated = saturation_concurrency(report["levels"], args.saturation_growth)
            report["saturation"] = {"saturated_at": saturated, **saturation_phase(
                server, queries, saturated * args.saturation_factor, args.saturation_seconds, args.rss_warmup, **knobs)}
            report["metrics"] = scrape(server.port)  # before the reload, which starts a fresh query cache
            report["reload_under_load"] = reload_phase(server, token, new_index, new_id, queries,
                                                       saturated * args.saturation_factor, args.reload_seconds, **knobs)
            report["metrics_after_reload"] = scrape(server.port)
        finally:
            server.stop()
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["checks"] = checks(report, args.ready_budget)
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        print(f"serve_load: checks failed: {', '.join(failed)}", file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
