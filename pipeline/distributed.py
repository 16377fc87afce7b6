"""Ray engine for the two offline jobs that outgrow one machine: scoring query logs and
encoding catalogs. Optional: needs ``pip install 'shoprank[ray]'``; ray is imported only
inside functions, so the default install never touches it.

Scoring (:func:`score_logs_ray`) is the local engine's job (:mod:`pipeline.batch`)
expressed as a Ray Data pipeline::

    plan of row ranges --map_batches(_ScoreActor x workers)--> ordered scored tables --> one Parquet file

Why it is built this way:

* **Same batches, same code.** The plan cuts the input into exactly the local engine's
  batches (``batch_size`` rows, fixed boundaries) and every actor turns one batch into
  output rows with the local engine's own :class:`pipeline.batch.BatchScorer`. So both
  engines share dedup, skip rules and row layout, and give the same rows with the same
  scores (the searcher answers each query on its own, whatever worker runs it).
* **Row index from the plan, not from the reader.** ``ray.data.read_parquet`` has no
  global row index (``input_row`` is part of the output contract) and ``zip`` with a
  range forces a repartition. Instead each plan item is a row range ``[start, stop)``;
  the actor reads just the row groups that overlap it (columns projected), so reading is
  distributed too and a batch means the same rows on every attempt.
* **Models once per actor.** ``_ScoreActor`` loads :class:`pipeline.search.TwoStageSearcher`
  (index, encoder, reranker, catalog) in its constructor; Ray Data's actor pool
  (``concurrency=workers``) then streams batches through it. Each actor keeps its own LRU
  of query answers, so only repeats *within* an actor are free.
* **Failures are Ray's job.** A batch whose actor task raises is retried (application
  errors via ``DataContext.actor_task_retry_on_errors``) and a dead actor is restarted
  (``max_restarts`` / ``max_task_retries``), both bounded by ``retries`` so a
  deterministic bug fails the job instead of looping. A retried batch replaces its
  failed attempt; nothing is appended twice because outputs are collected per batch in
  plan order (``preserve_order``) and the driver checks that every batch arrived once.
* **One output file, same schema and metadata.** The driver streams the ordered tables
  into a temp sibling with :func:`pipeline.batch.output_schema` and the same provenance
  block, then renames it into place: the file is byte-for-byte the local engine's format.
  Writing on the driver costs ~microseconds per row, three orders below scoring.

Catalog encoding (:func:`encode_catalog_ray`, :func:`build_index_ray`) runs
:class:`retrieval.encoder.BiEncoder` in actors over chunks of product texts and hands the
assembled vectors to :func:`retrieval.index.build_index` through a small encoder facade,
so the index is built and (for ivfpq) trained on the driver by the existing code.

Fault injection for tests / chaos drills: with ``SHOPRANK_RAY_FAIL_ONCE=<row>:<marker>``
(optionally ``:exit``) in the driver's environment, the first attempt at the batch holding
input row ``<row>`` raises (or kills its worker process) and creates ``<marker>``; later
attempts see the marker and succeed. ``<marker>`` must be on storage every node sees.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.batch import DEFAULT_TASKS, METADATA_KEY, BatchScorer, check_output, output_schema
from pipeline.core.artifacts import claim_output, temp_sibling
from pipeline.core.errors import ArtifactError, DataError, ShoprankError
from pipeline.core.cache import LRUCache

FAIL_ONCE_ENV = "SHOPRANK_RAY_FAIL_ONCE"
DEFAULT_RETRIES = 3
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


# ----------------------------------------------------------------------------- ray session
def _import_ray() -> Any:
    """Import ray, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ShoprankError("the Ray engine needs Ray: pip install 'shoprank[ray]' (or use --engine local)") from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Use a Ray that is already initialised (tests, notebooks), join a cluster at
    ``address``, or start a local one with ``num_cpus`` CPUs; shut down only what we started.

    A local instance is started without the dashboard (a web server nobody reads in a
    batch job, and seconds of start-up).
    """
    import logging

    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise ShoprankError(f"cannot {where} ({first[:200]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _default_workers(ray: Any, workers: int | None, cpus_per_worker: float) -> int:
    """Actor count: as given, else as many as the cluster's CPUs allow (at least one)."""
    if workers is not None:
        if workers < 1:
            raise ShoprankError(f"--workers must be >= 1 (got {workers})")
        return workers
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // cpus_per_worker))


