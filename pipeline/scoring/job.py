"""One entry point for batch scoring, whichever engine runs it.

:func:`score_logs` validates the request, opens the input, decides the mode, loads the
models once, describes the job (:class:`~pipeline.scoring.contract.ScoringJob`) and turns
the engine's result into the report. The engines only execute: ``"local"``
(:mod:`pipeline.scoring.local`: streamed parts, exactly-once resume) or ``"ray"``
(:mod:`pipeline.scoring.ray`: Ray Data actors). Why one function: validation, mode
detection, provenance and the report are then written once, so the two engines cannot
disagree on them. For the same reason the output is claimed here
(:func:`pipeline.core.artifacts.claim_output`) for the whole run of either engine.
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_CANDIDATES, DEFAULT_RETRIEVAL
from pipeline.core.artifacts import claim_output, temp_sibling
from pipeline.core.errors import ShoprankError
from pipeline.core.tasks import TASKS
from pipeline.scoring.contract import EngineResult, ScoringJob, detect_mode
from pipeline.scoring.scorer import Scorer

ENGINES = ("local", "ray")


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


def _check_engine_options(engine: str, *, searcher: Scorer | None, resume: bool, backend: str,
                          precision: str | None, address: str | None, workers: int | None) -> None:
    """Refuse options the chosen engine cannot honour, before anything is read or loaded."""
    from pipeline.config import DEFAULT_PRECISION

    if engine not in ENGINES:
        raise ShoprankError(f"--engine must be 'local' or 'ray' (got {engine!r})")
    if engine == "local":
        if address is not None or workers is not None:
            raise ShoprankError("--address and --workers need --engine ray")
        return
    if backend != "auto" or precision not in (None, DEFAULT_PRECISION):
        raise ShoprankError("--backend/--precision are for the local engine; Ray actors use the defaults (auto)")
    if resume:
        raise ShoprankError("--resume is for the local engine; the Ray engine retries failed batches itself")
    if searcher is not None:
        raise ShoprankError("the Ray engine loads its models in every actor; pass model paths, not a searcher")


def score_logs(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
               engine: str = "local", searcher: Scorer | None = None,
               index_dir: str | os.PathLike[str] | None = None, reranker: str | os.PathLike[str] | None = None,
               catalog: str | os.PathLike[str] | None = None, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
               batch_size: int = 1024, resume: bool = False, cache_size: int = 50_000,
               show_progress: bool = True, backend: str = "auto", precision: str | None = None,
               address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
               retries: int | None = None, reranker_required: bool | None = None,
               retrieval: str | None = None, allow_catalog_change: bool = False,
               student: str | os.PathLike[str] | None = None, cascade: str | None = None) -> dict[str, Any]:
    """Score a query log into a Parquet file; returns a report (rows, time, throughput, models).

    Mode is chosen by the input's columns: with ``product_id`` each (query, product) pair
    gets rerank scores ("pairs"); without it each query gets its top-``k`` products
    ("queries"). Rows with an empty query (or, in pairs mode, an unknown product) produce
    no output and are counted in ``report["skipped"]``.

    ``engine="local"`` reads Parquet, CSV or JSONL, can ``resume`` an interrupted run and
    takes ``searcher`` or ``backend``/``precision`` (as in
    :meth:`pipeline.search.TwoStageSearcher.load`). ``engine="ray"`` reads Parquet and
    writes the same file from Ray actors: ``address`` joins a running cluster (default: a
    local Ray), ``workers`` sets the actor count (default: cluster CPUs /
    ``cpus_per_worker``), ``retries`` bounds attempts per failed batch or dead actor; every
    path must be readable at the same place on every node.

    ``reranker_required``: whether ``reranker`` was named by the user and so must exist
    (None = any path but the default), as in :meth:`~pipeline.search.TwoStageSearcher.load`.
    ``retrieval``: the first stage (dense | lexical | hybrid; default
    :data:`pipeline.config.DEFAULT_RETRIEVAL`). ``allow_catalog_change``: score with a catalog
    whose product text differs from the text indexed, as
    :meth:`~pipeline.search.TwoStageSearcher.load` allows it. Both are for loading the models,
    so they do not apply to a given ``searcher``. A ``filter`` column in the log restricts each
    row's products (queries mode). ``student``, ``cascade``: a reranker cascade
    (:class:`pipeline.search.CascadeSpec`), local engine only.
    The output is claimed for the whole run: a second job writing the same file is refused
    before it touches the first one's parts or temporaries.
    """
    _check_engine_options(engine, searcher=searcher, resume=resume, backend=backend, precision=precision,
                          address=address, workers=workers)
    if retrieval is not None:
        from retrieval.hybrid import check_mode

        check_mode(retrieval)  # before any input is read or Ray is started
    if engine == "ray" and (student is not None or cascade):
        raise ShoprankError("--student/--rerank-cascade run on --engine local only")
    from pipeline.search import parse_cascade

    parse_cascade(cascade)  # a bad spec fails before the log or any model is opened
    if k < 1 or candidates < 1 or batch_size < 1:
        raise ShoprankError(f"k, candidates and batch size must be >= 1 (got {k}, {candidates}, {batch_size})")
    input_path, output = Path(input_path), Path(output_path)
    if engine == "ray":  # actors on other nodes open these by path
        input_path, output = input_path.resolve(), output.resolve()
    check_output(output, input_path)
    common = dict(input_path=input_path, output=output, k=k, candidates=candidates, batch_size=batch_size,
                  cache_size=cache_size, show_progress=show_progress)
    loading = dict(retrieval=retrieval or DEFAULT_RETRIEVAL, allow_catalog_change=allow_catalog_change)
    with claim_output(output, f"output {output}"):
        if engine == "ray":
            job, run = _prepare_ray(common, index_dir, reranker, catalog, reranker_required=reranker_required,
                                    address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                                    retries=retries, **loading)
        else:
            job, run = _prepare_local(common, searcher, index_dir, reranker, catalog, resume=resume,
                                      backend=backend, precision=precision, reranker_required=reranker_required,
                                      student=student, cascade=cascade, **loading)
        started = time.perf_counter()
        result = run()
        return _report(job, result, time.perf_counter() - started)


def _job(common: dict[str, Any], mode: str, searcher: Scorer) -> ScoringJob:
    """The job description, from the input's mode and the loaded models."""
    return ScoringJob(mode=mode, tasks=tuple(searcher.tasks) or TASKS,
                      models=searcher.manifest_ids(), reranked=bool(searcher.tasks), **common)


