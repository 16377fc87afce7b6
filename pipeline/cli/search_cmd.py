"""Orchestration commands: `search`, `serve`, `score-logs`, `evaluate`, `fit`, `demo`.

Thin on purpose: each command parses its options, calls one library function
(:mod:`pipeline.search`, :mod:`pipeline.serve`, :mod:`pipeline.scoring`, :mod:`pipeline.evaluate`,
:mod:`pipeline.fit`, :mod:`pipeline.demo`) and prints a rich table or ``--json``. Heavy libraries are imported
inside the functions so `pipeline --help` stays fast. Defaults can come from the
``[search]``, ``[serve]``, ``[score-logs]``, ``[evaluate]``, ``[fit]`` and ``[demo]`` tables of pipeline.toml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.cli._app import app, echo, emit_json, info, mapping_option, print_table
from pipeline.config import (DEFAULT_CANDIDATES, DEFAULT_DATA_DIR, DEFAULT_INDEX_DIR, DEFAULT_PRECISION,
                             DEFAULT_RERANKER_DIR, DEFAULT_RETRIEVAL, DEFAULT_RETRIEVER_DIR, DEFAULT_RUNS_DIR,
                             DEFAULT_SEED, EVAL_SYSTEMS)
from pipeline.core.errors import ShoprankError

_INDEX = typer.Option(DEFAULT_INDEX_DIR, "--index", help="Index directory (built by build-index or the demo).")
_RERANKER = typer.Option(DEFAULT_RERANKER_DIR, "--reranker", help="Trained reranker directory.")
#: search / score-logs: unset means "models/reranker if there is one"; a path given is required.
_RERANKER_OR_DEFAULT = typer.Option(None, "--reranker", help="Trained reranker directory (default: models/reranker; "
                                    "without one there, retrieval order with a note).")
_CATALOG = typer.Option(None, "--catalog", help="Catalog file (default: data/sample/catalog.parquet).")
_BACKEND = typer.Option("auto", "--backend", help="auto | onnx | torch. auto = ONNX Runtime (no torch import) "
                        "when `pipeline export-onnx` has exported both models, else PyTorch.")
_CANDIDATES = typer.Option(DEFAULT_CANDIDATES, "--candidates", min=1,
                           help="Retrieved candidates the reranker scores per query.")
_PRECISION = typer.Option(DEFAULT_PRECISION, "--precision", help="auto | fp32 | int8 (reranker). auto = int8 on ONNX "
                          "(~2x faster, nDCG@10 within 0.005), fp32 on torch.")
_LOG_INPUT = typer.Option(..., "--input", help="Query log (Parquet, CSV or JSONL) with a 'query' column; "
                         "add 'product_id' to score given pairs.")
_RETRIEVAL = typer.Option(DEFAULT_RETRIEVAL, "--retrieval", help="First stage: dense | lexical (BM25) | hybrid "
                          "(both fused as fitted into the index; README \"Hybrid recall\").")
_FILTER = typer.Option(None, "--filter", help="Keep only catalog products where COLUMN OP VALUE holds "
                       "(=, !=, <, <=, >, >=, in), e.g. 'category=Sofas' 'price<=500'; repeatable (all must hold).")
_ALLOW_CATALOG_CHANGE = typer.Option(False, "--allow-catalog-change", help="Search even though the catalog's "
                                     "product text differs from the text indexed (rankings use the indexed text).")
_STUDENT = typer.Option(None, "--student", help="Distilled student reranker (`pipeline distill-reranker`) for "
                        "--rerank-cascade.")
_CASCADE = typer.Option(None, "--rerank-cascade", help="small:N,full:M = the student scores N retrieved candidates, "
                        "the reranker rescores the student's top M (small:N alone: the student only). Needs --student.")
_RAY_ADDRESS = typer.Option(None, "--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); "
                            "default: start a local Ray. --engine ray only.")


def _weights(spec: Optional[str]) -> Optional[dict[str, float]]:
    """Parse --weights (task=value,...) into fusion weights; bad specs are one-line errors."""
    if not spec:
        return None
    from rerank.fusion import parse_weights

    try:
        return parse_weights(spec)
    except ValueError as exc:
        raise ShoprankError(f"--weights: {exc}") from None


def _hit_rows(hits: list[dict[str, Any]], tasks: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    cols = ["rank", "product_id", "title", *[f"p_{t}" for t in tasks], "score", "retrieval_score"]
    return hits, cols


def _gather_queries(query: Optional[str], queries_file: Optional[Path]) -> list[str]:
    """The query argument plus the non-blank lines of --queries-file (UTF-8), in that order."""
    queries: list[str] = [] if query is None else [query]
    if queries_file is not None:
        try:
            lines = queries_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ShoprankError(f"{queries_file}: cannot read queries file ({getattr(exc, 'strerror', None) or exc.__class__.__name__})") from None
        queries += [line for line in lines if line.strip()]
        if not queries:
            raise ShoprankError(f"{queries_file}: no queries in the file")
    return queries


@app.command("search")
def search(
    query: Optional[str] = typer.Argument(None, help="What the shopper typed."),
    k: int = typer.Option(10, "--k", min=1, help="Results to show."),
    candidates: int = _CANDIDATES,
    index_dir: Path = _INDEX,
    reranker: Optional[Path] = _RERANKER_OR_DEFAULT,
    catalog: Optional[Path] = _CATALOG,
    queries_file: Optional[Path] = typer.Option(None, "--queries-file", help="Text file, one query per line."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fusion weights, e.g. click=0.1,add_to_cart=0.3,purchase=1."),
    backend: str = _BACKEND,
    precision: str = _PRECISION,
    retrieval: str = _RETRIEVAL,
    filters: Optional[list[str]] = _FILTER,
    allow_catalog_change: bool = _ALLOW_CATALOG_CHANGE,
    student: Optional[Path] = _STUDENT,
    cascade: Optional[str] = _CASCADE,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Search the catalog: retrieve top candidates, rerank them, show the top k with click /
    add-to-cart / purchase probabilities. Without a trained reranker, shows retrieval order."""
    from pipeline.search import MAX_QUERY_CHARS, run_search

    result = run_search(_gather_queries(query, queries_file), k=k, candidates=candidates, index_dir=index_dir,
                        reranker=reranker or DEFAULT_RERANKER_DIR, reranker_required=reranker is not None,
                        catalog=catalog, weights=_weights(weights), backend=backend, precision=precision,
                        retrieval=retrieval, filters=filters, allow_catalog_change=allow_catalog_change,
                        student=student, cascade=cascade)
    if json_out:
        emit_json(result)
        return
    _print_results(result, MAX_QUERY_CHARS)


