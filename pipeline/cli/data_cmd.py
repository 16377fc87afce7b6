"""Data commands: `sample-data`, `simulate-engagement`, `validate`.

Thin: parse options, call one library function (:func:`pipeline.world.sample.write_sample`,
:func:`pipeline.world.simulate.engagement_from_labels`, :func:`pipeline.data.validate_dataset`), print a
table or ``--json``. pandas/pyarrow are imported inside the commands (fast --help).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.cli._app import app, echo, emit_json, info, mapping_option, print_table
from pipeline.config import DEFAULT_DATA_DIR, DEFAULT_SEED, POSITIONS_FILE

_MAPPING = mapping_option()


def _stat_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"statistic": k, "value": v} for k, v in stats.items() if not isinstance(v, dict)]


@app.command("sample-data")
def sample_data(
    out: Path = typer.Option(DEFAULT_DATA_DIR, "--out", help="Output directory (replaced atomically)."),
    products: int = typer.Option(5000, "--products", min=1, help="Number of products."),
    queries: int = typer.Option(1000, "--queries", min=1, help="Number of distinct query texts."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed (same seed -> identical files)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate the built-in sample shop: catalog, queries, qrels, engagement, README."""
    from pipeline.core.errors import ShoprankError
    from pipeline.world.sample import write_sample

    info(f"generating {products} products, {queries} queries (seed {seed}) -> {out}")
    try:
        stats = write_sample(out, n_products=products, n_queries=queries, seed=seed)
    except ValueError as exc:
        raise ShoprankError(str(exc)) from None
    if json_out:
        emit_json(stats)
        return
    print_table(_stat_rows(stats), title=f"sample world in {out}")
    print_table([{"intent": k, **v} for k, v in stats["by_intent"].items()], title="vocabulary mismatch by query type")


@app.command("simulate-engagement")
def simulate_engagement(
    qrels: Path = typer.Option(..., "--qrels", help="Graded relevance labels (any supported format)."),
    catalog: Path = typer.Option(..., "--catalog", help="Catalog file."),
    out: Path = typer.Option(..., "--out", help="Engagement Parquet file to write."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed."),
    mapping: Optional[Path] = _MAPPING,
    queries: Optional[Path] = typer.Option(None, "--queries", help="Queries file giving the text of each "
                                           "query_id, for labels keyed by query_id (WANDS)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Simulate engagement logs from relevance labels with the sample world's user model."""
    from pipeline.world.simulate import engagement_from_labels

    stats = engagement_from_labels(qrels, catalog, out, seed=seed, mapping=mapping, queries=queries)
    if json_out:
        emit_json(stats)
    else:
        print_table(_stat_rows(stats), title=f"simulated engagement -> {out}")


@app.command("validate")
def validate(
    data_dir: Optional[Path] = typer.Argument(None, help="Dataset directory (catalog/engagement/queries/qrels files)."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog file (overrides the directory's)."),
    engagement: Optional[Path] = typer.Option(None, "--engagement", help="Engagement file (counts or events)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Queries file."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Relevance labels file."),
    mapping: Optional[Path] = _MAPPING,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Load and validate a dataset against the data contracts; print its statistics."""
    from pipeline.data import validate_dataset

    stats = validate_dataset(data_dir, catalog=catalog, engagement=engagement, queries=queries,
                             qrels=qrels, mapping=mapping)
    if json_out:
        emit_json(stats)
    else:
        print_table(_stat_rows(stats), title="dataset OK")


@app.command("estimate-propensity")
def estimate_propensity(
    log: Path = typer.Option(Path(DEFAULT_DATA_DIR) / POSITIONS_FILE, "--log",
                             help="Per-position impression log (query, product_id, position, impressions, clicks)."),
    max_position: int = typer.Option(20, "--max-position", min=1, help="Deepest position to estimate."),
    simulator: bool = typer.Option(False, "--against-simulator", help="Compare with the sample world's true propensities."),
    method: Optional[str] = typer.Option(None, "--method", help="conditional (per-position default) or em (joint fit)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate the examination propensity per position (position-based click model)."""
    from pipeline.world.simulate import propensity_report

    report = propensity_report(log, max_position=max_position, against_simulator=simulator, method=method)
    if json_out:
        emit_json(report)
        return
    print_table(report["positions"], title=f"examination propensity from {log} ({report['input']} input, {report['method']})")
    if "max_relative_error_1_10" in report:
        echo(f"largest relative error against the simulator, positions 1-10: {report['max_relative_error_1_10']:.3f}")
