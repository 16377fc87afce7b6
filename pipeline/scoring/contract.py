"""What a scoring job promises: the scored-log schema, its provenance block, and the
description of one validated job that both engines work from.

Why one module: the local and the Ray engine must write byte-for-byte the same file, so the
schema, the metadata key and the provenance fields are defined here once and both engines
build their output from :meth:`ScoringJob.schema`.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError

#: Parquet metadata key of the provenance block.
METADATA_KEY = b"shoprank"
#: Optional query-log column: that row's catalog filters, ``;``-separated (:mod:`pipeline.data.filters`).
FILTER_COLUMN = "filter"
#: Input columns a query log may carry; anything else is not read. All are text,
#: decoded as UTF-8 (or refused) before scoring reads them (:func:`decode_text_columns`).
INPUT_COLUMNS = ("query", "query_id", "product_id", FILTER_COLUMN)
TableOrBatch = TypeVar("TableOrBatch", pa.Table, pa.RecordBatch)


def output_schema(tasks: Sequence[str], metadata: Mapping[bytes, bytes] | None = None) -> pa.Schema:
    """The scored-log schema (ARCHITECTURE.md 'scored output') plus ``input_row``."""
    fields = [
        pa.field("input_row", pa.int64()), pa.field("query_id", pa.string()),
        pa.field("query", pa.string()), pa.field("rank", pa.int32()),
        pa.field("product_id", pa.string()), pa.field("retrieval_score", pa.float64()),
        *[pa.field(f"p_{t}", pa.float32()) for t in tasks],
        pa.field("score", pa.float64()),
    ]
    return pa.schema(fields, metadata=dict(metadata) if metadata else None)


def read_scored_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance block of a scored Parquet file (models, parameters, row counts)."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise DataError(f"{path}: not a shoprank scored file (no '{METADATA_KEY.decode()}' metadata)")
    return json.loads(meta[METADATA_KEY])


def decode_text_columns(batch: TableOrBatch, path: Path, first_row: int) -> TableOrBatch:
    """``batch`` with its text columns (:data:`INPUT_COLUMNS`) as valid UTF-8 strings, or a
    one-line DataError naming the column and row (1 = first record of the log).

    Why before scoring: Parquet may store text as binary (which would otherwise be searched
    as the literal ``b'sofa'``) and the JSON reader does not check UTF-8 (which would
    otherwise fail deep inside scoring, after the parts folder exists). ``first_row`` is the
    0-based log row of ``batch``'s first row.
    """
    columns = list(batch.columns)
    for i, name in enumerate(batch.schema.names):
        if name not in INPUT_COLUMNS:
            continue
        array = columns[i]
        is_binary = pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)
        if not (is_binary or pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            continue
        raw = array if is_binary else array.cast(pa.binary())
        try:
            text = raw.cast(pa.string())
            text.validate(full=True)
        except pa.ArrowInvalid:
            for offset, value in enumerate(raw.to_pylist()):
                try:
                    (value or b"").decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}: column {name!r}, row {first_row + offset + 1}: not valid UTF-8 "
                                    f"text (byte 0x{value[exc.start]:02x})") from None
            raise
        columns[i] = text
    return type(batch).from_arrays(columns, schema=pa.schema(
        [pa.field(n, c.type) for n, c in zip(batch.schema.names, columns)]))


def detect_mode(path: Path, columns: Sequence[str]) -> str:
    """``"pairs"`` when the log names products to score, ``"queries"`` when it asks for the
    top-k; a log without a ``query`` column is a one-line DataError."""
    if "query" not in columns:
        raise DataError(f"{path}: missing required column 'query' (found: {', '.join(columns) or 'none'})")
    return "pairs" if "product_id" in columns else "queries"


@dataclass(frozen=True)
class ScoringJob:
    """One validated job: what to read, what to write, and with which models and parameters.

    Built once by :func:`pipeline.scoring.job.score_logs`; the engines only execute it, so
    they cannot disagree on parameters or provenance.
    """

    input_path: Path
    output: Path
    mode: str
    tasks: tuple[str, ...]
    models: dict[str, str]
    reranked: bool
    k: int
    candidates: int
    batch_size: int
    cache_size: int
    show_progress: bool

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that decide the output rows (recorded, and checked on resume)."""
        return {"mode": self.mode, "k": self.k, "candidates": self.candidates,
                "batch_size": self.batch_size, "tasks": list(self.tasks)}

    def schema(self, rows_in: int) -> pa.Schema:
        """The output schema carrying the provenance block (models, parameters, input, rows)."""
        provenance = {"kind": "scored-log", "models": self.models, "params": self.params,
                      "input": str(self.input_path), "rows_in": rows_in,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return output_schema(self.tasks, {METADATA_KEY: json.dumps(provenance, sort_keys=True).encode()})


@dataclass
class EngineResult:
    """What an engine reports back to the job, which turns it into the user's report."""

    rows_in: int
    rows_out: int
    batches: int
    computed: int
    skipped: dict[str, int]
    first_skipped_row: dict[str, int]
    rows_scored: int
    batches_resumed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
