"""The Ray engine: the local engine's batches scored by Ray Data actors (``--engine ray``).

    plan of row ranges --map_batches(_ScoreActor x workers)--> ordered scored tables --> one Parquet file

Why it is built this way:

* **Same batches, same code.** The plan cuts the input into exactly the local engine's
  batches (``batch_size`` rows, fixed boundaries) and every actor turns one batch into
  output rows with the shared :class:`pipeline.scoring.scorer.BatchScorer`. So both
  engines share dedup, skip rules and row layout, and give the same rows with the same
  scores (the searcher answers each query on its own, whatever worker runs it).
* **Row index from the plan, not from the reader.** ``ray.data.read_parquet`` has no
  global row index (``input_row`` is part of the output contract) and ``zip`` with a
  range forces a repartition. Instead each plan item is a row range ``[start, stop)``;
  the actor reads just the row groups that overlap it (columns projected), so reading is
  distributed too and a batch means the same rows on every attempt.
* **Models once per actor.** :class:`_ScoreActor` loads :class:`pipeline.search.TwoStageSearcher`
  in its constructor; Ray Data's actor pool (``concurrency=workers``) then streams batches
  through it. Each actor keeps its own LRU of query answers, so only repeats *within* an
  actor are free.
* **Failures are Ray's job.** A batch whose actor task raises is retried and a dead actor
  is restarted, both bounded by ``retries`` (see :mod:`pipeline.distributed`) so a
  deterministic bug fails the job instead of looping. A retried batch replaces its failed
  attempt; nothing is appended twice because outputs are collected per batch in plan
  order (``preserve_order``) and the driver checks that every batch arrived once.
* **One output file, same schema and metadata.** The driver streams the ordered tables
  into ``output`` through the atomic Parquet writer with the job's schema and provenance:
  the file is byte-for-byte the local engine's format.
"""
from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.artifacts import atomic_parquet_writer
from pipeline.core.cache import LRUCache
from pipeline.core.errors import ArtifactError, DataError, ShoprankError
from pipeline.core.tasks import TASKS
from pipeline.distributed import (actor_pool, actor_remote_args, data_context, default_workers,
                                  maybe_inject_failure, ray_session)
from pipeline.scoring.contract import INPUT_COLUMNS, EngineResult, ScoringJob, decode_text_columns, output_schema
from pipeline.scoring.scorer import BatchScorer

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


# ----------------------------------------------------------------------------- input plan
def open_parquet_log(path: Path) -> tuple[list[str], int]:
    """Columns and row count of a Parquet query log (from the footer, no data read)."""
    if not path.is_file():
        raise DataError(f"{path}: query log not found")
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        raise DataError(f"{path}: the Ray engine reads Parquet query logs; convert this file to Parquet "
                        "or use --engine local")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DataError(f"{path}: not a readable Parquet file ({first})") from None
    return pf.schema_arrow.names, pf.metadata.num_rows


def plan_batches(num_rows: int, batch_size: int) -> list[dict[str, int]]:
    """Row ranges of the local engine's batches: batch i is rows [i*size, (i+1)*size)."""
    return [{"batch": i, "start": start, "stop": min(start + batch_size, num_rows)}
            for i, start in enumerate(range(0, num_rows, batch_size))]


def read_rows(path: str | os.PathLike[str], start: int, stop: int, columns: Sequence[str]) -> pa.Table:
    """Rows ``[start, stop)`` of a Parquet file, reading only the row groups that overlap.

    Parquet's unit of random access is the row group, so a batch smaller than a row group
    decodes the whole group and slices it (cheap next to scoring).
    """
    pf = pq.ParquetFile(path)
    groups, first_row, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first_row = offset if first_row is None else first_row
        offset += n
    if not groups:
        return pf.schema_arrow.empty_table().select(list(columns))
    table = pf.read_row_groups(groups, columns=list(columns))
    return table.slice(start - first_row, stop - start)