@contextmanager
def _data_context(retries: int, show_progress: bool) -> Iterator[Any]:
    """Ray Data settings for one job (restored afterwards: DataContext is process-global).

    ``actor_task_retry_on_errors=True`` makes an exception inside an actor's batch a retry
    instead of a job failure; ``preserve_order`` makes results come back in plan order.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order,
             ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.actor_task_retry_on_errors = retries > 0
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = show_progress
    ctx.print_on_execution_start = show_progress
    try:
        with warnings.catch_warnings():  # restart budgets: see _actor_remote_args
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            yield ctx
    finally:
        (ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order,
         ctx.enable_progress_bars, ctx.print_on_execution_start) = saved


def _actor_remote_args(retries: int) -> dict[str, Any]:
    """Restart budgets for the actor pool, plus the fault-injection variable if set.

    Ray Data's default for actors is to retry forever; a bounded budget turns a
    deterministic failure into a failed job after ``retries`` attempts.
    """
    # Passed as ray_remote_args: Ray 2.60 deprecates them in map_batches but has no named
    # replacement for restart budgets yet (filtered in _data_context).
    args: dict[str, Any] = {"max_restarts": retries, "max_task_retries": retries}
    if os.environ.get(FAIL_ONCE_ENV):
        args["runtime_env"] = {"env_vars": {FAIL_ONCE_ENV: os.environ[FAIL_ONCE_ENV]}}
    return args


def _actor_pool(ray: Any, size: int) -> Any:
    """A fixed pool of ``size`` actors, each fed at most two batches at a time (one running,
    one prefetched), so the last batches are not queued behind a slow actor."""
    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2)


def _maybe_inject_failure(start: int, stop: int) -> None:
    """Fail the first attempt at the batch holding the row named in SHOPRANK_RAY_FAIL_ONCE."""
    spec = os.environ.get(FAIL_ONCE_ENV)
    if not spec:
        return
    row, marker, *mode = spec.split(":")
    if not start <= int(row) < stop:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # already failed once: this is the retry
    os.write(fd, f"{socket.gethostname()}:{os.getpid()} rows {start}-{stop}\n".encode())
    os.close(fd)
    if mode and mode[0] == "exit":
        os._exit(1)  # the worker process dies, as on a lost node
    raise RuntimeError(f"injected failure in the batch of rows {start}-{stop} ({FAIL_ONCE_ENV})")


# ----------------------------------------------------------------------------- input plan
def _parquet_rows(path: Path) -> tuple[list[str], int]:
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
    decodes the whole group and slices it (cheap next to scoring: ~0.1 s per million short
    queries vs ~10 s per thousand rows scored).
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
                 catalog: str | None, mode: str, k: int, candidates: int, cache_size: int,
                 collector: Any) -> None:
        from pipeline.search import TwoStageSearcher

        self.searcher = TwoStageSearcher.load(index_dir, reranker, catalog=catalog, warn=False)
        self.tasks = tuple(self.searcher.tasks) or DEFAULT_TASKS
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
        _maybe_inject_failure(start, stop)
        table = read_rows(self.input_path, start, stop, self.columns)
        if table.num_rows != stop - start:
            raise DataError(f"{self.input_path}: expected rows {start}-{stop}, read {table.num_rows}")
        # A fresh scorer per batch (so its skip counters are this batch's), sharing the
        # actor's query cache (so repeats across batches stay free).
        scorer = BatchScorer(self.searcher, self.tasks, mode=self.mode, k=self.k,
                              candidates=self.candidates, cache_size=self.cache_size)
        scorer.cache = self.cache
        result = scorer.score(table, start)
        ray.get(self.collector.add.remote(batch, {
            "rows": table.num_rows, "rows_out": result.num_rows, "computed": scorer.computed,
            "skipped": dict(scorer.skipped), "first_skipped": scorer.first_skipped,
            "worker": self.worker, "seconds": time.perf_counter() - started,
        }))
        return result


# ----------------------------------------------------------------------------- scoring
def _write_ordered(blocks: Iterator[pa.Table], output: Path, schema: pa.Schema, plan: list[dict[str, int]]) -> int:
    """Stream ordered result tables into a temp sibling of ``output``, check the row order
    (every output row's input_row non-decreasing, none beyond the plan), rename into place."""
    tmp = temp_sibling(output)
    rows, last = 0, -1
    limit = plan[-1]["stop"] if plan else 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in blocks:
                if table.num_rows == 0:
                    continue
                input_rows = table.column("input_row").to_numpy()
                if input_rows[0] < last or (np.diff(input_rows) < 0).any() or input_rows[-1] >= limit:
                    raise ShoprankError("Ray returned batches out of order; output discarded (preserve_order is off?)")
                last = int(input_rows[-1])
                writer.write_table(table.select(schema.names).cast(schema))
                rows += table.num_rows
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
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


def score_logs_ray(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
                   index_dir: str | os.PathLike[str] | None = None,
                   reranker: str | os.PathLike[str] | None = None, catalog: str | os.PathLike[str] | None = None,
                   k: int = 10, candidates: int = 100, batch_size: int = 1024, cache_size: int = 50_000,
                   address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                   retries: int = DEFAULT_RETRIES, show_progress: bool = True) -> dict[str, Any]:
    """Score a Parquet query log on Ray into one Parquet file (the local engine's format).

    Same arguments and report as :func:`pipeline.batch.score_logs`, plus ``address`` (join
    a running cluster; default: start a local Ray), ``workers`` (scoring actors; default:
    cluster CPUs / ``cpus_per_worker``) and ``retries`` (attempts per failed batch / dead
    actor). All paths must be readable at the same path on every node (shared storage).
    """
    input_path, output = Path(input_path).resolve(), Path(output_path).resolve()
    if k < 1 or candidates < 1 or batch_size < 1:
        raise ShoprankError(f"k, candidates and batch size must be >= 1 (got {k}, {candidates}, {batch_size})")
    check_output(output, input_path)
    with claim_output(output, f"output {output}"):
        return _score_logs_ray(input_path, output, index_dir=index_dir, reranker=reranker, catalog=catalog, k=k,
                               candidates=candidates, batch_size=batch_size, cache_size=cache_size,
                               address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                               retries=retries, show_progress=show_progress)


def _score_logs_ray(input_path: Path, output: Path, *, index_dir: Any, reranker: Any, catalog: Any, k: int,
                    candidates: int, batch_size: int, cache_size: int, address: str | None,
                    workers: int | None, cpus_per_worker: float, retries: int,
                    show_progress: bool) -> dict[str, Any]:
    """:func:`score_logs_ray` once the output is claimed."""
    from pipeline import config
    from pipeline.search import TwoStageSearcher

    names, num_rows = _parquet_rows(input_path)
    if "query" not in names:
        raise DataError(f"{input_path}: missing required column 'query' (found: {', '.join(names) or 'none'})")
    mode = "pairs" if "product_id" in names else "queries"
    columns = [c for c in ("query", "query_id", "product_id") if c in names]

    index_dir = Path(index_dir or config.DEFAULT_INDEX_DIR).resolve()
    reranker_path = Path(config.DEFAULT_RERANKER_DIR if reranker is None else reranker).resolve()
    if not (reranker_path / "manifest.json").is_file():
        # Same rule as TwoStageSearcher.load: only the *default* path may be absent.
        if reranker is not None and Path(reranker) != Path(config.DEFAULT_RERANKER_DIR):
            raise ArtifactError(f"{reranker_path}: no trained reranker here (no manifest.json)")
        reranker_path = None
    # Load once on the driver: fail fast with a one-line error before starting Ray, and
    # learn the tasks and model ids for the schema and provenance.
    searcher = TwoStageSearcher.load(index_dir, reranker_path, catalog=catalog)
    catalog_path = str(Path(catalog).resolve()) if catalog else None
    tasks = tuple(searcher.tasks) or DEFAULT_TASKS
    models, reranked = searcher.manifest_ids(), searcher.reranked
    del searcher
    params = {"mode": mode, "k": k, "candidates": candidates, "batch_size": batch_size, "tasks": list(tasks)}
    plan = plan_batches(num_rows, batch_size)

    started = time.perf_counter()
    stats: dict[int, dict[str, Any]] = {}
    n_workers = 0
    local_cpus = max(os.cpu_count() or 1, int(np.ceil((workers or 0) * cpus_per_worker)))
    with ray_session(address, local_cpus) as ray, _data_context(retries, show_progress):
        n_workers = _default_workers(ray, workers, cpus_per_worker)
        provenance = {"kind": "scored-log", "models": models, "params": params, "input": str(input_path),
                      "rows_in": num_rows, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        schema = output_schema(tasks, {METADATA_KEY: json.dumps(provenance, sort_keys=True).encode()})
        if not plan:
            rows_out = _write_ordered(iter(()), output, schema, plan)
        else:
            collector = ray.remote(num_cpus=0)(_Collector).remote()
            ds = ray.data.from_items(plan, override_num_blocks=len(plan)).map_batches(
                _ScoreActor, batch_size=1, batch_format="pyarrow", zero_copy_batch=True,
                compute=_actor_pool(ray, min(n_workers, len(plan))), num_cpus=cpus_per_worker,
                fn_constructor_kwargs={
                    "input_path": str(input_path), "columns": columns, "index_dir": str(index_dir),
                    "reranker": str(reranker_path) if reranker_path else None, "catalog": catalog_path,
                    "mode": mode, "k": k, "candidates": candidates, "cache_size": cache_size,
                    "collector": collector},
                **_actor_remote_args(retries),
            )
            blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
            try:
                rows_out = _write_ordered(blocks, output, schema, plan)
            except ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
                raise ShoprankError(f"Ray job failed after {retries} retries per batch ({first[:200]})") from None
            stats = ray.get(collector.get.remote())
    missing = [b["batch"] for b in plan if b["batch"] not in stats]
    if missing or sum(s["rows"] for s in stats.values()) != num_rows:
        output.unlink(missing_ok=True)
        raise ShoprankError(f"Ray returned {len(stats)} of {len(plan)} batches (first missing: "
                            f"{missing[0] if missing else '?'}); output discarded")
    seconds = time.perf_counter() - started
    skipped: collections.Counter[str] = collections.Counter()
    first_skipped: dict[str, int] = {}
    for batch in sorted(stats):
        skipped.update(stats[batch]["skipped"])
        for reason, row in stats[batch]["first_skipped"].items():
            first_skipped.setdefault(reason, row)
    return {
        "output": str(output), "mode": mode, "rows_in": num_rows, "rows_out": rows_out,
        "batches": len(plan), "batches_resumed": 0,
        "computed": sum(s["computed"] for s in stats.values()), "skipped": dict(skipped),
        "first_skipped_row": first_skipped, "seconds": round(seconds, 3),
        "rows_per_s": round(num_rows / seconds, 1) if seconds > 0 else None,
        "models": models, "reranked": reranked,
        "engine": "ray", "address": address or "local", "workers": n_workers, "retries": retries,
        "per_worker": _per_worker(stats),
    }


# ----------------------------------------------------------------------------- catalog encoding
class _EncodeActor:
    """One Ray actor: loads the bi-encoder once (checksum-verified) and embeds text chunks.

    ``encoded_with`` is the driver encoder's (``torch-fp32``, ``onnx-fp32``, ``onnx-int8``), so
    every actor encodes exactly the way a local build with that encoder would.
    """

    def __init__(self, *, model_path: str, model_id: str, batch_size: int, encoded_with: str = "torch-fp32") -> None:
        from retrieval.onnx_encoder import load_encoder

        try:  # one ORT thread per actor (num_cpus=1)
            self.encoder = load_encoder(model_path, model_id, encoded_with, threads=1, cache_size=0)
        except ArtifactError as exc:  # a node with other weights (or a stale export) at the same path
            raise ArtifactError(f"on {socket.gethostname()}: {exc}") from None
        self.batch_size = batch_size

    def __call__(self, chunk: pa.Table) -> pa.Table:
        texts = chunk.column("text").to_pylist()
        vecs = self.encoder.encode_products(texts, batch_size=self.batch_size, show_progress=False)
        flat = pa.array(vecs.reshape(-1), type=pa.float32())
        return pa.table({"row": chunk.column("row"),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, self.encoder.dim)})


def encode_texts_ray(texts: Sequence[str], encoder: Any, *, address: str | None = None,
                     workers: int | None = None, chunk_size: int = 1024, batch_size: int = 64,
                     retries: int = DEFAULT_RETRIES, show_progress: bool = True) -> np.ndarray:
    """Embed ``texts`` with ``encoder``'s model on Ray actors; float32 (n, dim) in input order.

    Chunks of ``chunk_size`` texts are the unit of work and of retry; each actor encodes
    its chunk in mini-batches of ``batch_size`` exactly as :meth:`BiEncoder.encode_products`.
    """
    if chunk_size < 1 or batch_size < 1:
        raise ShoprankError(f"chunk and batch size must be >= 1 (got {chunk_size}, {batch_size})")
    n = len(texts)
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    if n == 0:
        return out
    table = pa.table({"row": pa.array(np.arange(n, dtype=np.int64)), "text": pa.array([str(t) for t in texts])})
    chunks = [table.slice(i, chunk_size) for i in range(0, n, chunk_size)]
    seen = np.zeros(n, dtype=bool)
    with ray_session(address, max(os.cpu_count() or 1, workers or 0)) as ray, _data_context(retries, show_progress):
        n_workers = min(_default_workers(ray, workers, 1.0), len(chunks))
        ds = ray.data.from_arrow(chunks).map_batches(
            _EncodeActor, batch_size=chunk_size, batch_format="pyarrow", zero_copy_batch=True,
            compute=_actor_pool(ray, n_workers), num_cpus=1,
            fn_constructor_kwargs={"model_path": str(encoder.path), "model_id": encoder.model_id,
                                   "batch_size": batch_size,
                                   "encoded_with": encoder.describe().get("encoded_with", "torch-fp32")},
            **_actor_remote_args(retries),
        )
        try:
            for result in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = result.column("row").to_numpy()
                vecs = result.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                out[rows] = vecs.reshape(len(rows), encoder.dim)
                seen[rows] = True
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
            raise ShoprankError(f"Ray encoding job failed ({first[:200]})") from None
    if not seen.all():
        raise ShoprankError(f"Ray returned vectors for {int(seen.sum())} of {n} products; index not built")
    return out


class RayCatalogEncoder:
    """A :class:`retrieval.encoder.BiEncoder` stand-in whose ``encode_catalog`` runs on Ray.

    :func:`retrieval.index.build_index` only needs ``encode_catalog`` and ``describe``
    from its encoder; handing it this facade reuses the index-building code unchanged
    (fingerprint, factory presets, training, manifest, atomic write) while the encoding,
    the expensive part, is spread over the cluster. Everything else is the wrapped model's.
    """

    def __init__(self, encoder: Any, *, address: str | None = None, workers: int | None = None,
                 chunk_size: int = 1024, retries: int = DEFAULT_RETRIES) -> None:
        self.encoder, self.address, self.workers = encoder, address, workers
        self.chunk_size, self.retries = chunk_size, retries
        self.dim, self.model_id, self.path, self.name = encoder.dim, encoder.model_id, encoder.path, encoder.name

    def describe(self) -> dict[str, Any]:
        return self.encoder.describe()

    def encode_catalog(self, catalog: Any, batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        from pipeline.data import product_text

        return encode_texts_ray(product_text(catalog), self.encoder, address=self.address, workers=self.workers,
                                chunk_size=self.chunk_size, batch_size=batch_size, retries=self.retries,
                                show_progress=show_progress)


def build_index_ray(catalog_df: Any, encoder: Any, out_dir: str | os.PathLike[str], index_type: str = "flat", *,
                    factory: str | None = None, address: str | None = None, workers: int | None = None,
                    chunk_size: int = 1024, show_progress: bool = True, **params: Any) -> dict[str, Any]:
    """:func:`retrieval.index.build_index` with the catalog encoded on Ray actors; the index
    is assembled (and trained, for ivfpq) on the driver. Returns the manifest, plus the
    engine and worker count."""
    from retrieval.index import build_index

    ray_encoder = RayCatalogEncoder(encoder, address=address, workers=workers, chunk_size=chunk_size)
    manifest = build_index(catalog_df, ray_encoder, out_dir, index_type, factory=factory,
                           show_progress=show_progress, **params)
    return {**manifest, "engine": "ray", "workers": workers or "auto"}


__all__ = ["score_logs_ray", "encode_texts_ray", "build_index_ray", "RayCatalogEncoder", "ray_session",
           "plan_batches", "read_rows", "FAIL_ONCE_ENV"]
