"""Rerank commands: `train-reranker`, `distill-reranker`, `adapt-lm`, `compare-rerankers`.

Thin: parse, call one library function (:func:`pipeline.blend.train_reranker_on_index`,
:func:`pipeline.blend.distill_reranker_on_index`,
:func:`rerank.adapt.adapt_lm`, :func:`compare_rerankers` in benchmarks/compare_rerankers.py), print a table or
``--json``. torch/transformers/pandas are imported inside the commands (fast --help).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import typer

from rerank import DEFAULT_MAX_LENGTH

from pipeline.fit import FULL
from pipeline.cli._app import app, emit_json, info, parse_fields, print_table, text_fields_option
from pipeline.config import (DEFAULT_CANDIDATES, DEFAULT_DATA_DIR, DEFAULT_DOMAIN_BERT_DIR, DEFAULT_RERANKER_DIR,
                             DEFAULT_RUNS_DIR, DEFAULT_SEED, POSITIONS_FILE)

_DATA = typer.Option(None, "--data", help="Dataset directory (catalog/engagement/queries .parquet).")
_CATALOG = typer.Option(None, "--catalog", help="Catalog file (overrides --data's).")
_ENGAGEMENT = typer.Option(None, "--engagement", help="Engagement log file (overrides --data's).")
_QUERIES = typer.Option(None, "--queries", help="Queries file with a split column (overrides --data's).")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def _load(data: Optional[Path], catalog: Optional[Path] = None, engagement: Optional[Path] = None,
          queries: Optional[Path] = None) -> Any:
    from pipeline.data import load_dataset
    from pipeline.core.errors import DataError

    if data is None and catalog is None:
        data = DEFAULT_DATA_DIR
    if data is not None and not Path(data).is_dir():
        raise DataError(f"{data}: dataset directory does not exist")
    return load_dataset(data, catalog=catalog, engagement=engagement, queries=queries)


def _bad(exc: "ValueError | str") -> None:
    from pipeline.core.errors import ShoprankError

    raise ShoprankError(str(exc).splitlines()[0]) from None


def _default_positions(data: Optional[Path]) -> Optional[Path]:
    """The sample world's per-position log next to the data, when there is one."""
    path = (data or DEFAULT_DATA_DIR) / POSITIONS_FILE
    return path if path.is_file() else None


