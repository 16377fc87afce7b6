"""Ray runtime shared by the offline jobs that outgrow one machine, and catalog encoding on it.
Optional: needs ``pip install 'shoprank[ray]'``; ray is imported only inside functions, so
the default install never touches it.

The runtime (:func:`ray_session`, :func:`data_context`, :func:`actor_pool`,
:func:`actor_remote_args`, :func:`default_workers`) is what every Ray job here needs: join
or start a cluster, set Ray Data's retry and ordering switches for one job, and bound
actor restarts. Batch scoring on Ray is :mod:`pipeline.scoring.ray`.

Catalog encoding (:func:`encode_texts_ray`, :func:`build_index_ray`) runs
:class:`retrieval.encoder.BiEncoder` in actors over chunks of product texts and hands the
assembled vectors to :func:`retrieval.index.build_index` through a small encoder facade,
so the index is built and (for ivfpq) trained on the driver by the existing code.

Fault injection for tests / chaos drills: with ``SHOPRANK_RAY_FAIL_ONCE=<row>:<marker>``
(optionally ``:exit``) in the driver's environment, the first attempt at the batch holding
input row ``<row>`` raises (or kills its worker process) and creates ``<marker>``; later
attempts see the marker and succeed. ``<marker>`` must be on storage every node sees.
"""
from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.errors import ArtifactError, ShoprankError
from pipeline.core.text import PRODUCT_TEXT_FIELDS

FAIL_ONCE_ENV = "SHOPRANK_RAY_FAIL_ONCE"
DEFAULT_RETRIES = 3


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


def default_workers(ray: Any, workers: int | None, cpus_per_worker: float) -> int:
    """Actor count: as given, else as many as the cluster's CPUs allow (at least one)."""
    if workers is not None:
        if workers < 1:
            raise ShoprankError(f"--workers must be >= 1 (got {workers})")
        return workers
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // cpus_per_worker))


@contextmanager
def data_context(retries: int, show_progress: bool) -> Iterator[Any]:
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
        with warnings.catch_warnings():  # restart budgets: see actor_remote_args
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            yield ctx
    finally:
        (ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order,
         ctx.enable_progress_bars, ctx.print_on_execution_start) = saved


def actor_remote_args(retries: int) -> dict[str, Any]:
    """Restart budgets for the actor pool, plus the fault-injection variable if set.

    Ray Data's default for actors is to retry forever; a bounded budget turns a
    deterministic failure into a failed job after ``retries`` attempts.
    """
    # Passed as ray_remote_args: Ray 2.60 deprecates them in map_batches but has no named
    # replacement for restart budgets yet (filtered in data_context).
    args: dict[str, Any] = {"max_restarts": retries, "max_task_retries": retries}
    if os.environ.get(FAIL_ONCE_ENV):
        args["runtime_env"] = {"env_vars": {FAIL_ONCE_ENV: os.environ[FAIL_ONCE_ENV]}}
    return args


def actor_pool(ray: Any, size: int) -> Any:
    """A fixed pool of ``size`` actors, each fed at most two batches at a time (one running,
    one prefetched), so the last batches are not queued behind a slow actor."""
    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2)


def maybe_inject_failure(start: int, stop: int) -> None:
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


# ----------------------------------------------------------------------------- catalog encoding
class _EncodeActor:
    """One Ray actor: loads the bi-encoder once (checksum-verified) and embeds text chunks.

    ``encoded_with`` is the driver encoder's (``torch-fp32``, ``onnx-fp32``, ``onnx-int8``), so
    every actor encodes exactly the way a local build with that encoder would.
    """

    def __init__(self, *, model_path: str, model_id: str, batch_size: int, encoded_with: str = "torch-fp32") -> None:
        from retrieval.encoders import load_index_encoder

        try:  # one ORT thread per actor (num_cpus=1)
            self.encoder = load_index_encoder(model_path, model_id, encoded_with, threads=1, cache_size=0)
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
    with ray_session(address, max(os.cpu_count() or 1, workers or 0)) as ray, data_context(retries, show_progress):
        n_workers = min(default_workers(ray, workers, 1.0), len(chunks))
        ds = ray.data.from_arrow(chunks).map_batches(
            _EncodeActor, batch_size=chunk_size, batch_format="pyarrow", zero_copy_batch=True,
            compute=actor_pool(ray, n_workers), num_cpus=1,
            fn_constructor_kwargs={"model_path": str(encoder.path), "model_id": encoder.model_id,
                                   "batch_size": batch_size,
                                   "encoded_with": encoder.describe().get("encoded_with", "torch-fp32")},
            **actor_remote_args(retries),
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

    def encode_catalog(self, catalog: Any, batch_size: int = 64, show_progress: bool = True,
                       fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> np.ndarray:
        from pipeline.data import product_text

        return encode_texts_ray(product_text(catalog, fields), self.encoder, address=self.address, workers=self.workers,
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


__all__ = ["encode_texts_ray", "build_index_ray", "RayCatalogEncoder", "ray_session", "data_context",
           "actor_pool", "actor_remote_args", "default_workers", "maybe_inject_failure", "FAIL_ONCE_ENV",
           "DEFAULT_RETRIES"]