def _prepare_local(common: dict[str, Any], searcher: Scorer | None, index_dir: Any, reranker: Any, catalog: Any,
                   *, resume: bool, backend: str, precision: str | None,
                   reranker_required: bool | None, retrieval: str = DEFAULT_RETRIEVAL,
                   allow_catalog_change: bool = False, student: Any = None,
                   cascade: str | None = None) -> tuple[ScoringJob, Callable[[], EngineResult]]:
    """Open the log (any format) and load the searcher unless one was given."""
    from pipeline import config
    from pipeline.scoring.local import open_input, run_local

    source = open_input(common["input_path"], common["batch_size"])
    mode = detect_mode(source.path, source.columns)  # a log without 'query' fails before the models load
    if searcher is None:
        from pipeline.search import TwoStageSearcher

        searcher = TwoStageSearcher.load(index_dir or config.DEFAULT_INDEX_DIR,
                                         config.DEFAULT_RERANKER_DIR if reranker is None else reranker,
                                         catalog=catalog, backend=backend,
                                         precision=precision or config.DEFAULT_PRECISION,
                                         reranker_required=reranker_required, retrieval=retrieval,
                                         allow_catalog_change=allow_catalog_change, student=student,
                                         cascade=cascade)
    job = _job(common, mode, searcher)
    return job, functools.partial(run_local, job, source, searcher, resume)


def _prepare_ray(common: dict[str, Any], index_dir: Any, reranker: Any, catalog: Any, *,
                 reranker_required: bool | None, address: str | None, workers: int | None,
                 cpus_per_worker: float, retries: int | None, retrieval: str = DEFAULT_RETRIEVAL,
                 allow_catalog_change: bool = False) -> tuple[ScoringJob, Callable[[], EngineResult]]:
    """Read the Parquet footer and load the models once on the driver: a bad input or
    artefact fails with one line before Ray starts, and the tasks and model ids are known."""
    from pipeline import config
    from pipeline.distributed import DEFAULT_RETRIES
    from pipeline.scoring.ray import open_parquet_log, resolve_models, run_ray
    from pipeline.search import TwoStageSearcher

    columns, num_rows = open_parquet_log(common["input_path"])
    mode = detect_mode(common["input_path"], columns)
    index_path, reranker_path = resolve_models(index_dir or config.DEFAULT_INDEX_DIR, reranker,
                                               config.DEFAULT_RERANKER_DIR, reranker_required)
    searcher = TwoStageSearcher.load(index_path, reranker_path, catalog=catalog, retrieval=retrieval,
                                     allow_catalog_change=allow_catalog_change)
    job = _job(common, mode, searcher)
    return job, functools.partial(run_ray, job, num_rows, columns, index_dir=index_path, reranker=reranker_path,
                                  catalog=catalog, retrieval=retrieval, allow_catalog_change=allow_catalog_change,
                                  address=address, workers=workers,
                                  cpus_per_worker=cpus_per_worker,
                                  retries=DEFAULT_RETRIES if retries is None else retries)


def _report(job: ScoringJob, result: EngineResult, seconds: float) -> dict[str, Any]:
    """The report both engines return (the Ray engine adds its cluster fields at the end)."""
    return {
        "output": str(job.output), "mode": job.mode, "rows_in": result.rows_in, "rows_out": result.rows_out,
        "batches": result.batches, "batches_resumed": result.batches_resumed,
        "computed": result.computed, "skipped": result.skipped,
        "first_skipped_row": result.first_skipped_row, "seconds": round(seconds, 3),
        "rows_per_s": round(result.rows_scored / seconds, 1) if seconds > 0 else None,
        "models": job.models, "reranked": job.reranked, **result.extra,
    }