def resolve_models(index_dir: str | os.PathLike[str], reranker: str | os.PathLike[str] | None,
                   default_reranker: Path, reranker_required: bool | None = None) -> tuple[Path, Path | None]:
    """Absolute model paths for the actors (every node opens them by path).

    Same rule as :meth:`TwoStageSearcher.load`: a reranker the user named
    (``reranker_required``; None = any path but the default) must exist, only the default
    may be absent; resolved, it would no longer look like the default, so absence becomes
    None here.
    """
    reranker_path = Path(default_reranker if reranker is None else reranker).resolve()
    if reranker_required is None:
        reranker_required = reranker is not None and Path(reranker) != Path(default_reranker)
    if not (reranker_path / "manifest.json").is_file():
        if reranker_required:
            raise ArtifactError(f"{reranker_path}: no trained reranker here (no manifest.json)")
        return Path(index_dir).resolve(), None
    return Path(index_dir).resolve(), reranker_path


# ----------------------------------------------------------------------------- actors
class _Collector:
    """Per-batch bookkeeping from the actors (skips, work done, timing), keyed by batch so a
    retried batch overwrites its failed attempt instead of counting twice."""

    def __init__(self) -> None:
        self.batches: dict[int, dict[str, Any]] = {}

    def add(self, batch: int, stats: dict[str, Any]) -> None:
        self.batches[batch] = stats

    def get(self) -> dict[int, dict[str, Any]]:
        return self.batches


class _ScoreActor:
    """One Ray actor: loads the two-stage searcher once, then scores batches of the plan."""

    def __init__(self, *, input_path: str, columns: list[str], index_dir: str, reranker: str | None,
                 catalog: str | None, retrieval: str, allow_catalog_change: bool, mode: str, k: int,
                 candidates: int, cache_size: int, collector: Any) -> None:
        from pipeline.search import TwoStageSearcher

        self.searcher = TwoStageSearcher.load(index_dir, reranker, catalog=catalog, warn=False, retrieval=retrieval,
                                              allow_catalog_change=allow_catalog_change)
        self.tasks = tuple(self.searcher.tasks) or TASKS
        self.input_path, self.columns, self.mode = input_path, columns, mode
        self.k, self.candidates, self.cache_size = k, candidates, cache_size
        self.cache: LRUCache[list[Any]] = LRUCache(cache_size)
        self.collector = collector
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, plan: pa.Table) -> pa.Table:
        out = [self._score(int(b), int(s), int(e)) for b, s, e in
               zip(plan["batch"].to_pylist(), plan["start"].to_pylist(), plan["stop"].to_pylist())]
        return pa.concat_tables(out) if out else output_schema(self.tasks).empty_table()

    def _score(self, batch: int, start: int, stop: int) -> pa.Table:
        import ray

        started = time.perf_counter()
        maybe_inject_failure(start, stop)
        table = read_rows(self.input_path, start, stop, self.columns)
        if table.num_rows != stop - start:
            raise DataError(f"{self.input_path}: expected rows {start}-{stop}, read {table.num_rows}")
        table = decode_text_columns(table, Path(self.input_path), start)
        scorer = BatchScorer(self.searcher, self.tasks, mode=self.mode, k=self.k,
                             candidates=self.candidates, cache_size=self.cache_size, cache=self.cache)
        result = scorer.score(table, start)
        ray.get(self.collector.add.remote(batch, {
            "rows": table.num_rows, "rows_out": result.num_rows, "computed": scorer.computed,
            "skipped": dict(scorer.skipped), "first_skipped": scorer.first_skipped,
            "worker": self.worker, "seconds": time.perf_counter() - started,
        }))
        return result


# ----------------------------------------------------------------------------- driver
def _write_ordered(blocks: Iterator[pa.Table], output: Path, schema: pa.Schema, plan: list[dict[str, int]]) -> int:
    """Stream ordered result tables into ``output`` (atomically), checking the row order:
    every output row's input_row non-decreasing, none beyond the plan."""
    rows, last = 0, -1
    limit = plan[-1]["stop"] if plan else 0
    with atomic_parquet_writer(output, schema) as writer:
        for table in blocks:
            if table.num_rows == 0:
                continue
            input_rows = table.column("input_row").to_numpy()
            if input_rows[0] < last or (np.diff(input_rows) < 0).any() or input_rows[-1] >= limit:
                raise ShoprankError("Ray returned batches out of order; output discarded (preserve_order is off?)")
            last = int(input_rows[-1])
            writer.write_table(table.select(schema.names).cast(schema))
            rows += table.num_rows
    return rows