def _print_results(result: dict[str, Any], max_query_chars: int) -> None:
    """One table per query (a note for truncated queries, a line for empty results)."""
    for item in result["results"]:
        if item["truncated"]:
            info(f"note: query longer than {max_query_chars} characters; searched its first {max_query_chars}")
        rows, cols = _hit_rows(item["hits"], result["tasks"])
        title = item["query"] if len(item["query"]) <= 80 else item["query"][:77] + "..."
        if not rows:
            info(f"no results for {title!r}")
            continue
        print_table(rows, title=f"{title}" + ("" if result["reranked"] else "  (retrieval order, no reranker)"),
                    columns=cols)


@app.command("serve")
def serve(
    index_dir: Path = _INDEX,
    reranker: Optional[Path] = _RERANKER_OR_DEFAULT,
    catalog: Optional[Path] = _CATALOG,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Model calls run at once (threads; each ONNX call "
                                "already uses every core, so add replicas rather than threads to scale)."),
    max_queue: int = typer.Option(16, "--max-queue", min=0, help="Requests that may wait for a model thread; "
                                  "past that, 503 with Retry-After."),
    admin_token: Optional[str] = typer.Option(None, "--admin-token", help="Enables POST /admin/reload for "
                                              "requests with 'Authorization: Bearer TOKEN' (or $SHOPRANK_ADMIN_TOKEN)."),
    backend: str = _BACKEND,
    precision: str = _PRECISION,
    student: Optional[Path] = _STUDENT,
    cascade: Optional[str] = _CASCADE,
) -> None:
    """Serve search over HTTP: GET/POST /search, POST /score, /healthz, /readyz, /metrics,
    POST /admin/reload and a web page at /. Models load once, on ONNX Runtime when exported."""
    from pipeline.serve import Artefacts, ServeSettings, token_from_env
    from pipeline.serve.server import run_server

    artefacts = Artefacts(index_dir, reranker or DEFAULT_RERANKER_DIR, catalog, reranker_required=reranker is not None,
                          student=student, cascade=cascade)
    run_server(ServeSettings(artefacts, backend, precision, host, port, workers, max_queue,
                             token_from_env(admin_token)))


