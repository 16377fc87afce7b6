"""Offline scoring of query logs into Parquet: streaming, resumable, exactly-once.

How it stays correct and bounded:

* **Streaming.** The input is read in Arrow record batches (Parquet ``iter_batches``,
  CSV/JSONL streaming readers) and re-cut into fixed-size batches of ``batch_size`` rows.
  Memory holds one input batch, its output, and a bounded LRU cache of query answers,
  never the whole log, so a log larger than RAM works.
* **Parts, then an atomic commit.** Batch *i* is scored into ``part-<i>.parquet`` inside a
  hidden ``.<output>.parts/`` sibling (each part written to a temp name and renamed). The
  final file is assembled from the parts by a streaming ``ParquetWriter`` into a temp
  sibling and renamed onto ``output`` only when every part exists: the output path holds a
  complete, valid file or nothing.
* **Exactly-once resume.** Batch boundaries depend only on ``batch_size`` and row order,
  and a query's answer depends only on the query (see :mod:`pipeline.search`). After a
  crash, ``resume=True`` checks that input, parameters and model ids are unchanged
  (``state.json``), skips the batches whose part exists and scores the rest, so the result
  equals an uninterrupted run row for row and value for value.
* **Dedup.** Repeated queries are answered once (LRU cache across batches, keyed by the
  cleaned query); repeated (query, product_id) pairs within a batch are scored once.
  Every input row still gets its own output rows, tagged with ``input_row``.
* **Provenance.** The final file's Parquet metadata (key ``shoprank``) carries the manifest
  ids of the index and models that produced it.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.artifacts import claim_output, temp_sibling
from pipeline.core.errors import DataError, ShoprankError
from pipeline.core.cache import LRUCache

METADATA_KEY = b"shoprank"
DEFAULT_TASKS = ("click", "add_to_cart", "purchase")
STATE_FILE = "state.json"


class Scorer(Protocol):
    """What the batch scorer needs from a searcher (TwoStageSearcher satisfies it)."""

    tasks: tuple[str, ...]

    def manifest_ids(self) -> dict[str, str]: ...
    def search_many(self, queries: Sequence[str], k: int = 10, candidates: int = 100) -> list[list[Any]]: ...
    def score_pairs(self, query: str, product_ids: Sequence[str]) -> list[Any]: ...
    def has_product(self, product_id: str) -> bool: ...


@dataclass
class _Input:
    """An opened query log: its columns, row count (if cheap to know) and batch stream."""

    path: Path
    columns: list[str]
    total_rows: int | None
    batches: Iterator[pa.RecordBatch]


# ----------------------------------------------------------------------------- input
def _open_input(path: Path, batch_size: int) -> _Input:
    """Open a query log for streaming; one-line DataError if it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: query log not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(
                path, parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                convert_options=pacsv.ConvertOptions(
                    column_types={"query": pa.string(), "query_id": pa.string(), "product_id": pa.string()}),
            )
            return _Input(path, reader.schema.names, None, iter(reader))
        if suffix in (".jsonl", ".json", ".ndjson"):
            import pyarrow.json as pajson

            reader = pajson.open_json(path)
            return _Input(path, reader.schema.names, None, iter(reader))
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = [c for c in ("query", "query_id", "product_id") if c in names]
        batches = pf.iter_batches(batch_size=batch_size, columns=wanted or None)
        return _Input(path, names, pf.metadata.num_rows, batches)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        kind = "Parquet" if suffix not in (".csv", ".tsv", ".jsonl", ".json", ".ndjson") else suffix[1:].upper()
        raise DataError(f"{path}: not a readable {kind} file ({first})") from None


#: The query log's text columns: decoded as UTF-8 (or refused) before anything reads them.
TEXT_COLUMNS = ("query", "query_id", "product_id")


def _as_text(batch: pa.RecordBatch, path: Path, first_row: int) -> pa.RecordBatch:
    """The batch with its text columns as valid UTF-8 strings, or a one-line DataError naming
    the column and row (1 = first record).

    Why here: Parquet may store text as binary (which would otherwise be searched as the
    literal ``b'sofa'``) and the JSON reader does not check UTF-8 (which would otherwise
    fail deep inside scoring, after the parts folder exists).
    """
    columns = list(batch.columns)
    for i, name in enumerate(batch.schema.names):
        if name not in TEXT_COLUMNS:
            continue
        array = columns[i]
        is_binary = pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)
        if not (is_binary or pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            continue
        raw = array.cast(pa.binary()) if not is_binary else array
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
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(
        [pa.field(n, c.type) for n, c in zip(batch.schema.names, columns)]))


