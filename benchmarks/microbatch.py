"""Micro-batching the rerank stage: would scoring concurrent requests' candidates in one ONNX
Runtime call beat one call per request? Prints JSON.

The service runs each search on its own (`pipeline serve --workers 1`: one model call at a
time, each ONNX Runtime call using every core), so N requests arriving together are reranked
as N ``predict`` calls in a row. A micro-batcher would wait a few ms, concatenate the waiting
requests' (query, product) pairs and score them in one call. This measures what that could
gain at best (before its wait time), on the int8 ONNX cross-encoder the service loads:

* **(a) unbatched** — N ``predict`` calls of 50 pairs, one per query, back to back (today).
  The i-th request is answered when the first i calls are done.
* **(b) batched** — one ``predict`` call of the N×50 pairs, all queries concatenated (what a
  micro-batcher would call): the predictor's own length-sorted batches of 64 pairs.
* **(b1) one run** — the N×50 pairs as a single ONNX Runtime run (``batch_size`` = N×50).

For N = 1, 2, 4, 8 concurrent queries, each repetition scores the same N queries with all
three variants, in a rotating order (all 6 orders in turn), so machine noise and drift hit
every variant alike; ratios are taken per repetition (paired) and summarised by their median.
Throughput is pairs/s; latency is the time until a request's scores are ready (the mean over
the N requests, and ``wall_ms``: the last one). Each repetition takes the next N of the demo world's test
queries with the candidates the service's retriever returns for them (``TwoStageSearcher``
loaded exactly as `pipeline serve` loads it), so texts and lengths are the real ones.

Scores: batching pads pairs to other queries' lengths, and int8 dynamic quantisation picks one
activation scale per ONNX run, so (b) and (b1) may differ from (a). Reported: the max |Δ| of the
task probabilities and of the final ranking score (fused and blended as the searcher does),
and how many queries' top-10 changed (order, and set); the same differences with the fp32 graph
are the control (``fp32_control``). (a) is also checked against ``searcher.search`` (the
answer `pipeline search` and the service give): it must be identical.

Thread settings: ``server`` is the session as the service loads it (intra-op threads = the
cores this process may use, inter-op 1, no spinning); ``--threads 1`` adds a session with one
intra-op thread (a replica per core), measured the same way in its own interleaved rounds.

Inputs: ``--workdir`` holding a demo build with an exported reranker (``make demo`` or
``pipeline demo --quick``: models/reranker/onnx, indexes/default, data/sample); only read.

    python benchmarks/microbatch.py --workdir . [--concurrency 1,2,4,8] [--candidates 50] [--reps 12]
        [--threads server,1] [--out FILE]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K = 10
VARIANTS = ("a_unbatched", "b_batched", "b1_one_run")
ORDERS = list(itertools.permutations(VARIANTS))


def load_searcher(workdir: Path) -> Any:
    """The searcher `pipeline serve` builds in ``workdir`` (default paths, backend, precision)."""
    from pipeline.serve.settings import Artefacts, ServeSettings
    from pipeline.serve.state import load_searcher as serve_load

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        searcher = serve_load(Artefacts(), ServeSettings()).searcher
    finally:
        os.chdir(cwd)
    model = searcher.reranker
    if type(model).__name__ != "OnnxCrossEncoder" or getattr(model, "precision", None) != "int8":
        sys.exit(f"error: the service in {workdir} would not rerank with the int8 ONNX cross-encoder "
                 f"({type(model).__name__}); export it with `pipeline export-onnx`")
    return searcher


def load_queries(workdir: Path) -> list[str]:
    import pyarrow.parquet as pq

    rows = pq.read_table(workdir / "data/sample/queries.parquet").to_pylist()
    return [r["query"] for r in rows if r.get("split") == "test"] or [r["query"] for r in rows]


def collect(searcher: Any, workdir: Path, queries: Sequence[str], candidates: int) -> list[dict[str, Any]]:
    """Per query: its candidates in retrieval order, their texts and retrieval scores, and the
    probabilities ``searcher.search`` (the service's answer) gives them."""
    from pipeline.search import clean_query

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        items = []
        for raw in queries:
            query = clean_query(raw)
            hits = searcher.search(query, k=candidates, candidates=candidates)
            hits = sorted(hits, key=lambda h: -h.retrieval_score)  # back to the order the reranker got them
            if len(hits) < candidates:
                continue
            items.append({
                "query": query, "ids": [h.product_id for h in hits],
                "texts": [searcher.catalog.text(searcher._row[h.product_id]) for h in hits],
                "rscores": np.asarray([h.retrieval_score for h in hits], dtype=np.float64),
                "search_probs": np.asarray([[h.probs[t] for t in searcher.tasks] for h in hits], dtype=np.float32),
            })
    finally:
        os.chdir(cwd)
    return items


def final_scores(searcher: Any, probs: np.ndarray, rscores: np.ndarray) -> np.ndarray:
    """The ranking score ``TwoStageSearcher._rerank`` computes from probabilities."""
    from rerank.fusion import blend, fuse

    scores = np.asarray(fuse(probs, searcher.tasks, searcher.weights), dtype=np.float64)
    if searcher.retrieval_weight > 0.0:
        scores = blend(scores, rscores, 1.0 - searcher.retrieval_weight)
    return scores


def top_k(scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], i))[:K]
    return [ids[i] for i in order]


