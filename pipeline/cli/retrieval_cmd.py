"""Stage-1 commands: `pipeline train-retriever`, `pipeline build-index`, `pipeline index add|remove|info|compact`.

Thin by design: parse options, call one library function in retrieval/, print a table or
JSON. Heavy imports (torch, faiss, sentence-transformers, pandas) happen inside the command
functions so `pipeline --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.cli._app import App, app, emit_json, info, parse_fields, print_table, text_fields_option
from pipeline.config import DEFAULT_DATA_DIR, DEFAULT_INDEX_DIR, DEFAULT_RETRIEVER_DIR, DEFAULT_SEED

index_app = App(help="Update or inspect an existing index without a full rebuild.", no_args_is_help=True)
app.add_typer(index_app, name="index")


def _load_catalog(path: Path) -> Any:
    from pipeline.data import load_dataset

    return load_dataset(catalog=path).catalog


def _default_model(model: Optional[Path]) -> Optional[Path]:
    """--model, else the fine-tuned retriever if one exists at the default path, else bundled (None)."""
    if model is not None:
        return model
    return DEFAULT_RETRIEVER_DIR if (DEFAULT_RETRIEVER_DIR / "manifest.json").is_file() else None


def _show(manifest: dict[str, Any], json_out: bool, index: Path) -> None:
    if json_out:
        emit_json(manifest)
    else:
        print_table(_index_summary(manifest), title=f"index {index}")


def _index_summary(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("index_type", "factory", "dim", "count", "live", "tombstoned", "removed", "build_seconds",
            "encode_seconds", "index_bytes", "query_latency_ms", "model_name", "model_id", "catalog_fingerprint",
            "text_fields", "lexical", "hybrid_fusion")
    shown = {**manifest, "lexical": (manifest.get("lexical") or {}).get("count")}  # products, not file hashes
    return [{"field": k, "value": shown.get(k)} for k in keys if k in manifest]


@app.command("train-retriever")
def train_retriever_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (catalog/engagement/queries/qrels .parquet)."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog file (instead of --data)."),
    engagement: Optional[Path] = typer.Option(None, "--engagement", help="Engagement file (instead of --data)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Queries file with a split column."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Graded relevance labels (else derived from engagement)."),
    out: Path = typer.Option(DEFAULT_RETRIEVER_DIR, "--out", help="Output model directory."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Starting model folder (default: bundled MiniLM)."),
    epochs: int = typer.Option(2, help="Training epochs (validated after each; the best is kept)."),
    batch_size: int = typer.Option(32, help="Batch size (in-batch negatives grow with it)."),
    max_rows: int = typer.Option(1536, help="Depth-weighted training rows sampled (the CPU budget knob)."),
    learning_rate: float = typer.Option(5e-5, help="Peak learning rate."),
    hard_negatives: bool = typer.Option(True, "--hard-negatives/--no-hard-negatives", help="Mine one hard negative per pair."),
    seed: int = typer.Option(DEFAULT_SEED, help="Random seed."),
    text_fields: Optional[str] = text_fields_option("default: title,brand,category,attributes"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Fine-tune the bi-encoder on engagement; print validation per epoch (test: `pipeline evaluate`)."""
    from pipeline.core.text import parse_text_fields
    from pipeline.data import load_dataset
    from retrieval.train import train_retriever

    if data is None and catalog is None:
        data = DEFAULT_DATA_DIR
    dataset = load_dataset(data, catalog=catalog, engagement=engagement, queries=queries, qrels=qrels)
    report = train_retriever(dataset, out, base_model=base_model, epochs=epochs, batch_size=batch_size,
                             max_rows=max_rows, learning_rate=learning_rate, hard_negatives=hard_negatives,
                             seed=seed, text_fields=parse_text_fields(text_fields))
    if json_out:
        emit_json(report)
        return
    zero_shot = report["zero_shot_valid"]
    print_table([{"epoch": "zero-shot", "valid Recall@100": zero_shot["recall@100"], "valid nDCG@10": zero_shot["ndcg@10"]}]
                + [{"epoch": h["epoch"], "valid Recall@100": h["recall@100"], "valid nDCG@10": h["ndcg@10"]}
                   for h in report["valid_history"]], title="validation per epoch (best kept)")
    info(f"saved {report['out']} (model_id {report['model_id'][:12]}, {report['seconds']} s)")