def _rebatch(batches: Iterator[pa.RecordBatch], size: int, path: Path) -> Iterator[pa.Table]:
    """Re-cut a batch stream into tables of exactly ``size`` rows (the last may be shorter).

    Fixed boundaries make part *i* mean the same input rows on every run, whatever the
    reader's own batching; that is what makes resume exactly-once.
    """
    pending: list[pa.RecordBatch] = []
    count = seen = 0
    try:
        for batch in batches:
            batch = _as_text(batch, path, seen)
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


def _column(table: pa.Table, name: str) -> list[Any]:
    """A column as python values (strings kept as-is, numbers stringified for ids)."""
    if name not in table.column_names:
        return [None] * table.num_rows
    values = table.column(name).to_pylist()
    return [None if v is None else str(v) for v in values]


# ----------------------------------------------------------------------------- output
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


def check_output(output: Path, input_path: Path | None = None) -> None:
    """Fail before any work if the output cannot be written (one line, names the directory),
    or if it is the input log itself (by any path or hard link), which would be overwritten."""
    if input_path is not None and input_path.exists() and (
            output.resolve() == input_path.resolve() or (output.exists() and os.path.samefile(input_path, output))):
        raise ShoprankError(f"{output}: the output is the input log itself; write the scores to another file")
    parent = output.parent
    if output.is_dir():
        raise ShoprankError(f"{output}: output path is a directory; give a file name like scored.parquet")
    if not parent.is_dir():
        raise ShoprankError(f"{parent}: output directory does not exist")
    # A real probe, not os.access: root passes permission checks on a read-only mount.
    probe = temp_sibling(output, "probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ShoprankError(f"{parent}: output directory is not writable ({exc.strerror})") from None


def _parts_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.parts"


def _part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.parquet"


def _write_atomic_table(table: pa.Table, path: Path) -> None:
    """Write one Parquet file via temp name + rename, so a part is either whole or absent."""
    tmp = temp_sibling(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_scored_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance block of a scored Parquet file (models, parameters, row counts)."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise DataError(f"{path}: not a shoprank scored file (no '{METADATA_KEY.decode()}' metadata)")
    return json.loads(meta[METADATA_KEY])


# ----------------------------------------------------------------------------- scoring
def _clean(query: str | None) -> str | None:
    """Cleaned query text, or None for a missing / blank query (skipped, counted)."""
    from pipeline.search import MAX_QUERY_CHARS

    if query is None:
        return None
    text = " ".join(query.split())
    return text[:MAX_QUERY_CHARS] if text else None


class BatchScorer:
    """Turns one input table into one output table (queries mode or pairs mode)."""

    def __init__(self, scorer: Scorer, tasks: Sequence[str], *, mode: str, k: int,
                 candidates: int, cache_size: int) -> None:
        self.scorer, self.tasks, self.mode = scorer, tuple(tasks), mode
        self.k, self.candidates = k, candidates
        self.cache: LRUCache[list[Any]] = LRUCache(cache_size)  # query -> hits: an answer depends only on its query
        self.computed = 0  # unique queries / pairs actually sent to the models
        self.skipped: collections.Counter[str] = collections.Counter()
        self.first_skipped: dict[str, int] = {}

    def _skip(self, reason: str, row: int) -> None:
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, row)

    def score(self, table: pa.Table, start_row: int) -> pa.Table:
        queries = _column(table, "query")
        qids = _column(table, "query_id")
        cols: dict[str, list[Any]] = collections.defaultdict(list)
        if self.mode == "queries":
            self._score_queries(queries, qids, start_row, cols)
        else:
            self._score_pairs(queries, qids, _column(table, "product_id"), start_row, cols)
        schema = output_schema(self.tasks)
        return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)

    def _emit(self, cols: dict[str, list[Any]], row: int, qid: str | None, query: str, hit: Any) -> None:
        cols["input_row"].append(row)
        cols["query_id"].append(qid if qid is not None else str(row))
        cols["query"].append(query)
        cols["rank"].append(hit.rank)
        cols["product_id"].append(hit.product_id)
        cols["retrieval_score"].append(None if hit.retrieval_score != hit.retrieval_score else hit.retrieval_score)
        for task in self.tasks:
            cols[f"p_{task}"].append(hit.probs.get(task))
        cols["score"].append(hit.score)

    def _score_queries(self, queries: list[str | None], qids: list[str | None], start: int,
                       cols: dict[str, list[Any]]) -> None:
        cleaned = [_clean(q) for q in queries]
        todo = list(dict.fromkeys(q for q in cleaned if q is not None and self.cache.get(q) is None))
        if todo:
            for q, hits in zip(todo, self.scorer.search_many(todo, k=self.k, candidates=self.candidates)):
                self.cache.put(q, hits)
            self.computed += len(todo)
        fresh = {q: self.cache.get(q) for q in todo}
        for offset, (raw, clean, qid) in enumerate(zip(queries, cleaned, qids)):
            row = start + offset
            if clean is None:
                self._skip("empty query", row)
                continue
            hits = fresh.get(clean) or self.cache.get(clean)
            if hits is None:  # evicted within this batch (cache smaller than the batch)
                hits = self.scorer.search_many([clean], k=self.k, candidates=self.candidates)[0]
            for hit in hits:
                self._emit(cols, row, qid, raw, hit)

    def _score_pairs(self, queries: list[str | None], qids: list[str | None], pids: list[str | None],
                     start: int, cols: dict[str, list[Any]]) -> None:
        cleaned = [_clean(q) for q in queries]
        per_query: dict[str, list[str]] = {}
        for clean, pid in zip(cleaned, pids):
            if clean is not None and pid is not None:
                per_query.setdefault(clean, [])
                if pid not in per_query[clean]:
                    per_query[clean].append(pid)
        scored: dict[tuple[str, str], Any] = {}
        for clean, products in per_query.items():
            products = [p for p in products if self.scorer.has_product(p)]
            if products:
                for hit in self.scorer.score_pairs(clean, products):
                    scored[(clean, hit.product_id)] = hit
                self.computed += len(products)
        for offset, (raw, clean, qid, pid) in enumerate(zip(queries, cleaned, qids, pids)):
            row = start + offset
            if clean is None:
                self._skip("empty query", row)
            elif pid is None:
                self._skip("missing product_id", row)
            elif (clean, pid) not in scored:
                self._skip("product_id not in catalog", row)
            else:
                self._emit(cols, row, qid, raw, scored[(clean, pid)])