@app.command("score-logs")
def score_logs(
    input_path: Path = _LOG_INPUT,
    output: Path = typer.Option(..., "--output", help="Scored Parquet file to write."),
    k: int = typer.Option(10, "--k", min=1, help="Products per query (queries-only logs)."),
    candidates: int = _CANDIDATES,
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="Input rows per part (resume granularity)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (exactly-once)."),
    index_dir: Path = _INDEX,
    reranker: Optional[Path] = _RERANKER_OR_DEFAULT,
    catalog: Optional[Path] = _CATALOG,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    engine: str = typer.Option("local", "--engine", help="local | ray (Ray Data actors; needs the ray extra)."),
    address: Optional[str] = _RAY_ADDRESS,
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray scoring actors (default: one per CPU)."),
    backend: str = _BACKEND,
    precision: str = _PRECISION,
    retrieval: str = _RETRIEVAL,
    allow_catalog_change: bool = _ALLOW_CATALOG_CHANGE,
    student: Optional[Path] = _STUDENT,
    cascade: Optional[str] = _CASCADE,
) -> None:
    """Score a query log offline into Parquet: streamed in batches, resumable, with the
    model ids in the file's metadata. Repeated queries are computed once. With --engine ray
    the same job runs on Ray actors (local or a cluster) and writes the same file."""
    from pipeline.scoring import score_logs as run

    report = run(input_path, output, engine=engine, index_dir=index_dir, reranker=reranker or DEFAULT_RERANKER_DIR,
                 reranker_required=reranker is not None, catalog=catalog, k=k, candidates=candidates,
                 batch_size=batch_size, resume=resume, show_progress=progress, backend=backend, precision=precision,
                 address=address, workers=workers, retrieval=retrieval, allow_catalog_change=allow_catalog_change,
                 student=student, cascade=cascade)
    _print_scoring_report(report, json_out)


def _print_scoring_report(report: dict[str, Any], json_out: bool) -> None:
    """Notes for skipped rows on stderr, then the report as JSON or a one-row table."""
    for reason, count in report["skipped"].items():
        # rows counted from 1, as in every other message (the report keeps the 0-based input_row)
        info(f"note: skipped {count} row(s) with {reason} (first: row {report['first_skipped_row'][reason] + 1})")
    if json_out:
        emit_json(report)
    else:
        print_table([{key: report[key] for key in ("output", "mode", "rows_in", "rows_out", "computed",
                                                    "batches", "batches_resumed", "seconds", "rows_per_s")}],
                    title="score-logs")


