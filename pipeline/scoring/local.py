"""The local engine: stream a query log through one :class:`BatchScorer`, exactly once.

How it stays correct and bounded:

* **Streaming.** The input is read in Arrow record batches (Parquet ``iter_batches``,
  CSV/JSONL streaming readers) and re-cut into fixed-size batches of ``batch_size`` rows.
  Memory holds one input batch, its output, and a bounded LRU cache of query answers,
  never the whole log, so a log larger than RAM works.
* **Parts, then an atomic commit.** Batch *i* is scored into ``part-<i>.parquet`` inside a
  hidden ``.<output>.parts/`` sibling (each part written atomically). The final file is
  assembled from the parts by a streaming Parquet writer and renamed onto ``output`` only
  when every part exists: the output path holds a complete, valid file or nothing.
* **Exactly-once resume.** Batch boundaries depend only on ``batch_size`` and row order,
  and a query's answer depends only on the query (see :mod:`pipeline.search`). After a
  crash, ``resume=True`` checks that input, parameters and model ids are unchanged
  (``state.json``), skips the batches whose part exists and scores the rest, so the result
  equals an uninterrupted run row for row and value for value.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.artifacts import atomic_parquet_writer, atomic_write_table, atomic_write_text
from pipeline.core.errors import DataError, ShoprankError
from pipeline.scoring.contract import INPUT_COLUMNS, EngineResult, ScoringJob, decode_text_columns
from pipeline.scoring.scorer import BatchScorer, Scorer

STATE_FILE = "state.json"
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")


@dataclass
class QueryLog:
    """An opened query log: its columns, row count (if cheap to know) and batch stream."""

    path: Path
    columns: list[str]
    total_rows: int | None
    batches: Iterator[pa.RecordBatch]


# ----------------------------------------------------------------------------- input
def open_input(path: Path, batch_size: int) -> QueryLog:
    """Open a query log (Parquet, CSV/TSV, JSONL) for streaming; one-line DataError if it is
    missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: query log not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(
                path, parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in INPUT_COLUMNS}),
            )
            return QueryLog(path, reader.schema.names, None, iter(reader))
        if suffix in (".jsonl", ".json", ".ndjson"):
            import pyarrow.json as pajson

            reader = pajson.open_json(path)
            return QueryLog(path, reader.schema.names, None, iter(reader))
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = [c for c in INPUT_COLUMNS if c in names]
        batches = pf.iter_batches(batch_size=batch_size, columns=wanted or None)
        return QueryLog(path, names, pf.metadata.num_rows, batches)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        kind = "Parquet" if suffix not in TEXT_SUFFIXES else suffix[1:].upper()
        raise DataError(f"{path}: not a readable {kind} file ({first})") from None


def rebatch(batches: Iterator[pa.RecordBatch], size: int, path: Path) -> Iterator[pa.Table]:
    """Re-cut a batch stream into tables of exactly ``size`` rows (the last may be shorter).

    Fixed boundaries make part *i* mean the same input rows on every run, whatever the
    reader's own batching; that is what makes resume exactly-once. Text columns are decoded
    (or refused with the row) as they arrive, before any batch is scored.
    """
    pending: list[pa.RecordBatch] = []
    count = seen = 0
    try:
        for batch in batches:
            batch = decode_text_columns(batch, path, seen)
            seen += batch.num_rows
            while batch.num_rows:
                take = min(size - count, batch.num_rows)
                pending.append(batch.slice(0, take))
                batch = batch.slice(take)
                count += take
                if count == size:
                    yield pa.Table.from_batches(pending)
                    pending, count = [], 0
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DataError(f"{path}: unreadable data part-way through ({first})") from None
    if count:
        yield pa.Table.from_batches(pending)


# ----------------------------------------------------------------------------- parts
def parts_dir(output: Path) -> Path:
    """The hidden sibling that holds an unfinished run's parts and state."""
    return output.parent / f".{output.name}.parts"