# ----------------------------------------------------------------------------- driver
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
    tmp = state_path.with_name(f".{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, state_path)
    return set()


def _commit(parts: Path, n_batches: int, output: Path, schema: pa.Schema) -> int:
    """Stream every part into a temp sibling of ``output`` and rename it into place."""
    missing = [i for i in range(n_batches) if not _part_path(parts, i).is_file()]
    if missing:  # pragma: no cover - only if someone deletes parts during a run
        raise ShoprankError(f"{parts}: part {missing[0]} is missing; rerun without --resume")
    tmp = temp_sibling(output)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for i in range(n_batches):
                part = pq.ParquetFile(_part_path(parts, i))
                for rg in range(part.num_row_groups):
                    table = part.read_row_group(rg).cast(schema)
                    rows += table.num_rows
                    writer.write_table(table)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    shutil.rmtree(parts, ignore_errors=True)
    return rows


def _progress(total: int | None, enabled: bool):
    """A rich progress bar on stderr showing rows done and throughput."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} rows/s"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def score_logs(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
               searcher: Scorer | None = None, index_dir: str | os.PathLike[str] | None = None,
               reranker: str | os.PathLike[str] | None = None, catalog: str | os.PathLike[str] | None = None,
               k: int = 10, candidates: int = 100, batch_size: int = 1024, resume: bool = False,
               cache_size: int = 50_000, show_progress: bool = True, backend: str = "auto",
               precision: str | None = None, reranker_required: bool | None = None) -> dict[str, Any]:
    """Score a query log into a Parquet file; returns a report (rows, time, throughput, models).

    Mode is chosen by the input's columns: with ``product_id`` each (query, product) pair
    gets rerank scores ("pairs"); without it each query gets its top-``k`` products
    ("queries"). Rows with an empty query (or, in pairs mode, an unknown product) produce
    no output and are counted in ``report["skipped"]``. ``backend``/``precision`` choose the
    inference path as in :meth:`pipeline.search.TwoStageSearcher.load`.

    The output is claimed for the whole run (:func:`pipeline.core.artifacts.claim_output`):
    a second job writing the same file is refused before it touches the first one's parts.
    """
    input_path, output = Path(input_path), Path(output_path)
    if k < 1 or candidates < 1 or batch_size < 1:
        raise ShoprankError(f"k, candidates and batch size must be >= 1 (got {k}, {candidates}, {batch_size})")
    check_output(output, input_path)
    with claim_output(output, f"output {output}"):
        return _score_logs(input_path, output, searcher=searcher, index_dir=index_dir, reranker=reranker,
                           catalog=catalog, k=k, candidates=candidates, batch_size=batch_size, resume=resume,
                           cache_size=cache_size, show_progress=show_progress, backend=backend,
                           precision=precision, reranker_required=reranker_required)


def _score_logs(input_path: Path, output: Path, *, searcher: Scorer | None, index_dir: Any, reranker: Any,
                catalog: Any, k: int, candidates: int, batch_size: int, resume: bool, cache_size: int,
                show_progress: bool, backend: str, precision: str | None,
                reranker_required: bool | None) -> dict[str, Any]:
    """:func:`score_logs` once the output is claimed."""
    from pipeline import config

    source = _open_input(input_path, batch_size)
    if "query" not in source.columns:
        raise DataError(f"{input_path}: missing required column 'query' (found: {', '.join(source.columns) or 'none'})")
    mode = "pairs" if "product_id" in source.columns else "queries"

    if searcher is None:
        from pipeline.search import TwoStageSearcher

        searcher = TwoStageSearcher.load(index_dir or config.DEFAULT_INDEX_DIR,
                                         config.DEFAULT_RERANKER_DIR if reranker is None else reranker,
                                         catalog=catalog, backend=backend,
                                         precision=precision or config.DEFAULT_PRECISION,
                                         reranker_required=reranker_required)
    tasks = tuple(searcher.tasks) or DEFAULT_TASKS
    models = searcher.manifest_ids()
    params = {"mode": mode, "k": k, "candidates": candidates, "batch_size": batch_size, "tasks": list(tasks)}
    state = {"input": _input_fingerprint(input_path), "params": params, "models": models}
    parts = _parts_dir(output)
    done = _prepare_parts(parts, state, resume)

    worker = BatchScorer(searcher, tasks, mode=mode, k=k, candidates=candidates, cache_size=cache_size)
    start_time = time.perf_counter()
    n_batches = rows_in = scored_rows = 0
    with _progress(source.total_rows, show_progress) as bar:
        task = bar.add_task("scoring", total=source.total_rows, rate="-")
        try:
            for index, table in enumerate(_rebatch(source.batches, batch_size, input_path)):
                n_batches += 1
                if index not in done:
                    _write_atomic_table(worker.score(table, rows_in), _part_path(parts, index))
                    scored_rows += table.num_rows
                rows_in += table.num_rows
                elapsed = max(time.perf_counter() - start_time, 1e-9)
                bar.update(task, completed=rows_in, rate=f"{scored_rows / elapsed:,.0f}")
        except DataError:
            # Unreadable input: the parts can never be resumed (fixing the file changes its
            # fingerprint, and an unchanged file fails at the same row), so none are kept.
            shutil.rmtree(parts, ignore_errors=True)
            raise

    provenance = {"kind": "scored-log", "models": models, "params": params,
                  "input": str(input_path), "rows_in": rows_in,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    schema = output_schema(tasks, {METADATA_KEY: json.dumps(provenance, sort_keys=True).encode()})
    rows_out = _commit(parts, n_batches, output, schema)
    seconds = time.perf_counter() - start_time
    return {
        "output": str(output), "mode": mode, "rows_in": rows_in, "rows_out": rows_out,
        "batches": n_batches, "batches_resumed": len(done & set(range(n_batches))),
        "computed": worker.computed, "skipped": dict(worker.skipped),
        "first_skipped_row": worker.first_skipped, "seconds": round(seconds, 3),
        "rows_per_s": round(scored_rows / seconds, 1) if seconds > 0 else None,
        "models": models, "reranked": bool(searcher.tasks),
    }