@app.command("export-onnx")
def export_onnx(
    retriever: Path = typer.Option(DEFAULT_RETRIEVER_DIR, "--retriever", help="Trained retriever folder."),
    reranker: Path = _RERANKER,
    skip_reranker: bool = typer.Option(False, "--no-reranker", help="Export only the retriever."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Export both encoders to ONNX (fp32 + int8) next to their models, so `search` and
    `score-logs` run on ONNX Runtime and a cold `pipeline search` never imports torch."""
    from pipeline.export import export_onnx as run

    report = run(retriever, None if skip_reranker else reranker)
    if json_out:
        emit_json(report)
        return
    print_table([{"model": name, "export": r["export"], "seconds": r["seconds"],
                  **{f: f"{size / 2**20:.1f} MiB" for f, size in r["files"].items() if f.endswith(".onnx")}}
                 for name, r in report.items()], title="export-onnx")


@app.command("evaluate")
def evaluate(
    data: Path = typer.Option(DEFAULT_DATA_DIR, "--data", help="Dataset directory (queries/qrels/catalog/engagement .parquet)."),
    split: str = typer.Option("test", "--split", help="Query split to evaluate (train/valid/test/all)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Explicit queries file."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Explicit qrels file."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Explicit catalog file."),
    engagement: Optional[Path] = typer.Option(None, "--engagement", help="Explicit engagement file."),
    index_dir: Path = _INDEX,
    reranker: Path = _RERANKER,
    systems: str = typer.Option(",".join(EVAL_SYSTEMS), "--systems",
                                help="Comma-separated systems to evaluate (lexical, hybrid and two-stage-hybrid "
                                     "need an index with a lexical side)."),
    candidates: int = _CANDIDATES,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Write TREC run files + qrels here."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Evaluate BM25, zero-shot dense, fine-tuned dense, two-stage, lexical, hybrid and two-stage
    on hybrid (nDCG@10, MRR@10, Recall@100), overall, on vocabulary-mismatch and on brand/model
    queries, plus per-task reranker AUCs."""
    from pipeline.evaluate import evaluate as run

    report = run(data, catalog=catalog, queries=queries, qrels=qrels, engagement=engagement, split=split,
                 index_dir=index_dir, reranker=reranker, run_dir=run_dir, candidates=candidates,
                 systems=[s.strip() for s in systems.split(",") if s.strip()], progress=info)
    if json_out:
        emit_json(report)
        return
    print_evaluation(report)


def print_evaluation(report: dict[str, Any]) -> None:
    """The evaluation table (+ per-task table); shared with the demo command."""
    print_table(report["rows"], title=f"Evaluation on {report['split']} ({report['queries']} queries, "
                                      f"{report['mismatch_queries']} vocabulary-mismatch, "
                                      f"{report.get('brand_model_queries', 0)} brand-model)")
    if report.get("headroom") is not None:
        echo(f"stage-2 headroom: oracle reranking of dense's top {report['candidates']} beats dense by "
             f"{report['headroom']:+.3f} nDCG@10")
    if report.get("paired"):
        print_table(report["paired"], title="Paired bootstrap over queries: system - baseline (95% interval)")
    if report.get("tasks"):
        print_table(report["tasks"], title="Reranker per-task engagement metrics (ROC AUC)")
    if report.get("run_dir"):
        info(f"TREC run files and qrels in {report['run_dir']}")


def print_evaluations(report: dict[str, Any]) -> None:
    """A fit's or the demo's test evaluation, then the unseen split's when there is one."""
    print_evaluation(report["evaluation"])
    if report.get("evaluation_unseen"):
        print_evaluation(report["evaluation_unseen"])


@app.command("fit")
def fit(
    out: Path = typer.Option(..., "--out", help="Run directory: data/, models/, indexes/ and runs/ go here."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (catalog/engagement/queries/qrels files)."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog file (overrides the directory's)."),
    engagement: Optional[Path] = typer.Option(None, "--engagement", help="Engagement file (counts or events)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Queries file with a split column."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Relevance labels file."),
    mapping: Optional[Path] = mapping_option(),
    budget: str = typer.Option("full", "--budget", help="quick (minutes, a smoke run) | full (the demo's budget)."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed for simulation, splits and training."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip steps whose inputs and outputs are unchanged."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr for each step."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """From a labelled or logged dataset to a working search: validate, simulate engagement
    and derive splits where missing, train the retriever, index, train the reranker, evaluate
    on test, export both models. Re-runs skip the steps that are up to date."""
    from pipeline.fit import run_fit

    report = run_fit(data, out, catalog=catalog, engagement=engagement, queries=queries, qrels=qrels,
                     mapping=mapping, budget=budget, seed=seed, progress=progress, resume=resume)
    if json_out:
        emit_json(report)
        return
    print_evaluations(report)
    print_table(report["steps"], title="Steps")
    info(f"now try: pipeline search --index {report['paths']['index']} --reranker {report['paths']['reranker']} "
         f"\"{report['try']}\"")


@app.command("demo")
def demo(
    quick: bool = typer.Option(False, "--quick", help="Tiny world and short training (< 3 min)."),
    workdir: Path = typer.Option(Path("."), "--workdir", help="Where data/, models/, indexes/ and runs/ go."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr for each step."),
) -> None:
    """The whole pipeline on the built-in sample shop: generate data, train the retriever,
    build the index, train the reranker, evaluate, show example searches, score a query log."""
    from pipeline.demo import run_demo

    report = run_demo(workdir, quick=quick, progress=progress)
    if json_out:
        emit_json(report)
        return
    print_evaluations(report)
    if report.get("fusion"):
        info(f"two-stage blends the retrieval score with weight {report['fusion']['retrieval_weight']:g} "
             "(fitted on the valid split)")
    for example in report["examples"]:
        print_table(example["hits"], title=f"{example['query']!r} (vocabulary mismatch: {example['why']})",
                    columns=["rank", "product_id", "title", "relevance", "p_click", "p_add_to_cart",
                             "p_purchase", "score"])
    print_table([report["scored_log"]], title="Scored query log",
                columns=["output", "rows_in", "rows_out", "computed", "seconds", "rows_per_s"])
    print_table([{"step": k, "seconds": v} for k, v in report["timings"].items()], title="Timings")
    info(f"done in {report['seconds']:.0f} s; now try: cd {workdir} && pipeline search \"{report['try']}\"")
