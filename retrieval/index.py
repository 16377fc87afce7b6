"""FAISS index over product vectors: build, save, load (memory-mapped), search, add, remove.

Design choices (and why):
* **The factory string is the knob.** ``flat`` / ``hnsw`` / ``ivfpq`` are only presets that
  expand to a FAISS ``index_factory`` string (``IDMap2,Flat``, ``HNSW32``,
  ``IVF{nlist},PQ{m}x{nbits},RFlat``); any factory string can be passed instead, and the
  string plus its search-time parameters go into the manifest.
* **Inner product on unit vectors** (= cosine), so scores are comparable across index types.
* **Slots.** Every vector gets an int64 *slot*: its position in ``ids.npy`` (the product id
  array, append-only). ``status.npy`` marks each slot live (0), removed (1: physically
  deleted with ``remove_ids``) or tombstoned (2: FAISS cannot delete from this index, e.g.
  HNSW or a refined IVF-PQ, so the slot is filtered out at search time with over-fetch).
  A full rebuild (``build_index``) or :func:`compact_index` drops tombstones for good.
* **Atomic directories.** Build, add, remove and compact each write a complete new
  directory next to the old one and rename it into place (``atomic_directory``), so a
  process killed half-way leaves the previous index intact and loadable.
* **Lexical side.** Unless built with ``lexical=False``, the directory also holds a bm25s
  index over the same product text (``lexical/``, see :mod:`retrieval.lexical`), covered by
  the manifest's checksums and rewritten by every add/remove/compact, so ``dense``,
  ``lexical`` and ``hybrid`` search always see the same products. It is loaded on first
  use only: a dense search never reads it.
* **Filters.** A :class:`Selection` (the products a filter keeps) is searched exactly by
  scanning just its vectors in the index's flat store (flat; HNSW's storage; the refine
  step's vectors) while that reads at most :data:`EXACT_SCAN_BUDGET` vector components;
  a larger selection goes through the index's own search with an ``IDSelector``, widened
  for the filter's selectivity; index types with neither over-fetch until ``k`` matching
  products are found (see :meth:`Retriever.search_vectors`).
* **Integrity.** The manifest records the sha256 and byte size of ``index.faiss``, the
  dimension, the vector count and the model's weights checksum; :meth:`Retriever.load`
  refuses a corrupt file, a wrong dimension, or a query model other than the one recorded.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.artifacts import (
    atomic_directory, build_manifest, file_has_sha256, fingerprint_frame, hash_file, read_manifest,
    recover_directory, remember_sha256, write_manifest, writes_output,
)
from pipeline.core.errors import ArtifactError, DataError
from pipeline.core.runtime import DEFAULT_SEED
from pipeline.core.text import PRODUCT_TEXT_FIELDS, TEXT_FIELDS_KEY, fingerprint_columns, recorded_text_fields

from retrieval.hybrid import FUSION_KEY

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from retrieval.encoder import BiEncoder
    from retrieval.lexical import BM25Retriever

INDEX_KIND = "faiss-index"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
STATUS_FILE = "status.npy"
#: Per slot, :func:`pipeline.core.text.text_hash` of the product text the vector was encoded
#: from: what lets a searcher refuse a catalog whose products changed since indexing.
TEXT_HASHES_FILE = "text_hashes.npy"
LIVE, REMOVED, TOMBSTONED = 0, 1, 2
#: Manifest key of the lexical side: its files' sha256, product count and BM25 parameters.
LEXICAL_KEY = "lexical"
#: Selections this small are searched exactly over a copy of their own vectors when the index
#: keeps no flat store to scan: the copy lives as long as the selection, so its size is bounded.
EXACT_SELECTION_LIMIT = 2048
#: Filtered searches that read at most this many vector components (selected products x
#: dimension) are answered by an exact scan of the selected vectors in the index's flat store.
#: Why: the scan costs in proportion to what it reads, and up to here it is about as fast as
#: a graph walk restricted to the selection, which misses true neighbours whenever few of the
#: products it visits are selected (benchmarks/filter_recall.py measures both).
EXACT_SCAN_BUDGET = 20_000_000
#: A graph or inverted-list search restricted to a selection visits about ``share`` of the
#: products it would visit unfiltered, so efSearch / nprobe are widened by ``1 / share``,
#: but never by more than this factor.
MAX_WIDENING = 16
INDEX_TYPES = ("flat", "hnsw", "ivfpq")


def default_factory(index_type: str, n: int, dim: int, **params: Any) -> tuple[str, dict[str, Any]]:
    """Expand a preset into (factory string, search params), scaled to the collection size.

    IVF needs ~39 training points per list and 8-bit PQ needs 256 per sub-quantizer
    centroid set, so small collections get fewer lists and 4-bit codes; the refine step
    (``RFlat``) re-scores ``k_factor * k`` PQ candidates with exact vectors so recall holds.
    """
    if index_type == "flat":
        return "IDMap2,Flat", {}
    if index_type == "hnsw":
        m = int(params.get("hnsw_m", 32))
        return f"HNSW{m}", {"efSearch": int(params.get("ef_search", 256)),
                            "efConstruction": int(params.get("ef_construction", 80))}
    if index_type == "ivfpq":
        nlist = int(params.get("nlist") or max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 or 1)))
        m = int(params.get("pq_m") or next(c for c in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % c == 0))
        nbits = int(params.get("pq_bits") or (8 if n >= 256 * 39 else 4))
        # "np": skip polysemous training — search never uses those codes, and it dominated the
        # build time (benchmarks/index_recall.py)
        return f"IVF{nlist},PQ{m}x{nbits}np,RFlat", {
            "nprobe": int(params.get("nprobe") or max(1, min(nlist, max(16, nlist // 4)))),
            "k_factor": float(params.get("k_factor", 4.0)),
        }
    raise DataError(f"unknown index type {index_type!r}; use one of {', '.join(INDEX_TYPES)} or --factory")


#: Search-time parameters, the part of a factory string that must be present for each, and
#: the build-index flag that sets it.
_SEARCH_PARAMS = {"efSearch": (("HNSW",), "--ef-search"), "efConstruction": (("HNSW",), None),
                  "nprobe": (("IVF",), "--nprobe"), "k_factor": (("RFlat", "Refine"), None)}


def search_param_problem(index_type: str, factory: str | None, params: dict[str, Any]) -> str | None:
    """Why ``params`` cannot be set on this index (None when they can).

    Checked before any encoding: FAISS itself only refuses an inapplicable parameter when it
    is set on the built index, after minutes of work, and accepts a negative efSearch.
    """
    if factory is None and index_type not in INDEX_TYPES:
        return f"unknown index type {index_type!r}; use one of {', '.join(INDEX_TYPES)} or --factory"
    described = factory or {"flat": "IDMap2,Flat", "hnsw": "HNSW", "ivfpq": "IVF,PQ,RFlat"}[index_type]
    shown = f"index {factory!r}" if factory else f"a {index_type} index"
    for key, value in params.items():
        if key not in _SEARCH_PARAMS:
            return f"unknown search parameter {key!r} (known: {', '.join(_SEARCH_PARAMS)})"
        needs, flag = _SEARCH_PARAMS[key]
        name = flag or key
        if not any(part in described for part in needs):
            return f"{name} does not apply to {shown} (it is for {' / '.join(needs)} indexes)"
        if key == "k_factor":
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value > 0):
                return f"{name} must be a positive number, got {value!r}"
        elif not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return f"{name} must be an integer >= 1, got {value!r}"
    return None


def check_build_options(index_type: str, factory: str | None, params: dict[str, Any]) -> None:
    """One-line DataError for an index type or search parameters that cannot be built."""
    problem = search_param_problem(index_type, factory, params)
    if problem:
        raise DataError(problem)


def _apply_search_params(index: Any, params: dict[str, Any]) -> None:
    """Set search-time knobs (efSearch / nprobe / k_factor) on the index or its parts."""
    faiss = _faiss()
    if "efSearch" in params:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(params["efSearch"]))
    if "nprobe" in params:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(params["nprobe"]))
    if "k_factor" in params and hasattr(faiss, "downcast_index"):
        inner = faiss.downcast_index(index)
        if hasattr(inner, "k_factor"):
            inner.k_factor = float(params["k_factor"])


def _faiss(with_torch: bool = True) -> Any:
    from pipeline.core.runtime import import_faiss

    return import_faiss(with_torch=with_torch)


def _uses_idmap(index: Any) -> bool:
    return "IDMap" in type(_faiss().downcast_index(index)).__name__


def _add_vectors(index: Any, vectors: np.ndarray, first_slot: int) -> None:
    """Add vectors under consecutive slots (explicit ids for IDMap indexes, else positional)."""
    if _uses_idmap(index):
        index.add_with_ids(vectors, np.arange(first_slot, first_slot + len(vectors), dtype=np.int64))
    else:
        if index.ntotal != first_slot:  # positional ids only hold while nothing was physically removed
            raise ArtifactError(f"index has {index.ntotal} vectors but {first_slot} slots; rebuild it")
        index.add(vectors)


def _check_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise DataError(f"vectors must be a 2-d array, got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise ArtifactError(f"vector dimension mismatch (index {dim}, vectors {vectors.shape[1]})")
    return vectors


def measure_latency(index: Any, vectors: np.ndarray, k: int = 100, n_queries: int = 50) -> dict[str, float]:
    """Single-query search latency (ms, p50/p95) using stored vectors as queries: what one
    interactive search pays for the ANN step alone, recorded at build time."""
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
    times = []
    for vec in sample:
        t0 = time.perf_counter()
        index.search(vec[None, :], k)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3),
            "k": int(k)}


def _lexical_of(lexical: "BM25Retriever | Sequence[str] | None", ids: np.ndarray) -> "BM25Retriever | None":
    """The lexical side to save: built from per-id texts, or the given one."""
    from retrieval.lexical import BM25Retriever

    if lexical is None or isinstance(lexical, BM25Retriever):
        return lexical
    texts = list(lexical)
    if len(texts) != len(ids):
        raise DataError(f"{len(texts)} product texts for {len(ids)} ids")
    return BM25Retriever(ids=ids.tolist(), texts=texts)


def _save_lexical(lexical: "BM25Retriever | None", directory: Path) -> dict[str, Any] | None:
    """Write the lexical side into ``directory/lexical`` and return its manifest record."""
    from retrieval.lexical import LEXICAL_DIR

    if lexical is None:
        return None
    started = time.perf_counter()
    lexical.save(directory / LEXICAL_DIR)
    files = {f.name: hash_file(f)[0] for f in sorted((directory / LEXICAL_DIR).iterdir())}
    return {"dir": LEXICAL_DIR, "count": len(lexical.catalog_ids), "k1": lexical.k1, "b": lexical.b,
            "files": files, "build_seconds": round(time.perf_counter() - started, 3)}


def _load_lexical(index_dir: Path, manifest: dict[str, Any]) -> "BM25Retriever":
    """Open the lexical side after checking every file against the manifest's checksums."""
    from retrieval.lexical import BM25Retriever

    record = manifest.get(LEXICAL_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise ArtifactError(f"{index_dir}: this index has no lexical side; rebuild it with "
                            "`pipeline build-index --lexical` to use lexical or hybrid retrieval")
    directory = index_dir / str(record.get("dir", "lexical"))
    for name, digest in record["files"].items():
        path = directory / name
        if not path.is_file() or not file_has_sha256(path, digest):
            raise ArtifactError(f"{path}: corrupt or missing lexical index file (checksum does not match the "
                                "manifest); rebuild the index")
    return BM25Retriever.load(directory, k1=float(record.get("k1", 1.5)), b=float(record.get("b", 0.75)))


@writes_output("out_dir", "index")
def build_from_vectors(vectors: np.ndarray, ids: Sequence[str], out_dir: str | os.PathLike[str], *,
                       index_type: str = "flat", factory: str | None = None, model: dict[str, Any] | None = None,
                       catalog_fingerprint: str | None = None, seed: int = DEFAULT_SEED,
                       text_hashes: np.ndarray | None = None, catalog: dict[str, Any] | None = None,
                       text_fields: Sequence[str] | None = None,
                       lexical: "BM25Retriever | Sequence[str] | None" = None, **params: Any) -> dict[str, Any]:
    """Build and save an index from precomputed unit vectors (the encoder-free core of
    :func:`build_index`; the benchmark uses it on synthetic vectors).

    ``text_hashes``: per vector, the hash of the product text it was encoded from (stored, so
    searchers can refuse a changed catalog); ``catalog``: the catalog file's ``path`` and
    ``sha256``, recorded in the manifest's inputs; ``text_fields``: the product text fields the
    vectors were encoded from (recorded when given; synthetic vectors have none); ``lexical``:
    the product texts (one per id) to build the lexical side from, or a built one to keep.
    """
    faiss = _faiss()
    check_build_options(index_type, factory, {k: v for k, v in params.items() if k in _SEARCH_PARAMS})
    vectors = _check_vectors(vectors)
    ids_arr = np.asarray([str(i) for i in ids])
    if len(ids_arr) != len(vectors):
        raise DataError(f"{len(ids_arr)} ids for {len(vectors)} vectors")
    if len(set(ids_arr.tolist())) != len(ids_arr):
        raise DataError("product_id: duplicate ids in the catalog")
    if len(vectors) == 0:
        raise DataError("catalog is empty: nothing to index")
    n, dim = vectors.shape
    preset_factory, search_params = default_factory(index_type, n, dim, **params)
    factory = factory or preset_factory
    for key in ("efSearch", "nprobe", "k_factor"):
        if key in params:
            search_params[key] = params[key]
    started = time.perf_counter()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise DataError(f"invalid FAISS factory string {factory!r} ({str(exc).splitlines()[0][:120]})") from None
    if "efConstruction" in search_params:
        hnsw = faiss.downcast_index(index)
        if hasattr(hnsw, "hnsw"):
            hnsw.hnsw.efConstruction = int(search_params["efConstruction"])
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as exc:
            raise DataError(f"cannot train {factory!r} on {n} vectors ({str(exc).splitlines()[0][:120]})") from None
    _add_vectors(index, vectors, 0)
    _apply_search_params(index, search_params)
    build_seconds = time.perf_counter() - started
    latency_ms = measure_latency(index, vectors, k=min(100, n))
    lexical_index = _lexical_of(lexical, ids_arr)

    target = Path(out_dir)
    with atomic_directory(target) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        digest, stat = hash_file(tmp / INDEX_FILE)
        np.save(tmp / IDS_FILE, ids_arr, allow_pickle=False)
        np.save(tmp / STATUS_FILE, np.zeros(n, dtype=np.int8), allow_pickle=False)
        if text_hashes is not None:
            np.save(tmp / TEXT_HASHES_FILE, np.asarray(text_hashes, dtype=np.int64), allow_pickle=False)
        lexical_record = _save_lexical(lexical_index, tmp)
        manifest = build_manifest(
            INDEX_KIND,
            config={"index_type": index_type if factory == preset_factory else "custom", "factory": factory,
                    "search_params": search_params, "seed": seed},
            inputs={"catalog_fingerprint": catalog_fingerprint, **({"model_id": model["model_id"]} if model else {}),
                    **(catalog or {})},
            model_id=(model or {}).get("model_id"), model_path=(model or {}).get("model_path"),
            model_name=(model or {}).get("model_name"), encoded_with=(model or {}).get("encoded_with", "torch-fp32"),
            dim=dim, count=n, live=n, tombstoned=0, removed=0,
            metric="inner_product", normalized=True, index_type=index_type, factory=factory,
            search_params=search_params, catalog_fingerprint=catalog_fingerprint,
            **({TEXT_FIELDS_KEY: list(text_fields)} if text_fields is not None else {}),
            build_seconds=round(build_seconds, 3), query_latency_ms=latency_ms, index_sha256=digest,
            index_bytes=(tmp / INDEX_FILE).stat().st_size, updates=[],
            **({LEXICAL_KEY: lexical_record} if lexical_record else {}),
        )
        write_manifest(tmp, manifest)
    remember_sha256(target / INDEX_FILE, digest, stat)  # the first search need not re-hash it
    return manifest


@writes_output("out_dir", "index")
def build_index(catalog_df: "pd.DataFrame", encoder: "BiEncoder", out_dir: str | os.PathLike[str],
                index_type: str = "flat", *, factory: str | None = None, batch_size: int = 64,
                show_progress: bool = True, catalog_path: str | os.PathLike[str] | None = None,
                text_fields: Sequence[str] | None = None, lexical: bool = True, **params: Any) -> dict[str, Any]:
    """Encode a catalog with ``encoder`` and write a complete index directory to ``out_dir``.

    ``catalog_path``: the file ``catalog_df`` was read from; recorded (with its sha256) so
    searchers default to it and can tell when it changed. ``text_fields``: the product text
    fields to encode (None: the model's own, see :func:`index_text_fields`). Returns the
    manifest, with ``encode_seconds`` added (encoding dominates on CPU).
    """
    check_build_options(index_type, factory, {k: v for k, v in params.items() if k in _SEARCH_PARAMS})
    if "product_id" not in catalog_df.columns:
        raise DataError("catalog: missing column 'product_id'")
    fields = index_text_fields(encoder, text_fields)
    from pipeline.data import product_text

    texts = product_text(catalog_df, fields)  # refuses a missing column before encoding
    hashes = text_hashes(texts)
    catalog: dict[str, Any] = {}
    stat: list[int] = []
    if catalog_path is not None:
        digest, stat = hash_file(catalog_path)
        catalog = {"catalog": recorded_catalog_path(catalog_path, out_dir), "catalog_sha256": digest}
    started = time.perf_counter()
    vectors = encoder.encode_catalog(catalog_df, batch_size=batch_size, show_progress=show_progress, fields=fields)
    encode_seconds = time.perf_counter() - started
    fp = fingerprint_frame(catalog_df, [c for c in fingerprint_columns(fields) if c in catalog_df.columns])
    manifest = build_from_vectors(vectors, catalog_df["product_id"].astype(str).tolist(), out_dir,
                                  index_type=index_type, factory=factory, model=encoder.describe(),
                                  catalog_fingerprint=fp, text_hashes=hashes,
                                  catalog=catalog, text_fields=fields,
                                  lexical=texts if lexical else None, **params)
    if catalog_path is not None:
        remember_sha256(catalog_path, catalog["catalog_sha256"], stat)  # the first search need not re-hash it
    manifest["encode_seconds"] = round(encode_seconds, 3)
    return manifest


def recorded_catalog_path(catalog_path: str | os.PathLike[str], index_dir: str | os.PathLike[str]) -> str:
    """How an index records its catalog: relative to the index directory when both lie inside
    the working directory (the project), so moving or copying the project keeps the binding;
    absolute otherwise (a shared catalog elsewhere stays found from any project)."""
    catalog, index, root = Path(catalog_path).resolve(), Path(index_dir).resolve(), Path.cwd().resolve()
    if catalog.is_relative_to(root) and index.is_relative_to(root):
        return os.path.relpath(catalog, index)
    return str(catalog)


def index_text_fields(encoder: Any, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The product text fields an index encodes: ``requested``, else the ones the model was
    trained on, else the default template.

    A shoprank-trained retriever asked to encode other fields is refused: its vectors would
    come from text it never learned to read, and the index/model pair would disagree.
    """
    from retrieval.encoder import model_text_fields

    path = getattr(encoder, "path", None)
    trained = model_text_fields(path) if path is not None else None
    if requested is None:
        return trained or PRODUCT_TEXT_FIELDS
    requested = tuple(requested)
    if trained is not None and requested != trained:
        raise ArtifactError(f"retriever {path} was trained on product text fields {','.join(trained)}, not "
                            f"{','.join(requested)}; drop --text-fields or retrain with matching --text-fields")
    return requested


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """:func:`pipeline.core.text.text_hash` of each product text (the text that is encoded)."""
    from pipeline.core.text import text_hash

    return np.asarray([text_hash(t) for t in texts], dtype=np.int64)


def _read_index(index_dir: Path, manifest: dict[str, Any], mmap: bool, with_torch: bool = True) -> Any:
    """Read index.faiss after checking its size and checksum against the manifest."""
    faiss = _faiss(with_torch)
    path = index_dir / INDEX_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: index file missing")
    size = path.stat().st_size
    if manifest.get("index_bytes") is not None and size != manifest["index_bytes"]:
        raise ArtifactError(f"{path}: corrupt index file (size {size} bytes, manifest says {manifest['index_bytes']})")
    if manifest.get("index_sha256") and not file_has_sha256(path, manifest["index_sha256"]):
        raise ArtifactError(f"{path}: corrupt index file (checksum does not match the manifest)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError:
        try:  # some index types cannot be memory-mapped: read them into memory instead
            return faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ArtifactError(f"{path}: corrupt index file ({str(exc).splitlines()[-1][:120]})") from None


class Retriever:
    """A loaded index plus the query encoder it was built with: ``search(queries, k)``."""

    def __init__(self, index_dir: Path, index: Any, ids: np.ndarray, status: np.ndarray,
                 manifest: dict[str, Any], encoder: "BiEncoder | None",
                 text_hashes: np.ndarray | None = None) -> None:
        self.index_dir = index_dir
        self.text_hashes = text_hashes
        self.index = index
        self.ids = ids
        self.status = status
        self.manifest = manifest
        self.encoder = encoder
        self._tombstoned = int((status == TOMBSTONED).sum())
        self._lexical: "BM25Retriever | None" = None

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str], encoder: "BiEncoder | None" = None, *,
             load_encoder: bool = True, mmap: bool = True) -> "Retriever":
        """Open an index directory, verifying file integrity, dimension and query model.

        ``encoder=None`` loads the model recorded in the manifest (``load_encoder=False``
        skips it, for tools that only need vectors); an encoder with other weights is refused.
        A torch-free encoder (``needs_torch = False``, the ONNX one) keeps torch out of the
        process: faiss is then imported without torch in front of it.
        """
        index_dir = Path(index_dir)
        recover_directory(index_dir)
        if not index_dir.is_dir():
            raise ArtifactError(f"{index_dir}: index directory does not exist (run `pipeline build-index`)")
        manifest = read_manifest(index_dir, kind=INDEX_KIND)
        index = _read_index(index_dir, manifest, mmap, with_torch=getattr(encoder, "needs_torch", True))
        if index.d != manifest.get("dim"):
            raise ArtifactError(f"{index_dir / INDEX_FILE}: dimension {index.d} does not match the manifest ({manifest.get('dim')})")
        try:
            ids = np.load(index_dir / IDS_FILE, allow_pickle=False)
            status = np.load(index_dir / STATUS_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{index_dir}: unreadable {IDS_FILE}/{STATUS_FILE} ({exc.__class__.__name__})") from None
        if len(ids) != len(status) or int((status != REMOVED).sum()) != index.ntotal:
            raise ArtifactError(f"{index_dir}: {IDS_FILE} ({len(ids)} slots) does not match the index ({index.ntotal} vectors)")
        text_hashes = None
        if (index_dir / TEXT_HASHES_FILE).is_file():  # indexes built before it was recorded have none
            try:
                text_hashes = np.load(index_dir / TEXT_HASHES_FILE, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{index_dir}: unreadable {TEXT_HASHES_FILE} ({exc.__class__.__name__})") from None
            if text_hashes.shape != ids.shape or text_hashes.dtype != np.int64:
                raise ArtifactError(f"{index_dir}: {TEXT_HASHES_FILE} does not match {IDS_FILE}; rebuild the index")
        search_params = manifest.get("search_params") or {}
        problem = (search_param_problem(str(manifest.get("index_type") or "flat"), manifest.get("factory"), search_params)
                   if isinstance(search_params, dict) else "not a JSON object")
        if problem:
            raise ArtifactError(f"{index_dir / 'manifest.json'}: search_params do not fit the index ({problem})")
        _apply_search_params(index, search_params)
        if encoder is None and load_encoder:
            from retrieval.encoders import load_encoder as load_model

            path = manifest.get("model_path")
            if not path or not Path(path).is_dir():
                raise ArtifactError(f"{index_dir}: recorded model {path!r} not found; pass the model explicitly")
            encoder = load_model(path, backend="torch")
        if encoder is not None:
            check_encoder(manifest, encoder, index_dir)
        return cls(index_dir, index, ids, status, manifest, encoder, text_hashes)

    def use_encoder(self, encoder: "BiEncoder") -> "Retriever":
        """Attach a query encoder after loading (refused if it is not the index's model), so a
        caller can build the encoder while the index is being read."""
        check_encoder(self.manifest, encoder, self.index_dir)
        self.encoder = encoder
        return self

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The product text fields this index's vectors were encoded from."""
        return recorded_text_fields(self.manifest)

    @property
    def catalog_ids(self) -> list[str]:
        """Product ids currently searchable (live slots), in slot order."""
        return self.ids[self.status == LIVE].tolist()

    def live_text_hashes(self) -> list[tuple[str, int]] | None:
        """(product id, text hash) of every live product, or None for an index without hashes."""
        if self.text_hashes is None:
            return None
        live = self.status == LIVE
        return list(zip(self.ids[live].tolist(), self.text_hashes[live].tolist()))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def has_lexical(self) -> bool:
        """Whether the index directory holds a lexical side (lexical and hybrid search need one)."""
        return isinstance(self.manifest.get(LEXICAL_KEY), dict)

    @property
    def lexical(self) -> "BM25Retriever":
        """The lexical side, verified and loaded on first use (dense search never pays for it)."""
        if self._lexical is None:
            self._lexical = _load_lexical(self.index_dir, self.manifest)
        return self._lexical

    def fusion(self) -> tuple[str, float]:
        """(method, dense weight) of hybrid search, as fitted into the manifest (else RRF)."""
        from retrieval.hybrid import recorded_fusion

        return recorded_fusion(self.manifest)

    def select(self, product_ids: Sequence[str] | np.ndarray) -> "Selection":
        """The live products among ``product_ids``, to pass as ``where=`` to :meth:`search`."""
        wanted = np.isin(self.ids.astype(str), np.asarray([str(p) for p in product_ids]))
        return Selection(self, wanted & (self.status == LIVE))

    def search(self, queries: Sequence[str], k: int = 100, batch_size: int = 64, *, mode: str = "dense",
               where: "Selection | None" = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-``k`` product ids and scores per query.

        ``mode``: ``dense`` (inner product of unit vectors), ``lexical`` (BM25) or ``hybrid``
        (both fused as the manifest records, see :mod:`retrieval.hybrid`); scores are each
        mode's own. ``where``: only products of this :meth:`select` selection are returned.
        """
        from retrieval.hybrid import check_mode, fuse, fusion_depth

        check_mode(mode)
        queries = list(queries)
        if mode == "lexical":
            return self._lexical_search(queries, k, where)
        if self.encoder is None:
            raise ArtifactError(f"{self.index_dir}: retriever loaded without an encoder; cannot search text")
        if mode == "dense":
            vecs = self.encoder.encode_queries(queries, batch_size=batch_size)
            return self.search_vectors(vecs, k, where=where)
        depth = fusion_depth(k)
        lexical = self._lexical_search(queries, depth, where)  # first: refuses an index without one
        dense = self.search_vectors(self.encoder.encode_queries(queries, batch_size=batch_size), depth, where=where)
        method, weight = self.fusion()
        fused = [fuse((d_ids, d_sc), (l_ids, l_sc), k, method, weight)
                 for d_ids, d_sc, l_ids, l_sc in zip(*dense, *lexical)]
        return [ids for ids, _ in fused], [scores for _, scores in fused]

    def _lexical_search(self, queries: list[str], k: int,
                        where: "Selection | None") -> tuple[list[list[str]], list[np.ndarray]]:
        lexical = self.lexical
        mask = None if where is None else where.lexical_mask()
        if mask is not None and not mask.any():
            return [[] for _ in queries], [np.zeros(0, np.float32) for _ in queries]
        return lexical.search(queries, k, weight_mask=mask)

    def search_vectors(self, vecs: np.ndarray, k: int = 100, *,
                       where: "Selection | None" = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Search unit query vectors; tombstoned slots are over-fetched and filtered out.

        With ``where``, only the selected products come back, found by the first that applies
        (:meth:`Selection.search`): an exact scan of the selected vectors in the index's flat
        store (an exact index; or one that keeps such a store, while the scan reads at most
        :data:`EXACT_SCAN_BUDGET` vector components); an exact search over a copy of the
        selection's vectors (at most :data:`EXACT_SELECTION_LIMIT` products, or any size when
        the index supports no selector); FAISS's ``IDSelector`` inside the index's own search
        (HNSW, IVF, refine), with efSearch / nprobe widened by the filter's selectivity and any
        query that comes back short of ``k`` re-answered by the exact scan; otherwise
        over-fetching, doubling until ``k`` selected products are found or the whole index was
        fetched — the unfiltered ranking restricted to the selection, never fewer than ``k``
        when ``k`` exist.
        """
        vecs = _check_vectors(vecs, self.dim)
        if len(vecs) == 0 or k <= 0:
            return [[] for _ in range(len(vecs))], [np.zeros(0, np.float32) for _ in range(len(vecs))]
        if where is not None:
            return where.search(vecs, int(k))
        fetch = min(int(k) + self._tombstoned, max(int(self.index.ntotal), 1))
        scores, slots = self.index.search(vecs, fetch)
        return self._rows(scores, slots, int(k), self.status == LIVE if self._tombstoned else None)

    def _rows(self, scores: np.ndarray, slots: np.ndarray, k: int,
              keep_slots: np.ndarray | None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Per query, the first ``k`` returned slots that exist (and are in ``keep_slots``)."""
        out_ids: list[list[str]] = []
        out_scores: list[np.ndarray] = []
        for row_s, row_i in zip(scores, slots):
            keep = row_i >= 0
            if keep_slots is not None:
                keep &= keep_slots[np.clip(row_i, 0, None)]
            row_i, row_s = row_i[keep][:k], row_s[keep][:k]
            out_ids.append(self.ids[row_i].tolist())
            out_scores.append(row_s.astype(np.float32))
        return out_ids, out_scores

    def info(self) -> dict[str, Any]:
        """Counts and build facts for `pipeline index info`."""
        m = self.manifest
        return {
            "index": str(self.index_dir), "index_type": m.get("index_type"), "factory": m.get("factory"),
            "search_params": m.get("search_params"), "dim": m.get("dim"),
            "live": int((self.status == LIVE).sum()), "tombstoned": int((self.status == TOMBSTONED).sum()),
            "removed": int((self.status == REMOVED).sum()), "vectors_in_faiss": int(self.index.ntotal),
            "model_id": m.get("model_id"), "model_path": m.get("model_path"),
            "catalog_fingerprint": m.get("catalog_fingerprint"), "text_fields": list(self.text_fields),
            "build_seconds": m.get("build_seconds"),
            "lexical_products": (m.get(LEXICAL_KEY) or {}).get("count"),
            "hybrid_fusion": m.get(FUSION_KEY),
            "query_latency_ms": m.get("query_latency_ms"),
            "index_bytes": m.get("index_bytes"), "created": m.get("created"), "updates": len(m.get("updates") or []),
        }


class Selection:
    """A subset of an index's live products (what a filter keeps), searchable by every mode.

    Built once per filter by :meth:`Retriever.select` and reused across queries (also by
    concurrent ones): the FAISS selector is made here, so no search can see it half made; the
    search parameters, the lexical weight mask and, for small selections of an index without
    a flat store, the selected vectors are made on first use and kept.
    :attr:`strategy` says how the last search was answered (``exact``, ``index`` or
    ``over-fetch``; see :meth:`search`).
    """

    def __init__(self, retriever: Retriever, slots_mask: np.ndarray) -> None:
        self.retriever = retriever
        self.mask = slots_mask
        self.slots = np.flatnonzero(slots_mask).astype(np.int64)
        self.strategy: str | None = None
        self._store = _flat_store(retriever.index)
        faiss = _faiss()
        # FAISS keeps a raw pointer to the bits: they live as long as the selection
        self._bits = np.packbits(slots_mask.astype(np.uint8), bitorder="little")
        self._selector = faiss.IDSelectorBitmap(len(slots_mask), faiss.swig_ptr(self._bits))
        self._vectors: np.ndarray | None = None
        self._lexical_mask: np.ndarray | None = None
        self._index_params: Any = None

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def product_ids(self) -> list[str]:
        return self.retriever.ids[self.slots].astype(str).tolist()

    def lexical_mask(self) -> np.ndarray:
        if self._lexical_mask is None:
            self._lexical_mask = self.retriever.lexical.mask(self.product_ids)
        return self._lexical_mask

    def search(self, vecs: np.ndarray, k: int) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top ``k`` selected products per query vector (strategy: :meth:`Retriever.search_vectors`)."""
        retriever, n = self.retriever, len(self.slots)
        if n == 0:
            return [[] for _ in range(len(vecs))], [np.zeros(0, np.float32) for _ in range(len(vecs))]
        k = min(k, n)
        store = self._store
        if store is not None and (store is retriever.index or n * retriever.dim <= EXACT_SCAN_BUDGET):
            self.strategy = "exact"
            return self._scan(store, vecs, k)
        params = self._search_params() if store is not None or n > EXACT_SELECTION_LIMIT else None
        if params is not None:
            self.strategy = "index"
            scores, slots = retriever.index.search(vecs, k, params=params)
            found = retriever._rows(scores, slots, k, self.mask)
            short = [i for i, ids in enumerate(found[0]) if len(ids) < k]
            if short and store is not None:  # the walk ran out of selected products near the query
                again = self._scan(store, vecs[short], k)
                for j, i in enumerate(short):
                    found[0][i], found[1][i] = again[0][j], again[1][j]
            return found
        self.strategy = "exact"
        if store is not None:  # the index's own search takes no selector
            return self._scan(store, vecs, k)
        vectors = self._selected_vectors()  # a small selection, or an index that takes no selector
        if vectors is not None:
            scores = vecs @ vectors.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return retriever._rows(np.take_along_axis(scores, top, 1), self.slots[top], k, None)
        self.strategy = "over-fetch"
        fetch, total = min(max(4 * k, k + retriever._tombstoned), int(retriever.index.ntotal)), int(retriever.index.ntotal)
        while True:
            scores, slots = retriever.index.search(vecs, fetch)
            found = retriever._rows(scores, slots, k, self.mask)
            if fetch >= total or all(len(ids) >= k for ids in found[0]):
                return found
            fetch = min(2 * fetch, total)

    def _scan(self, store: Any, vecs: np.ndarray, k: int) -> tuple[list[list[str]], list[np.ndarray]]:
        """Exact top ``k`` over the selected slots of a flat store (FAISS computes the inner
        products of the selected vectors only)."""
        faiss = _faiss()
        scores, slots = store.search(vecs, k, params=faiss.SearchParameters(sel=self._selector))
        return self.retriever._rows(scores, slots, k, self.mask)

    def _selected_vectors(self) -> np.ndarray | None:
        """The selection's stored vectors (None when the index cannot return them)."""
        if self._vectors is None:
            try:
                index = self.retriever.index
                if _uses_idmap(index):
                    self._vectors = np.vstack([index.reconstruct(int(s)) for s in self.slots])
                else:
                    self._vectors = index.reconstruct_batch(self.slots)
            except RuntimeError:
                return None
        return self._vectors

    def _search_params(self) -> Any:
        """FAISS SearchParameters carrying the selector, widened for the selection's share of
        the live products, or None (remembered as "unsupported") when the index type takes none."""
        if self._index_params is None:
            live = int((self.retriever.status == LIVE).sum())  # at least the selection's size
            widen = min(live / max(len(self.slots), 1), MAX_WIDENING)
            params = _params_with_selector(_faiss(), self.retriever.index, self._selector, widen)
            self._index_params = "unsupported" if params is None else params
        return None if self._index_params == "unsupported" else self._index_params


def _is_flat(index: Any) -> bool:
    return type(index).__name__ in ("IndexFlat", "IndexFlatIP", "IndexFlatL2")


def _flat_store(index: Any) -> Any:
    """The flat (exact) index holding ``index``'s vectors under their slots, or None.

    An IDMap over a flat index is its own store; HNSW keeps its vectors in a flat
    ``storage``, a refined index in its ``refine_index``; neither of those two ever deletes
    (removals are tombstones), so their rows are the slots."""
    faiss = _faiss()
    inner = faiss.downcast_index(index)
    name = type(inner).__name__
    if "IDMap" in name:
        return index if _is_flat(faiss.downcast_index(inner.index)) else None
    if _is_flat(inner):
        return inner
    part = getattr(inner, "storage", None) if "HNSW" in name else getattr(inner, "refine_index", None)
    if part is None:
        return None
    part = faiss.downcast_index(part)
    return part if _is_flat(part) else None


def _params_with_selector(faiss: Any, index: Any, selector: Any, widen: float = 1.0) -> Any:
    """SearchParameters of the right type for ``index`` (nested for IDMap/refine) with
    ``selector``, efSearch / nprobe multiplied by ``widen`` (nprobe at most every list)."""
    inner = faiss.downcast_index(index)
    name = type(inner).__name__
    if "IDMap" in name:
        return _params_with_selector(faiss, inner.index, selector, widen)
    if "Refine" in name:
        base = _params_with_selector(faiss, inner.base_index, selector, widen)
        if base is None:
            return None
        params = faiss.IndexRefineSearchParameters(k_factor=float(inner.k_factor), base_index_params=base)
        params.sel = selector
        params._base = base  # keep the nested parameters alive as long as the outer ones
        return params
    if "HNSW" in name:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=math.ceil(int(inner.hnsw.efSearch) * widen))
    if "IVF" in name:
        return faiss.SearchParametersIVF(sel=selector,
                                         nprobe=min(math.ceil(int(inner.nprobe) * widen), int(inner.nlist)))
    if _is_flat(inner):
        return faiss.SearchParameters(sel=selector)
    return None


def check_encoder(manifest: dict[str, Any], encoder: "BiEncoder", index_dir: Path | str) -> None:
    """Refuse a query encoder whose weights or dimension differ from the index's."""
    if manifest.get("dim") != encoder.dim:
        raise ArtifactError(f"{index_dir}: index dimension {manifest.get('dim')} != model dimension {encoder.dim} "
                            f"({encoder.path}); rebuild the index with this model")
    if manifest.get("model_id") and manifest["model_id"] != encoder.model_id:
        raise ArtifactError(f"{index_dir}: built with model {manifest['model_id'][:12]}… "
                            f"({manifest.get('model_path')}), not {encoder.model_id[:12]}… ({encoder.path}); "
                            "rebuild the index with this model")


def _save_updated(retriever: Retriever, index: Any, ids: np.ndarray, status: np.ndarray,
                  update: dict[str, Any], text_hashes: np.ndarray | None,
                  lexical: "BM25Retriever | None" = None) -> dict[str, Any]:
    """Write an updated copy of the index directory atomically and return its manifest
    (with ``lexical``, the updated lexical side, replacing the old one)."""
    faiss = _faiss()
    manifest = dict(retriever.manifest)
    if update["op"] == "add":  # the recorded catalog file no longer describes every indexed product
        manifest["inputs"] = {**(manifest.get("inputs") or {}), "catalog_sha256": None}
    with atomic_directory(retriever.index_dir) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        digest, stat = hash_file(tmp / INDEX_FILE)
        np.save(tmp / IDS_FILE, ids, allow_pickle=False)
        np.save(tmp / STATUS_FILE, status, allow_pickle=False)
        if text_hashes is not None:
            np.save(tmp / TEXT_HASHES_FILE, text_hashes, allow_pickle=False)
        if lexical is not None:
            manifest[LEXICAL_KEY] = _save_lexical(lexical, tmp)
        manifest.update(
            count=int(index.ntotal), live=int((status == LIVE).sum()), tombstoned=int((status == TOMBSTONED).sum()),
            removed=int((status == REMOVED).sum()), index_sha256=digest,
            index_bytes=(tmp / INDEX_FILE).stat().st_size,
            updates=[*(manifest.get("updates") or []), update],
        )
        write_manifest(tmp, manifest)
    remember_sha256(retriever.index_dir / INDEX_FILE, digest, stat)
    return manifest


def _remove_slots(index: Any, status: np.ndarray, slots: np.ndarray) -> str:
    """Delete slots physically where FAISS can (IDMap indexes), else tombstone them."""
    if len(slots) == 0:
        return "none"
    if _uses_idmap(index):
        index.remove_ids(np.asarray(slots, dtype=np.int64))
        status[slots] = REMOVED
        return "remove_ids"
    status[slots] = TOMBSTONED
    return "tombstone"


def _encoder_of(index_dir: str | os.PathLike[str]) -> Any:
    """The encoder the index's vectors were made with (per the manifest's ``encoded_with``), so
    added products are encoded like the ones already there. None (= the torch model that
    :meth:`Retriever.load` loads) when the index was built with torch."""
    from retrieval.encoders import TORCH_FP32, load_index_encoder

    recover_directory(index_dir)
    if not (Path(index_dir) / "manifest.json").is_file():
        return None  # Retriever.load says what is wrong
    manifest = read_manifest(Path(index_dir), kind=INDEX_KIND)
    encoded_with, path = str(manifest.get("encoded_with") or TORCH_FP32), manifest.get("model_path")
    if encoded_with == TORCH_FP32 or not path or not Path(path).is_dir():
        return None
    return load_index_encoder(path, str(manifest.get("model_id") or ""), encoded_with, torch_without_export=True)


@writes_output("index_dir", "index", parent_must_exist=True)
def add_products(index_dir: str | os.PathLike[str], catalog_df: "pd.DataFrame", encoder: "BiEncoder | None" = None,
                 *, batch_size: int = 64, show_progress: bool = True) -> dict[str, Any]:
    """Add (or replace) products in an existing index without a rebuild.

    A product id that is already live is replaced: its old slot is removed/tombstoned and
    the new text gets a new slot, so search never returns two versions of one product.
    """
    retriever = Retriever.load(index_dir, encoder or _encoder_of(index_dir), mmap=False)
    if "product_id" not in catalog_df.columns:
        raise DataError("catalog: missing column 'product_id'")
    new_ids = catalog_df["product_id"].astype(str).to_numpy()
    if len(set(new_ids.tolist())) != len(new_ids):
        raise DataError("product_id: duplicate ids in the products to add")
    assert retriever.encoder is not None
    fields = retriever.text_fields  # added products read like the ones already indexed
    from pipeline.data import product_text

    texts = product_text(catalog_df, fields)
    hashes_added = text_hashes(texts)
    vectors = retriever.encoder.encode_catalog(catalog_df, batch_size=batch_size, show_progress=show_progress,
                                               fields=fields)
    index, ids, status = retriever.index, retriever.ids.astype(str), retriever.status.copy()
    replace = np.flatnonzero(np.isin(ids, new_ids) & (status == LIVE))
    how = _remove_slots(index, status, replace)
    _add_vectors(index, vectors, len(ids))
    ids = np.concatenate([ids, new_ids.astype(str)])  # numpy widens the string dtype as needed
    status = np.concatenate([status, np.zeros(len(new_ids), dtype=np.int8)])
    hashes = (None if retriever.text_hashes is None
              else np.concatenate([retriever.text_hashes, hashes_added]))
    encoded_with = retriever.encoder.describe().get("encoded_with", "torch-fp32")
    lexical = (retriever.lexical.updated(add=list(zip(new_ids.tolist(), texts)))
               if retriever.has_lexical else None)
    return _save_updated(retriever, index, ids, status,
                         {"op": "add", "added": int(len(new_ids)), "replaced": int(len(replace)), "removal": how,
                          "encoded_with": encoded_with}, hashes, lexical)


@writes_output("index_dir", "index", parent_must_exist=True)
def remove_products(index_dir: str | os.PathLike[str], product_ids: Sequence[str]) -> dict[str, Any]:
    """Remove products by id: ``remove_ids`` where FAISS supports it, else tombstones."""
    retriever = Retriever.load(index_dir, load_encoder=False, mmap=False)
    wanted = np.asarray([str(p) for p in product_ids])
    ids, status = retriever.ids.astype(str), retriever.status.copy()
    live = status == LIVE
    missing = sorted(set(wanted.tolist()) - set(ids[live].tolist()))
    if missing:
        raise DataError(f"product_id: {len(missing)} id(s) not live in {index_dir} (e.g. {', '.join(missing[:3])})")
    slots = np.flatnonzero(np.isin(ids, wanted) & live)
    how = _remove_slots(retriever.index, status, slots)
    lexical = retriever.lexical.updated(remove=wanted.tolist()) if retriever.has_lexical else None
    return _save_updated(retriever, retriever.index, ids, status,
                         {"op": "remove", "removed": int(len(slots)), "removal": how}, retriever.text_hashes,
                         lexical)


@writes_output("index_dir", "index", parent_must_exist=True)
def compact_index(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Rebuild from the index's own stored vectors, dropping tombstones (no re-encoding)."""
    retriever = Retriever.load(index_dir, load_encoder=False, mmap=False)
    index = retriever.index
    live_slots = np.flatnonzero(retriever.status == LIVE)
    if len(live_slots) == 0:
        raise DataError(f"{index_dir}: no live products left to compact")
    try:  # IDMap2 maps slot -> row itself; other indexes never delete, so slot == row
        vectors = np.vstack([index.reconstruct(int(s)) for s in live_slots])
    except RuntimeError:
        raise ArtifactError(f"{index_dir}: this index type cannot return its vectors; rebuild it with build-index") from None
    m = retriever.manifest
    model = {k: m.get(k) for k in ("model_id", "model_path", "model_name")}
    return build_from_vectors(vectors, retriever.ids[live_slots].tolist(), index_dir,
                              index_type=m.get("index_type", "flat"),
                              factory=m.get("factory"), model=model,
                              catalog_fingerprint=m.get("catalog_fingerprint"),
                              text_hashes=None if retriever.text_hashes is None else retriever.text_hashes[live_slots],
                              catalog={k: v for k, v in (m.get("inputs") or {}).items() if k in ("catalog", "catalog_sha256")},
                              text_fields=m.get(TEXT_FIELDS_KEY),
                              lexical=retriever.lexical if retriever.has_lexical else None,
                              **(m.get("search_params") or {}))


@writes_output("index_dir", "index", parent_must_exist=True)
def record_fusion(index_dir: str | os.PathLike[str], record: dict[str, Any]) -> dict[str, Any]:
    """Write a fitted hybrid fusion (:func:`retrieval.hybrid.fit_fusion`) into the index manifest.

    Only ``manifest.json`` changes, and it is replaced atomically; the index files stay."""
    index_dir = Path(index_dir)
    recover_directory(index_dir)
    manifest = read_manifest(index_dir, kind=INDEX_KIND)
    if not isinstance(manifest.get(LEXICAL_KEY), dict):
        raise ArtifactError(f"{index_dir}: this index has no lexical side to fuse; rebuild it with --lexical")
    manifest[FUSION_KEY] = record
    write_manifest(index_dir, manifest)
    return manifest