@app.command("train-reranker")
def train_reranker_cmd(
    data: Optional[Path] = _DATA, catalog: Optional[Path] = _CATALOG, engagement: Optional[Path] = _ENGAGEMENT,
    queries: Optional[Path] = _QUERIES,
    out: Path = typer.Option(DEFAULT_RERANKER_DIR, "--out", help="Output model directory (replaced atomically)."),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="HF encoder folder (e.g. models/domain-bert); default: the index's fine-tuned retriever with --index, else the bundled MiniLM."),
    architecture: str = typer.Option("mmoe", "--architecture", help="mmoe | shared_bottom | single."),
    heads: str = typer.Option("funnel", "--heads", help="funnel | independent."),
    tasks: str = typer.Option("click,add_to_cart,purchase", "--tasks", help="Comma-separated tasks."),
    label_mode: str = typer.Option("rate", "--labels", help="rate (count/impressions, weighted) | binary (count>0)."),
    task_weights: Optional[str] = typer.Option(None, "--task-weights", help="Loss weight per task, comma-separated."),
    uncertainty: bool = typer.Option(False, "--uncertainty", help="Learned uncertainty weighting of the task losses."),
    epochs: int = typer.Option(FULL.reranker_epochs, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_length: int = typer.Option(DEFAULT_MAX_LENGTH, "--max-length", min=8, help="Max tokens per (query, product) pair."),
    negatives: int = typer.Option(FULL.reranker_negatives, "--negatives", min=0, help="Never-shown retriever candidates sampled per query as zero-engagement rows."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", min=1, help="Subsample train queries (speed)."),
    max_shown: Optional[int] = typer.Option(FULL.reranker_max_shown, "--max-shown", min=1, help="Shown rows per query (at most half engaged, the rest skipped)."),
    objective: str = typer.Option("both", "--objective", help="pointwise (funnel BCE) | listwise (ListNet per query) | both."),
    debias: str = typer.Option("none", "--debias", help="none | ipw (labels per examined impression, position bias fitted from the logs) | pal (a position tower learned in training, dropped at serving)."),
    positions: Optional[Path] = typer.Option(None, "--positions", help="Per-position impression log for --debias ipw (default: positions.parquet in --data, else the engagement's mean positions)."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index whose retriever gives candidates; also fits the first-stage blend on valid."),
    candidates: int = typer.Option(DEFAULT_CANDIDATES, "--candidates", min=1, help="Retriever candidates per query (with --index)."),
    prior_weight: float = typer.Option(0.0, "--prior-weight", min=0.0, help="Weight of the retriever-order distillation term (needs --index)."),
    similarity_skip: bool = typer.Option(True, "--similarity-skip/--no-similarity-skip", help="Add the pair's own query-product similarity to every task logit (docs/rerank.md)."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed"),
    text_fields: Optional[str] = text_fields_option("default: the index's with --index, else title,brand,category,attributes"),
    json_out: bool = _JSON,
) -> None:
    """Train the multi-task cross-encoder (click / add-to-cart / purchase) on engagement logs."""
    from pipeline.blend import train_reranker_on_index

    dataset = _load(data, catalog, engagement, queries)
    try:
        weights = [float(w) for w in task_weights.split(",")] if task_weights else None
        report = train_reranker_on_index(
            dataset, out, index_dir=index, candidates=candidates, objective=objective, encoder=encoder,
            architecture=architecture, heads=heads, tasks=[t.strip() for t in tasks.split(",") if t.strip()],
            label_mode=label_mode, task_weights=weights, uncertainty=uncertainty, epochs=epochs,
            batch_size=batch_size, max_length=max_length, negatives=negatives, max_queries=max_queries,
            max_shown_per_query=max_shown, seed=seed, debias=debias,
            positions=positions or _default_positions(data), prior_weight=prior_weight, similarity_skip=similarity_skip,
            text_fields=parse_fields(text_fields))
    except ValueError as exc:
        _bad(exc)
    report = _show_trained(report, f"saved reranker to {out}", json_out, title="validation")
    if not json_out and "fusion" in report:
        info(f"first-stage blend: retrieval weight {report['fusion']['retrieval_weight']:g} (fitted on valid)")


@app.command("distill-reranker")
def distill_reranker_cmd(
    teacher: Path = typer.Option(DEFAULT_RERANKER_DIR, "--teacher", help="Trained reranker to imitate."),
    layers: int = typer.Option(2, "--layers", help="Student encoder layers (1 .. the teacher's layers - 1)."),
    out: Path = typer.Option(Path("models/reranker-small"), "--out", help="Student model directory (replaced atomically)."),
    data: Optional[Path] = _DATA, catalog: Optional[Path] = _CATALOG, engagement: Optional[Path] = _ENGAGEMENT,
    queries: Optional[Path] = _QUERIES,
    index: Optional[Path] = typer.Option(None, "--index", help="Index whose retriever gives the candidate lists; also fits the student's first-stage blend on valid."),
    candidates: int = typer.Option(DEFAULT_CANDIDATES, "--candidates", min=1, help="Retriever candidates per query (with --index)."),
    layer_choice: str = typer.Option("spread", "--layer-choice", help="spread (evenly spaced, first and last kept) | first (the bottom layers)."),
    epochs: int = typer.Option(2, "--epochs", min=1),
    negatives: Optional[int] = typer.Option(None, "--negatives", min=0, help="Sampled candidates per query (default: the teacher's)."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", min=1, help="Train queries (default: as many as the teacher used)."),
    engagement_weight: float = typer.Option(0.5, "--engagement-weight", min=0.0, help="Weight of the engagement loss next to the teacher's."),
    export: bool = typer.Option(True, "--export/--no-export", help="Export the student to ONNX (fp32 + int8)."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed"),
    json_out: bool = _JSON,
) -> None:
    """Distil a trained reranker into a shallower student (same heads, same artefact format)
    for the first pass of a `--rerank-cascade`."""
    from pipeline.blend import distill_reranker_on_index

    dataset = _load(data, catalog, engagement, queries)
    try:
        report = distill_reranker_on_index(
            dataset, teacher, out, index_dir=index, candidates=candidates, export=export, layers=layers,
            layer_choice=layer_choice, epochs=epochs, negatives=negatives, max_queries=max_queries,
            engagement_weight=engagement_weight, seed=seed)
    except ValueError as exc:
        _bad(exc)
    _show_trained(report, f"saved {layers}-layer student of {teacher} to {out}", json_out,
                  title="student validation", first={"agreement_with_teacher": report["agreement"]})


@app.command("adapt-lm")
def adapt_lm_cmd(
    catalog: Optional[Path] = _CATALOG, data: Optional[Path] = _DATA,
    out: Path = typer.Option(DEFAULT_DOMAIN_BERT_DIR, "--out", help="Output encoder folder (replaced atomically)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Encoder to start from; default bundled MiniLM."),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many steps (-1: full epochs)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_length: int = typer.Option(64, "--max-length", min=8),
    seed: int = typer.Option(DEFAULT_SEED, "--seed"),
    json_out: bool = _JSON,
) -> None:
    """Continue masked-LM pre-training of the encoder on catalog text (use it via --encoder)."""
    from rerank.adapt import adapt_lm

    dataset = _load(data, catalog)
    report = adapt_lm(dataset.catalog, out, base=base, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, max_length=max_length, seed=seed)
    info(f"saved domain-adapted encoder to {out}")
    if json_out:
        emit_json(report)
        return
    print_table([{"statistic": k, "value": v} for k, v in report.items()], title="adapt-lm")


@app.command("compare-rerankers")
def compare_rerankers_cmd(
    data: Path = typer.Option(DEFAULT_DATA_DIR, "--data", help="Sample world directory (with qrels)."),
    out: Path = typer.Option(DEFAULT_RUNS_DIR / "compare-rerankers", "--out", help="Work directory; results.json lands here."),
    index: Optional[Path] = typer.Option(None, "--index", help="Use this index instead of building one."),
    retriever: Optional[Path] = typer.Option(None, "--retriever", help="Fine-tuned retriever folder (else one is trained)."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated subset of variants."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per variant (mean and 95% interval over them)."),
    candidates: int = typer.Option(DEFAULT_CANDIDATES, "--candidates", min=1, help="Retriever candidates reranked per query."),
    epochs: int = typer.Option(FULL.reranker_epochs, "--epochs", min=1),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=8, help="Pair tokens (default: train-reranker's)."),
    learning_rate: float = typer.Option(1e-4, "--lr", help="Encoder learning rate (heads use 1e-3)."),
    train_queries: Optional[int] = typer.Option(None, "--train-queries", min=1, help="Train queries used (default all)."),
    valid_queries: Optional[int] = typer.Option(None, "--valid-queries", min=1),
    test_queries: Optional[int] = typer.Option(None, "--test-queries", min=1, help="Test and unseen queries each."),
    max_shown: int = typer.Option(FULL.reranker_max_shown, "--max-shown", min=1, help="Shown rows per train query (skipped-row floor)."),
    retriever_steps: int = typer.Option(200, "--retriever-steps", min=1),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fusion weights, e.g. click=0.1,add_to_cart=0.3,purchase=1."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="First seed; seeds run seed, seed+1, ..."),
    json_out: bool = _JSON,
) -> None:
    """Train every reranker variant over several seeds; nDCG@10 vs retrieval alone with intervals."""
    from pipeline.cli.experiments import load_experiment
    from rerank.fusion import parse_weights

    experiment = load_experiment("compare_rerankers")

    try:
        fusion = parse_weights(weights)
    except ValueError as exc:
        _bad(exc)
    if not data.is_dir():
        _bad(f"{data}: dataset directory does not exist (run `pipeline sample-data`)")
    results = experiment.compare_rerankers(
        data, out, index_dir=index, retriever_dir=retriever, retriever_steps=retriever_steps,
        variants=[v.strip() for v in variants.split(",")] if variants else None, seeds=seeds,
        candidates=candidates, epochs=epochs, max_length=max_length, learning_rate=learning_rate,
        train_queries=train_queries, valid_queries=valid_queries, test_queries=test_queries,
        max_shown_per_query=max_shown, weights=fusion, seed=seed)
    if json_out:
        emit_json({k: v for k, v in results.items() if k != "runs"})
        return
    print_table(results["rows"], title=f"rerankers, {results['config']['queries']['test']} test queries", columns=experiment.COLUMNS)
    print_table([{"check": k, "value": v} for k, v in results["checks"].items()], title="acceptance")
    info(f"results: {results['results_file']}")


def _show_trained(raw: Mapping[str, Any], saved: str, json_out: bool, *, title: str,
                  first: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Report a trained model the one way both trainers do: the JSON-safe report on stdout
    with --json, else the validation metrics of the kept epoch as a table."""
    from rerank.train import public_report

    report = public_report(raw)
    info(saved)
    if json_out:
        emit_json(report)
    else:
        print_table([{"metric": k, "value": v} for k, v in {**(first or {}), **report["validation"]}.items()],
                    title=f"{title} (best epoch {report['best_epoch']})")
    return report