def run_variant(model: Any, name: str, group: Sequence[dict[str, Any]]) -> tuple[float, list[float], list[np.ndarray]]:
    """(wall ms, per-request ready times in ms, per-query probabilities) of one variant."""
    sizes = [len(item["texts"]) for item in group]
    if name == "a_unbatched":
        ready, probs = [], []
        start = time.perf_counter()
        for item in group:
            probs.append(model.predict([item["query"]] * len(item["texts"]), item["texts"]))
            ready.append((time.perf_counter() - start) * 1000)
        return ready[-1], ready, probs
    queries = [item["query"] for item in group for _ in item["texts"]]
    texts = [t for item in group for t in item["texts"]]
    batch = 64 if name == "b_batched" else len(texts)
    start = time.perf_counter()
    out = model.predict(queries, texts, batch_size=batch)
    wall = (time.perf_counter() - start) * 1000
    bounds = np.cumsum([0, *sizes])
    return wall, [wall] * len(group), [out[bounds[i]:bounds[i + 1]] for i in range(len(group))]


def padded_tokens(model: Any, name: str, group: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(real tokens, tokens fed to the model after padding) of one variant's ONNX runs."""
    from pipeline.core.onnx import length_sorted_batches

    def runs(queries: list[str], texts: list[str], batch: int) -> tuple[int, int]:
        lengths = [len(q) + len(t) for q, t in zip(queries, texts)]
        real = fed = 0
        for idx in length_sorted_batches(lengths, batch):
            mask = model.tokenizer([queries[i] for i in idx], [texts[i] for i in idx])["attention_mask"]
            real, fed = real + int(mask.sum()), fed + int(mask.size)
        return real, fed

    if name == "a_unbatched":
        parts = [runs([item["query"]] * len(item["texts"]), item["texts"], 64) for item in group]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    queries = [item["query"] for item in group for _ in item["texts"]]
    texts = [t for item in group for t in item["texts"]]
    return runs(queries, texts, 64 if name == "b_batched" else len(texts))


def quantiles(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"median": round(float(np.median(arr)), digits), "q25": round(float(np.percentile(arr, 25)), digits),
            "q75": round(float(np.percentile(arr, 75)), digits), "min": round(float(arr.min()), digits),
            "max": round(float(arr.max()), digits)}


def measure(searcher: Any, model: Any, items: list[dict[str, Any]], concurrency: Sequence[int], reps: int,
            candidates: int) -> dict[str, Any]:
    """Interleaved repetitions of the three variants for every N; summaries per N."""
    for n in concurrency:  # warm-up: ORT sizes its buffers for each new shape on first use
        group = [items[i % len(items)] for i in range(n)]
        for name in VARIANTS:
            run_variant(model, name, group)
    def fresh() -> dict[str, Any]:
        return {"wall_ms": {v: [] for v in VARIANTS}, "mean_ready_ms": {v: [] for v in VARIANTS},
                "max_prob_diff": {v: 0.0 for v in VARIANTS[1:]}, "max_score_diff": {v: 0.0 for v in VARIANTS[1:]},
                "top10_changed": {v: 0 for v in VARIANTS[1:]}, "top10_set_changed": {v: 0 for v in VARIANTS[1:]},
                "tokens": {v: [0, 0] for v in VARIANTS}, "queries_compared": 0}

    raw = {n: fresh() for n in concurrency}
    cursor = 0
    for rep in range(reps):
        for n in concurrency:
            group = [items[(cursor + i) % len(items)] for i in range(n)]
            cursor += n
            row = raw[n]
            results = {}
            for name in ORDERS[(rep + n) % len(ORDERS)]:
                results[name] = run_variant(model, name, group)
                row["wall_ms"][name].append(results[name][0])
                row["mean_ready_ms"][name].append(statistics.fmean(results[name][1]))
            base = results["a_unbatched"][2]
            for name in VARIANTS[1:]:
                for item, ref, got in zip(group, base, results[name][2]):
                    row["max_prob_diff"][name] = max(row["max_prob_diff"][name], float(np.abs(got - ref).max()))
                    ref_s, got_s = (final_scores(searcher, p, item["rscores"]) for p in (ref, got))
                    row["max_score_diff"][name] = max(row["max_score_diff"][name], float(np.abs(got_s - ref_s).max()))
                    ref_top, got_top = top_k(ref_s, item["ids"]), top_k(got_s, item["ids"])
                    row["top10_changed"][name] += ref_top != got_top
                    row["top10_set_changed"][name] += set(ref_top) != set(got_top)
            row["queries_compared"] += n
            for name in VARIANTS:
                real, fed = padded_tokens(model, name, group)
                row["tokens"][name][0] += real
                row["tokens"][name][1] += fed
    out: dict[str, Any] = {}
    for n in concurrency:
        row = raw[n]
        pairs = n * candidates
        level: dict[str, Any] = {"pairs": pairs, "variants": {}, "ratio_vs_unbatched": {}}
        for name in VARIANTS:
            walls = row["wall_ms"][name]
            real, fed = row["tokens"][name]
            level["variants"][name] = {
                "pairs_per_s": round(pairs / (statistics.median(walls) / 1000), 1),
                "wall_ms": quantiles(walls, 1),
                "mean_request_latency_ms": quantiles(row["mean_ready_ms"][name], 1),
                "padding_share": round(1 - real / fed, 3),
            }
        a = row["wall_ms"]["a_unbatched"]
        for name in VARIANTS[1:]:
            # throughput (b)/(a) per repetition = wall (a) / wall (b): paired, so drift cancels
            level["ratio_vs_unbatched"][name] = {
                "throughput": quantiles([wa / wb for wa, wb in zip(a, row["wall_ms"][name])]),
                "mean_request_latency": quantiles([lb / la for la, lb in zip(row["mean_ready_ms"]["a_unbatched"],
                                                                           row["mean_ready_ms"][name])]),
                "max_abs_prob_diff": float(f"{row['max_prob_diff'][name]:.3g}"),
                "max_abs_score_diff": float(f"{row['max_score_diff'][name]:.3g}"),
                "queries_with_top10_order_changed": row["top10_changed"][name],
                "queries_with_top10_set_changed": row["top10_set_changed"][name],
            }
        level["queries_compared"] = row["queries_compared"]
        out[str(n)] = level
    return out


def fp32_control(searcher: Any, workdir: Path, items: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Score differences of batching with the fp32 graph (no activation quantisation), for the
    first ``n``-query groups of the test queries: tells batching's int8 effect from padding's."""
    from rerank.onnx_model import OnnxCrossEncoder

    model = OnnxCrossEncoder.load(workdir / "models/reranker", precision="fp32")
    out: dict[str, Any] = {"concurrency": n, "queries_compared": 0}
    diffs = {name: [0.0, 0.0, 0] for name in VARIANTS[1:]}
    for start in range(0, len(items) - n + 1, n):
        group = items[start:start + n]
        base = run_variant(model, "a_unbatched", group)[2]
        for name in VARIANTS[1:]:
            for item, ref, got in zip(group, base, run_variant(model, name, group)[2]):
                ref_s, got_s = (final_scores(searcher, p, item["rscores"]) for p in (ref, got))
                diffs[name][0] = max(diffs[name][0], float(np.abs(got - ref).max()))
                diffs[name][1] = max(diffs[name][1], float(np.abs(got_s - ref_s).max()))
                diffs[name][2] += top_k(ref_s, item["ids"]) != top_k(got_s, item["ids"])
        out["queries_compared"] += n
    for name, (prob, score, changed) in diffs.items():
        out[name] = {"max_abs_prob_diff": float(f"{prob:.3g}"), "max_abs_score_diff": float(f"{score:.3g}"),
                     "queries_with_top10_order_changed": changed}
    return out


def session_settings(model: Any) -> dict[str, Any]:
    options = model.session.get_session_options()
    return {"intra_op_threads": options.intra_op_num_threads, "inter_op_threads": options.inter_op_num_threads,
            "allow_spinning": options.get_session_config_entry("session.intra_op.allow_spinning")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--candidates", type=int, default=50, help="Candidates reranked per query (the service's default).")
    ap.add_argument("--reps", type=int, default=12, help="Interleaved repetitions per N and thread setting.")
    ap.add_argument("--threads", default="server,1",
                    help="Thread settings measured: 'server' (as `pipeline serve` loads the model) and/or counts.")
    ap.add_argument("--no-fp32-control", dest="fp32_control", action="store_false",
                    help="Skip the score differences of batching with the fp32 graph.")
    ap.add_argument("--out", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    from pipeline.core.runtime import available_cpus
    from rerank.onnx_model import OnnxCrossEncoder

    started = time.perf_counter()
    searcher = load_searcher(workdir)
    items = collect(searcher, workdir, load_queries(workdir), args.candidates)
    if not items:
        sys.exit(f"error: no test query in {workdir} has {args.candidates} candidates")
    a_vs_search = max(float(np.abs(searcher.reranker.predict([it["query"]] * len(it["texts"]), it["texts"])
                                   - it["search_probs"]).max()) for it in items)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "available_cpus": available_cpus(), "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"workdir": str(workdir), "candidates": args.candidates, "concurrency": args.concurrency,
                     "reps": args.reps, "queries": len(items), "precision": searcher.reranker.precision,
                     "max_length": searcher.reranker.tokenizer.max_length},
        "unbatched_equals_search": {"max_abs_prob_diff": a_vs_search, "identical": a_vs_search == 0.0},
        "threads": {},
    }
    for setting in args.threads.split(","):
        if setting == "server":
            model = searcher.reranker
        else:
            model = OnnxCrossEncoder.load(workdir / "models/reranker", precision="int8", threads=int(setting))
        report["threads"][setting] = {"session": session_settings(model),
                                      "levels": measure(searcher, model, items, args.concurrency, args.reps,
                                                        args.candidates)}
    if args.fp32_control:
        report["fp32_control"] = fp32_control(searcher, workdir, items, max(args.concurrency))
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        from pipeline.core.artifacts import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