def _per_worker(stats: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput per actor: rows it scored / seconds it spent scoring (model load excluded)."""
    acc: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"batches": 0, "rows": 0, "seconds": 0.0})
    for s in stats.values():
        a = acc[s["worker"]]
        a["batches"] += 1
        a["rows"] += s["rows"]
        a["seconds"] += s["seconds"]
    return [{"worker": w, "batches": int(a["batches"]), "rows": int(a["rows"]), "seconds": round(a["seconds"], 3),
             "rows_per_s": round(a["rows"] / a["seconds"], 1) if a["seconds"] > 0 else None}
            for w, a in sorted(acc.items())]


def _merge(stats: dict[int, dict[str, Any]], plan: list[dict[str, int]], num_rows: int, rows_out: int) -> EngineResult:
    """One result from the per-batch stats, after checking that every batch arrived once."""
    missing = [b["batch"] for b in plan if b["batch"] not in stats]
    if missing or sum(s["rows"] for s in stats.values()) != num_rows:
        raise ShoprankError(f"Ray returned {len(stats)} of {len(plan)} batches (first missing: "
                            f"{missing[0] if missing else '?'}); output discarded")
    skipped: collections.Counter[str] = collections.Counter()
    first_skipped: dict[str, int] = {}
    for batch in sorted(stats):
        skipped.update(stats[batch]["skipped"])
        for reason, row in stats[batch]["first_skipped"].items():
            first_skipped.setdefault(reason, row)
    return EngineResult(rows_in=num_rows, rows_out=rows_out, batches=len(plan),
                        computed=sum(s["computed"] for s in stats.values()), skipped=dict(skipped),
                        first_skipped_row=first_skipped, rows_scored=num_rows)


def run_ray(job: ScoringJob, num_rows: int, columns: list[str], *, index_dir: Path, reranker: Path | None,
            catalog: str | os.PathLike[str] | None, retrieval: str, allow_catalog_change: bool,
            address: str | None, workers: int | None, cpus_per_worker: float, retries: int) -> EngineResult:
    """Score the job's Parquet log on Ray actors into ``job.output``; every actor loads the
    searcher as the driver did (``retrieval``, ``allow_catalog_change``), so all answer alike."""
    plan = plan_batches(num_rows, job.batch_size)
    stats: dict[int, dict[str, Any]] = {}
    local_cpus = max(os.cpu_count() or 1, int(np.ceil((workers or 0) * cpus_per_worker)))
    with ray_session(address, local_cpus) as ray, data_context(retries, job.show_progress):
        n_workers = default_workers(ray, workers, cpus_per_worker)
        schema = job.schema(num_rows)
        if not plan:
            rows_out = _write_ordered(iter(()), job.output, schema, plan)
        else:
            collector = ray.remote(num_cpus=0)(_Collector).remote()
            ds = ray.data.from_items(plan, override_num_blocks=len(plan)).map_batches(
                _ScoreActor, batch_size=1, batch_format="pyarrow", zero_copy_batch=True,
                compute=actor_pool(ray, min(n_workers, len(plan))), num_cpus=cpus_per_worker,
                fn_constructor_kwargs={
                    "input_path": str(job.input_path), "columns": [c for c in INPUT_COLUMNS if c in columns],
                    "index_dir": str(index_dir), "reranker": str(reranker) if reranker else None,
                    "catalog": str(Path(catalog).resolve()) if catalog else None, "retrieval": retrieval,
                    "allow_catalog_change": allow_catalog_change, "mode": job.mode, "k": job.k,
                    "candidates": job.candidates, "cache_size": job.cache_size, "collector": collector},
                **actor_remote_args(retries),
            )
            blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
            try:
                rows_out = _write_ordered(blocks, job.output, schema, plan)
            except ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
                raise ShoprankError(f"Ray job failed after {retries} retries per batch ({first[:200]})") from None
            stats = ray.get(collector.get.remote())
    try:
        result = _merge(stats, plan, num_rows, rows_out)
    except ShoprankError:
        job.output.unlink(missing_ok=True)
        raise
    result.extra = {"engine": "ray", "address": address or "local", "workers": n_workers, "retries": retries,
                    "per_worker": _per_worker(stats)}
    return result