def part_path(parts: Path, index: int) -> Path:
    """Where batch ``index``'s scored rows live until the commit."""
    return parts / f"part-{index:06d}.parquet"


def _input_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _prepare_parts(parts: Path, state: dict[str, Any], resume: bool) -> set[int]:
    """Create or validate the parts directory; return the batch indices already done."""
    state_path = parts / STATE_FILE
    if parts.is_dir() and resume:
        try:
            old = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None:
            for key in ("input", "params", "models"):
                if old.get(key) != state[key]:
                    raise ShoprankError(
                        f"{parts}: cannot resume, the {key} changed since the interrupted run "
                        f"(was {old.get(key)}, now {state[key]}); rerun without --resume"
                    )
            for leftover in parts.glob(".*.tmp-*"):  # a killed run's half-written part (we hold the lock)
                leftover.unlink()
            return {int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")}
    if parts.is_dir():
        if not resume:
            sys.stderr.write(f"note: discarding the unfinished parts of an earlier run in {parts} (use --resume to continue it)\n")
        shutil.rmtree(parts)
    elif resume:
        sys.stderr.write("note: nothing to resume; scoring from the start\n")
    parts.mkdir()
    atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True))
    return set()


def _commit(parts: Path, n_batches: int, output: Path, schema: pa.Schema) -> int:
    """Stream every part into ``output`` (atomically) and drop the parts."""
    missing = [i for i in range(n_batches) if not part_path(parts, i).is_file()]
    if missing:  # pragma: no cover - only if someone deletes parts during a run
        raise ShoprankError(f"{parts}: part {missing[0]} is missing; rerun without --resume")
    rows = 0
    with atomic_parquet_writer(output, schema) as writer:
        for i in range(n_batches):
            part = pq.ParquetFile(part_path(parts, i))
            for rg in range(part.num_row_groups):
                table = part.read_row_group(rg).cast(schema)
                rows += table.num_rows
                writer.write_table(table)
    shutil.rmtree(parts, ignore_errors=True)
    return rows


def _progress(total: int | None, enabled: bool) -> Any:
    """A rich progress bar on stderr showing rows done and throughput."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} rows/s"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


# ----------------------------------------------------------------------------- run
def run_local(job: ScoringJob, source: QueryLog, searcher: Scorer, resume: bool) -> EngineResult:
    """Score ``source`` batch by batch into parts, then commit them into ``job.output``."""
    state = {"input": _input_fingerprint(job.input_path), "params": job.params, "models": job.models}
    parts = parts_dir(job.output)
    done = _prepare_parts(parts, state, resume)
    worker = BatchScorer(searcher, job.tasks, mode=job.mode, k=job.k, candidates=job.candidates,
                         cache_size=job.cache_size)
    start_time = time.perf_counter()
    n_batches = rows_in = scored_rows = 0
    with _progress(source.total_rows, job.show_progress) as bar:
        task = bar.add_task("scoring", total=source.total_rows, rate="-")
        try:
            for index, table in enumerate(rebatch(source.batches, job.batch_size, job.input_path)):
                n_batches += 1
                if index not in done:
                    atomic_write_table(worker.score(table, rows_in), part_path(parts, index))
                    scored_rows += table.num_rows
                rows_in += table.num_rows
                elapsed = max(time.perf_counter() - start_time, 1e-9)
                bar.update(task, completed=rows_in, rate=f"{scored_rows / elapsed:,.0f}")
        except DataError:
            # Unreadable input: the parts can never be resumed (fixing the file changes its
            # fingerprint, and an unchanged file fails at the same row), so none are kept.
            shutil.rmtree(parts, ignore_errors=True)
            raise
    rows_out = _commit(parts, n_batches, job.output, job.schema(rows_in))
    return EngineResult(rows_in=rows_in, rows_out=rows_out, batches=n_batches, computed=worker.computed,
                        skipped=dict(worker.skipped), first_skipped_row=worker.first_skipped,
                        rows_scored=scored_rows, batches_resumed=len(done & set(range(n_batches))))