@app.command("build-index")
def build_index_cmd(
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog file (default: the sample catalog)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: models/retriever if present, else bundled)."),
    index_type: str = typer.Option("flat", "--index-type", help="flat | hnsw | ivfpq (presets for a FAISS factory string)."),
    factory: Optional[str] = typer.Option(None, "--factory", help="Any FAISS index_factory string (overrides --index-type)."),
    out: Path = typer.Option(DEFAULT_INDEX_DIR, "--out", help="Output index directory."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW efSearch."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF nprobe."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    engine: str = typer.Option("local", "--engine", help="local | ray (encode on Ray actors; needs the ray extra)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (--engine ray; default: local Ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray encoding actors (default: one per CPU)."),
    backend: str = typer.Option("auto", "--backend", help="auto | onnx | torch. auto: ONNX Runtime when the model has "
                                                          "an export (`pipeline export-onnx`), else torch."),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | int8. auto: int8 on ONNX (~2.5x torch fp32, "
                                                               "same Recall@100 within 0.002), fp32 on torch."),
    text_fields: Optional[str] = text_fields_option("default: the ones the retriever was trained on"),
    lexical: bool = typer.Option(True, "--lexical/--no-lexical", help="Also build the BM25 (bm25s) index over the "
                                 "same product text, for --retrieval lexical|hybrid."),
) -> None:
    """Encode a catalog and write a FAISS index (atomically) with ids and a manifest.
    With --engine ray the encoding runs on Ray actors; the index is built on this machine."""
    from retrieval.encoders import load_encoder
    from retrieval.index import build_index, check_build_options

    if engine not in ("local", "ray") or (engine == "local" and (address is not None or workers is not None)):
        from pipeline.core.errors import ShoprankError

        raise ShoprankError("--engine must be 'local' or 'ray'; --address and --workers need --engine ray")
    params = {k: v for k, v in {"efSearch": ef_search, "nprobe": nprobe}.items() if v is not None}
    check_build_options(index_type, factory, params)
    params["text_fields"] = parse_fields(text_fields)
    params["lexical"] = lexical
    catalog = catalog or DEFAULT_DATA_DIR / "catalog.parquet"
    frame = _load_catalog(catalog)
    encoder = load_encoder(_default_model(model), backend, precision)
    info(f"encoding {len(frame)} products with {encoder.name} ({encoder.path})")
    if engine == "ray":
        from pipeline.distributed import build_index_ray

        manifest = build_index_ray(frame, encoder, out, index_type, factory=factory, address=address,
                                   workers=workers, catalog_path=catalog, **params)
    else:
        manifest = build_index(frame, encoder, out, index_type, factory=factory, catalog_path=catalog, **params)
    if json_out:
        emit_json(manifest)
    else:
        print_table(_index_summary(manifest), title=f"index {out}")


@index_app.command("add")
def index_add_cmd(
    catalog: Path = typer.Option(..., "--catalog", help="Products to add (same columns as the catalog)."),
    index: Path = typer.Option(DEFAULT_INDEX_DIR, "--index", help="Index directory."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: the one recorded in the index)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Add (or replace) products in an existing index without rebuilding it."""
    from retrieval.index import add_products

    encoder = None
    if model is not None:
        from retrieval.encoders import load_encoder

        encoder = load_encoder(model, backend="torch")
    manifest = add_products(index, _load_catalog(catalog), encoder)
    _show(manifest, json_out, index)


@index_app.command("remove")
def index_remove_cmd(
    product_ids: list[str] = typer.Argument(..., help="Product ids to remove."),
    index: Path = typer.Option(DEFAULT_INDEX_DIR, "--index", help="Index directory."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Remove products: deleted where FAISS can, else tombstoned until the next rebuild/compact."""
    from retrieval.index import remove_products

    manifest = remove_products(index, product_ids)
    _show(manifest, json_out, index)


@index_app.command("compact")
def index_compact_cmd(
    index: Path = typer.Option(DEFAULT_INDEX_DIR, "--index", help="Index directory."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Rebuild from the index's stored vectors, dropping tombstones (no re-encoding)."""
    from retrieval.index import compact_index

    manifest = compact_index(index)
    _show(manifest, json_out, index)


@index_app.command("fit-hybrid")
def index_fit_hybrid_cmd(
    data: Path = typer.Option(DEFAULT_DATA_DIR, "--data", help="Dataset directory with queries (split column) and qrels."),
    index: Path = typer.Option(DEFAULT_INDEX_DIR, "--index", help="Index directory (with a lexical side)."),
    split: str = typer.Option("valid", "--split", help="Split the fusion is chosen on."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Choose the hybrid fusion (RRF or a convex weight) by Recall@100 on the valid split and
    record it in the index manifest; prints every candidate's numbers."""
    from pipeline.data import load_dataset
    from pipeline.hybrid import fit_index_fusion

    result = fit_index_fusion(index, load_dataset(data), split=split)
    if json_out:
        emit_json(result)
        return
    print_table([{"system": name, **values} for name, values in result["valid"].items()],
                title=f"{split} ({result['queries']} queries)")
    info(f"recorded in {index}: {result['method']}" + (f" (dense weight {result['weight']:g})"
                                                         if result["method"] == "convex" else ""))


@index_app.command("info")
def index_info_cmd(
    index: Path = typer.Option(DEFAULT_INDEX_DIR, "--index", help="Index directory."),
    model: Optional[Path] = typer.Option(None, "--model", help="Also check that this query model matches the index."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Verify an index (checksum, dimension, ids, optional query model) and show its counts and build facts."""
    from retrieval.index import Retriever

    encoder = None
    if model is not None:
        from retrieval.encoders import load_encoder

        encoder = load_encoder(model, backend="torch")
    details = Retriever.load(index, encoder, load_encoder=False).info()
    if json_out:
        emit_json(details)
    else:
        print_table([{"field": k, "value": v} for k, v in details.items()], title=f"index {index}")
