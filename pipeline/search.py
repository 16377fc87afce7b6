"""Two-stage search as a library object: retrieve top-N candidates, rerank, keep top-k.

:class:`TwoStageSearcher` is the one place the two stages meet at query time; the CLI's
``search``, the batch scorer and the evaluation all go through it, so the three can never
disagree about how a query is answered.

Determinism contract (batch scoring relies on it for exactly-once resume): the answer for
one query depends only on that query and the loaded artefacts, never on which other
queries happen to be scored alongside it. That is why :meth:`search_many` encodes and
reranks each query on its own (padding and BLAS blocking would otherwise make the float
results depend on the batch's composition). With int8 on ONNX Runtime, activations are
quantised with one scale per batch, so the same pair scored among other candidates (e.g.
``score_pairs`` of a subset, or a different ``candidates``) can differ by up to ~0.08 in
probability, enough to reorder a top 10 (``benchmarks/microbatch.py`` measures it); for a
given query, index and candidate count, results are still identical run to run. A cascade
keeps the contract: the student scores the query's candidates, the teacher its own top M of
them, both per query.

**Cascade** (``--rerank-cascade small:N,full:M``, :class:`CascadeSpec`): a distilled
student (:mod:`rerank.distill`) scores all N retrieved candidates; the full reranker (the
teacher) rescores only the student's top M. One list, one score scale: the first M results
are those M in the teacher's served order with the teacher's probabilities and blended
score, exactly as the teacher alone would rank that set; the other N-M follow in the
student's order with the student's probabilities, their blended scores shifted by one
constant per query so the best of them sits one unit below the teacher's lowest. Why not
merge the two models' scores: they come from different models standardised over different
lists, so a merged sort would let a student score outrank a teacher score for no reason the
teacher agrees with; the shift keeps ``score`` a ranking key whose order is the served order
(differences are meaningful within each part only). M >= N is the teacher alone, M = 0 the
student alone.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import (DEFAULT_CANDIDATES, DEFAULT_DATA_DIR, DEFAULT_INDEX_DIR, DEFAULT_PRECISION,
                             DEFAULT_RERANKER_DIR, DEFAULT_RETRIEVAL)
from pipeline.core.errors import ArtifactError, DataError, ShoprankError
from pipeline.core.text import PRODUCT_TEXT_FIELDS, recorded_text_fields, require_same_text_fields

#: Longer queries are cut (with a note) before encoding: real queries are a few words, and
#: both encoders truncate to a few dozen tokens anyway; cutting first keeps tokenisation cheap.
MAX_QUERY_CHARS = 512
CASCADE_PAIRING = ("--student and --rerank-cascade go together: the cascade needs a student and a student is "
                   "only used by a cascade")


@dataclass(frozen=True)
class CascadeSpec:
    """A parsed ``--rerank-cascade``: the student scores ``small`` candidates, the full
    reranker rescores the student's top ``full`` (0: the student alone)."""

    small: int
    full: int = 0

    def __str__(self) -> str:
        return f"small:{self.small},full:{self.full}"

    @classmethod
    def parse(cls, spec: str) -> CascadeSpec:
        """``"small:100,full:20"`` (or ``"small:100"``) -> CascadeSpec; anything else is a
        one-line :class:`ShoprankError` naming the flag."""
        def bad(why: str) -> ShoprankError:
            return ShoprankError(f"--rerank-cascade {spec!r}: {why}; expected e.g. small:100,full:20")

        stages: dict[str, int] = {}
        for part in str(spec).split(","):
            name, sep, value = part.strip().partition(":")
            if not sep or name not in ("small", "full"):
                raise bad(f"{part.strip()!r} is not small:N or full:M")
            if name in stages:
                raise bad(f"{name} is given twice")
            try:
                stages[name] = int(value)
            except ValueError:
                raise bad(f"{value!r} is not a whole number") from None
        if "small" not in stages:
            raise bad("the small (student) stage is missing")
        if stages["small"] < 1 or stages.get("full", 0) < 0:
            raise bad("small must be >= 1 and full >= 0")
        return cls(stages["small"], stages.get("full", 0))


def parse_cascade(spec: CascadeSpec | str | None) -> CascadeSpec | None:
    """A cascade spec from a flag or config value (None or empty: no cascade)."""
    if spec is None or isinstance(spec, CascadeSpec):
        return spec
    return CascadeSpec.parse(spec) if str(spec).strip() else None


@dataclass
class SearchHit:
    """One ranked product for one query (a row of the search table / scored Parquet)."""

    rank: int | None
    product_id: str
    title: str
    retrieval_score: float
    probs: dict[str, float] = field(default_factory=dict)
    score: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Flat dict with one ``p_<task>`` column per reranker task."""
        row: dict[str, Any] = {"rank": self.rank, "product_id": self.product_id, "title": self.title}
        row.update({f"p_{task}": value for task, value in self.probs.items()})
        row["score"] = self.score
        row["retrieval_score"] = self.retrieval_score
        return row


def clean_query(query: object) -> str:
    """Validate one query: strip it, refuse empty ones, cut over-long ones.

    Raises :class:`ShoprankError` (one line) for a missing or blank query, because "no
    query" has no meaningful answer; a very long query is still answered (cut to
    :data:`MAX_QUERY_CHARS`), since it is a real if odd user input.
    """
    if query is None or (isinstance(query, float) and np.isnan(query)):
        raise ShoprankError("query is missing")
    text = " ".join(str(query).split())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a command-line argument arrive as lone surrogates
        raise ShoprankError("query is not valid UTF-8 text; check the terminal's or the file's encoding") from None
    if not text:
        raise ShoprankError("query is empty (or only whitespace); type some words to search for")
    return text[:MAX_QUERY_CHARS]


class CatalogText:
    """What the searcher needs from a catalog: ids, titles and the reranker's product text.

    Product texts are built on demand for the candidates actually reranked (the template is
    :func:`pipeline.core.text.join_product_fields` over ``fields``, the ones the index and the
    reranker were built with), so opening a 100k-product catalog costs one columnar read,
    not 100k string joins.
    """

    def __init__(self, ids: list[str], columns: dict[str, list[Any]], source: str = "the catalog",
                 fields: Sequence[str] = PRODUCT_TEXT_FIELDS, origin: Any = None) -> None:
        """``origin``: the Parquet path or DataFrame the catalog came from, read again only
        when a filter needs columns beyond the product text."""
        self.source = source  # how messages name it: "catalog <path>" when read from a file
        self.origin = origin
        self._table: Any = None
        self.ids = ids
        self.columns = columns
        self.fields = tuple(fields)
        self.titles = ["" if t is None else str(t) for t in columns["title"]]

    @classmethod
    def from_frame(cls, frame: Any, source: str = "the catalog",
                   fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> CatalogText:
        """From a validated catalog DataFrame (library callers already hold one)."""
        from pipeline.data import product_text_fields

        columns = product_text_fields(frame, fields)
        columns.setdefault("title", frame["title"].tolist())
        return cls(frame["product_id"].astype(str).tolist(), columns, source, fields, origin=frame)

    @classmethod
    def read(cls, path: Path, fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> CatalogText:
        """Read a catalog file. A Parquet file in the canonical schema is read with pyarrow
        alone (the cold search path avoids importing pandas); anything else goes through
        :func:`pipeline.data.load_dataset` and its validation."""
        if not path.is_file():
            raise ArtifactError(
                f"{path}: catalog not found (the reranker needs product text); pass --catalog "
                "or run `pipeline demo` first"
            )
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                names = set(pq.read_schema(path).names)
                if {"product_id", "title"} <= names:
                    wanted = list(dict.fromkeys(["product_id", "title", *[c for c in fields if c in names]]))
                    table = pq.ParquetFile(path).read(columns=wanted)  # not read_table: it imports pandas
                    n = table.num_rows
                    columns = {c: table.column(c).to_pylist() if c in names else [None] * n
                               for c in dict.fromkeys(["title", *fields])}
                    ids = [str(p) for p in table.column("product_id").to_pylist()]
                    # Only a catalog the validating loader would accept unchanged takes this
                    # path; anything else goes there, so every command refuses the same rows.
                    if (all(isinstance(t, str) and t.strip() for t in columns["title"])
                            and all(p.strip() and p == p.strip() for p in ids) and "None" not in ids
                            and len(set(ids)) == n
                            and all(c in names or c in PRODUCT_TEXT_FIELDS for c in fields)):
                        return cls(ids, columns, f"catalog {path}", fields, origin=path)
            except (OSError, ValueError):
                pass  # let the validating loader produce the one-line error
        from pipeline.data import load_dataset

        return cls.from_frame(load_dataset(catalog=path).catalog, f"catalog {path}", fields)

    def table(self) -> Any:
        """Every catalog column as a pyarrow Table in :attr:`ids` order, typed as stored
        (the Parquet schema), for filters; read on first use."""
        if self._table is None:
            import pyarrow as pa

            if isinstance(self.origin, Path):
                import pyarrow.parquet as pq

                table = pq.ParquetFile(self.origin).read()
            elif self.origin is not None:
                table = pa.Table.from_pandas(self.origin, preserve_index=False)
            else:
                table = pa.table({"product_id": self.ids, **self.columns})
            if [str(p) for p in table.column("product_id").to_pylist()] != self.ids:
                raise ArtifactError(f"{self.source}: changed while it was being read; search again")
            self._table = table
        return self._table

    def text(self, row: int) -> str:
        """Product text of one catalog row."""
        from pipeline.core.text import join_product_fields

        return join_product_fields([self.columns[c][row] for c in self.fields])


class TwoStageSearcher:
    """Bi-encoder/FAISS recall followed by the multi-task cross-encoder rerank.

    Without a reranker (``reranker=None``) it returns retrieval order and leaves the
    probability columns empty; :attr:`reranked` tells callers which case they got.

    The ranking ``score`` blends the reranker's fused task score with the retrieval score
    (:func:`rerank.fusion.blend`, per-query z-scores) by the weight fitted on the valid split
    and recorded in the reranker's manifest; the ``p_<task>`` columns are the model's own.

    With a ``student`` and a ``cascade`` the student reranks first and ``reranker`` (the full
    model) only the student's top ``cascade.full`` (module docstring); each model blends with
    its own fitted weight.
    """

    def __init__(self, retriever: Any, reranker: Any | None, catalog: Any, *,
                 weights: Mapping[str, float] | None = None, retrieval_weight: float | None = None,
                 catalog_verified: bool = False, retrieval: str = DEFAULT_RETRIEVAL,
                 allow_catalog_change: bool = False, student: Any | None = None,
                 cascade: CascadeSpec | str | None = None) -> None:
        """``catalog``: a :class:`CatalogText` or a catalog DataFrame. ``retrieval_weight``
        overrides the reranker manifest's fitted blend weight (0 = reranker order alone).
        ``catalog_verified``: the caller has checked that the catalog is the very file the index
        was built from, so the per-product text check can be skipped. ``retrieval``: the
        first stage, ``dense``, ``lexical`` or ``hybrid`` (:mod:`retrieval.hybrid`).
        ``allow_catalog_change``: skip the check that the catalog's product text is the one
        indexed (a deliberate, e.g. price-only or typo-fix, change; rankings then use the old
        text's vectors). ``student``, ``cascade``: an optional second, cheaper reranker and
        the :class:`CascadeSpec` that says how the two share a query's candidates."""
        from rerank.fusion import retrieval_weight as manifest_weight
        from retrieval.hybrid import check_mode

        self.retrieval = check_mode(retrieval)
        require_lexical(retrieval, getattr(retriever, "has_lexical", False),
                        getattr(retriever, "index_dir", "the index"))
        self._selections: dict[tuple[Any, ...], Any] = {}
        self.retriever = retriever
        self.reranker = reranker
        self.student = student
        self.cascade = check_cascade(parse_cascade(cascade), reranker, student)
        def weight_of(model: Any | None) -> float:
            if retrieval_weight is not None:
                return float(retrieval_weight)
            return manifest_weight(getattr(model, "manifest", None)) if model is not None else 0.0

        self.retrieval_weight = weight_of(reranker)
        self.student_retrieval_weight = weight_of(student)
        if not 0.0 <= self.retrieval_weight <= 1.0:
            raise ShoprankError(f"retrieval weight must lie in [0, 1], got {self.retrieval_weight}")
        self.backend = "torch" if getattr(reranker or student or retriever.encoder, "needs_torch", True) else "onnx"
        self.precision = getattr(reranker or student, "precision", "fp32")
        self.weights = dict(weights) if weights else None
        fields = searcher_text_fields(getattr(retriever, "manifest", None), getattr(reranker, "manifest", None),
                                      getattr(retriever, "index_dir", "the index"))
        if student is not None:
            fields = searcher_text_fields(getattr(retriever, "manifest", None), getattr(student, "manifest", None),
                                          getattr(retriever, "index_dir", "the index"), "--student")
        if not isinstance(catalog, CatalogText):
            catalog = CatalogText.from_frame(catalog, fields=fields)
        elif catalog.fields != fields:
            raise ArtifactError(f"{catalog.source} was read for product text fields {','.join(catalog.fields)}, "
                                f"but the index uses {','.join(fields)}")
        self.catalog = catalog
        self._row = {pid: i for i, pid in enumerate(self.catalog.ids)}
        self._titles = self.catalog.titles
        missing = [pid for pid in getattr(retriever, "catalog_ids", []) if pid not in self._row]
        if missing:
            raise ArtifactError(
                f"catalog does not match the index: product {missing[0]!r} is in the index but "
                "not in the catalog; pass the catalog the index was built from"
            )
        if not (catalog_verified or allow_catalog_change):
            self._check_catalog_text(retriever)

    def _check_catalog_text(self, retriever: Any) -> None:
        """Refuse a catalog whose product text differs from the text the index encoded.

        Why: retrieval ranks by vectors of the old text while the reranker and the output
        show the new one, so a replaced catalog gives confident nonsense with exit 0.
        """
        from pipeline.core.text import text_hash

        indexed = getattr(retriever, "live_text_hashes", lambda: None)()
        if not indexed:
            return
        for pid, digest in indexed:
            if text_hash(self.catalog.text(self._row[pid])) != digest:
                manifest = getattr(retriever, "manifest", {}) or {}
                raise ArtifactError(
                    f"{self.catalog.source} does not match index {getattr(retriever, 'index_dir', '')} "
                    f"(built from a catalog with fingerprint {manifest.get('catalog_fingerprint')}; product "
                    f"{pid!r} has changed since); rebuild the index, pass the catalog it was built from, "
                    "or pass --allow-catalog-change")

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, index_dir: str | os.PathLike[str] = DEFAULT_INDEX_DIR,
             reranker: str | os.PathLike[str] | None = DEFAULT_RERANKER_DIR, *,
             catalog: str | os.PathLike[str] | None = None, backend: str = "auto",
             precision: str = DEFAULT_PRECISION, weights: Mapping[str, float] | None = None,
             warn: bool = True, reranker_required: bool | None = None, retrieval: str = DEFAULT_RETRIEVAL,
             allow_catalog_change: bool = False, student: str | os.PathLike[str] | None = None,
             cascade: CascadeSpec | str | None = None) -> TwoStageSearcher:
        """Load the index (and its query encoder), the reranker and the catalog.

        ``backend``: ``"onnx"`` runs both encoders on ONNX Runtime from their exports
        (``pipeline export-onnx``) and never imports torch; ``"torch"`` runs the PyTorch
        models; ``"auto"`` (default) is ONNX when each stage's own "auto"
        (:func:`retrieval.encoders.choose_backend`, :func:`rerank.loading.choose_backend`) is,
        so both stages always run on one runtime. ``precision`` is the reranker's: ``"int8"``,
        ``"fp32"`` or ``"auto"`` (torch int8 = dynamic quantisation).

        A missing reranker at the *default* path is not an error (the user may not have
        trained one yet): the searcher says so on stderr and ranks by retrieval score.
        A reranker path given explicitly must exist (``reranker_required``: whether the user
        named it; None = any path but the default). ``catalog`` defaults to the catalog
        recorded in the index manifest, then ``data/sample/catalog.parquet``; a catalog whose
        products differ from the ones indexed is refused (unless ``allow_catalog_change``).
        ``retrieval``: see :meth:`__init__`; checked before any model loads.
        ``student``: a distilled reranker folder for ``cascade`` (:class:`CascadeSpec` or its
        string); it must exist, share the index's text fields, and loads on the same backend.
        """
        from pipeline.core.artifacts import file_has_sha256, read_manifest
        from pipeline.core.onnx import check_choices, has_export
        from rerank.loading import choose_backend as reranker_backend
        from rerank.loading import load_reranker
        from retrieval.encoders import choose_backend as retriever_backend
        from retrieval.encoders import load_encoder
        from retrieval.index import INDEX_KIND, LEXICAL_KEY, Retriever

        from retrieval.hybrid import check_mode

        check_choices(backend, precision)
        check_mode(retrieval)
        cascade = parse_cascade(cascade)
        if (student is None) != (cascade is None):
            raise ShoprankError(CASCADE_PAIRING)
        spath = Path(student) if student is not None else None
        if spath is not None and not (spath / "manifest.json").is_file():
            raise ArtifactError(f"{spath}: no trained reranker here (no manifest.json); distil one with "
                                "`pipeline distill-reranker`")
        index_path = Path(index_dir)
        if not (index_path / "manifest.json").is_file():
            raise ArtifactError(
                f"{index_path}: no index here; build one with `pipeline build-index` or run `pipeline demo`"
            )
        index_manifest = read_manifest(index_path, kind=INDEX_KIND)
        require_lexical(retrieval, isinstance(index_manifest.get(LEXICAL_KEY), dict), index_path)
        model_path = Path(str(index_manifest.get("model_path") or ""))
        rpath = Path(reranker) if reranker is not None else None
        has_reranker = rpath is not None and (rpath / "manifest.json").is_file()
        # Refused before any model loads: the reranker would score text the index never encoded.
        fields = searcher_text_fields(index_manifest, read_manifest(rpath) if has_reranker else None, index_path,
                                      rpath)
        if spath is not None:
            searcher_text_fields(index_manifest, read_manifest(spath), index_path, spath)
        if reranker_required is None:
            reranker_required = rpath != Path(DEFAULT_RERANKER_DIR)
        if rpath is not None and not has_reranker:
            if reranker_required:
                raise ArtifactError(f"{rpath}: no trained reranker here (no manifest.json)")
            if warn and spath is None:
                sys.stderr.write(
                    f"note: no trained reranker at {rpath}; returning retrieval order "
                    "(train one with `pipeline train-reranker` or run `pipeline demo`)\n"
                )
        if backend == "auto":
            stages = [retriever_backend(model_path)[0], *([reranker_backend(rpath)[0]] if has_reranker else []),
                      *([reranker_backend(spath)[0]] if spath is not None else [])]
            backend = "onnx" if all(stage == "onnx" for stage in stages) else "torch"
            broken = [p / "onnx" for p in (model_path, rpath if has_reranker else None, spath)
                      if p is not None and (p / "onnx").is_dir() and not has_export(p)]
            if broken and warn:
                sys.stderr.write(f"note: {broken[0]} has no manifest.json (an interrupted export?); running the "
                                 "slower PyTorch models; re-run `pipeline export-onnx` to use ONNX Runtime\n")
        backend, precision = reranker_backend(rpath if has_reranker else spath, backend, precision)
        cat_path = Path(catalog) if catalog else _catalog_from_manifest(index_manifest, index_path)
        recorded_sha = (index_manifest.get("inputs") or {}).get("catalog_sha256")
        catalog_verified = bool(recorded_sha) and file_has_sha256(cat_path, recorded_sha)
        if backend == "onnx":
            from concurrent.futures import ThreadPoolExecutor

            from pipeline.core.runtime import import_faiss

            import_faiss(with_torch=False)  # settles the import order: this process never loads torch
            import onnxruntime  # noqa: F401  (imported here, not racing inside the worker threads)
            import pyarrow.parquet  # noqa: F401
            import tokenizers  # noqa: F401
            # The loads overlap: ORT session set-up, faiss and pyarrow reads and hashing release the GIL.
            with ThreadPoolExecutor(max_workers=3) as pool:
                # Query vectors stay fp32 whatever the precision: one short query is cheap to
                # encode, and int8 query vectors cost ranking quality (benchmarks/search_speed.py).
                encoder_job = pool.submit(load_encoder, model_path, "onnx", "fp32",
                                          model_id=str(index_manifest.get("model_id") or ""))
                model_job = pool.submit(load_reranker, rpath, "onnx", precision) if has_reranker else None
                student_job = pool.submit(load_reranker, spath, "onnx", precision) if spath is not None else None
                catalog_job = pool.submit(CatalogText.read, cat_path, fields)
                retriever = Retriever.load(index_path, load_encoder=False).use_encoder(encoder_job.result())
                model: Any = model_job.result() if model_job else None
                small: Any = student_job.result() if student_job else None
                catalog_text = catalog_job.result()
        else:
            retriever = Retriever.load(index_path)
            model = load_reranker(rpath, "torch", precision) if has_reranker else None  # type: ignore[arg-type]
            small = load_reranker(spath, "torch", precision) if spath is not None else None
            catalog_text = CatalogText.read(cat_path, fields)
        searcher = cls(retriever, model, catalog_text, weights=weights, catalog_verified=catalog_verified,
                       retrieval=retrieval, allow_catalog_change=allow_catalog_change, student=small,
                       cascade=cascade)
        searcher.backend, searcher.precision = backend, precision
        return searcher

    # ---------------------------------------------------------------- properties
    @property
    def reranked(self) -> bool:
        """True when a cross-encoder reranks the candidates."""
        return self.reranker is not None or self.student is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        """Reranker tasks (probability columns); empty without a reranker."""
        model = self.reranker if self.reranker is not None else self.student
        return tuple(model.tasks) if model is not None else ()

    def manifest_ids(self) -> dict[str, str]:
        """Ids of the artefacts that produce the scores (written into outputs for provenance)."""
        ids = {"index": str(self.retriever.manifest.get("id", "")),
               "retriever_model": str(getattr(self.retriever.encoder, "model_id", ""))}
        if self.reranker is not None:
            ids["reranker"] = str(self.reranker.manifest.get("id", ""))
            ids["fusion"] = f"retrieval_weight={self.retrieval_weight:g}"
        if self.student is not None:
            ids["student"] = str(self.student.manifest.get("id", ""))
            ids["student_fusion"] = f"retrieval_weight={self.student_retrieval_weight:g}"
            ids["cascade"] = str(self.cascade)
        ids["backend"] = f"{self.backend}-{self.precision}"
        if self.retrieval != "dense":
            method, weight = self.retriever.fusion()
            ids["retrieval"] = self.retrieval if self.retrieval == "lexical" else f"hybrid-{method}-{weight:g}"
        return ids

    def has_product(self, product_id: str) -> bool:
        """Whether the catalog knows this product (the reranker needs its text)."""
        return product_id in self._row

    def title(self, product_id: str) -> str:
        """Title of a catalog product ("" if unknown)."""
        row = self._row.get(product_id)
        return self._titles[row] if row is not None else ""

    # ---------------------------------------------------------------- scoring
    def _rerank(self, query: str, product_ids: Sequence[str], retrieval_scores: np.ndarray | None = None,
                *, small: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Task probabilities (n, tasks) and ranking scores (n,) for one query's products by
        the full reranker (``small``: the student): the fused task score, blended with
        ``retrieval_scores`` when given, by that model's own fitted weight."""
        from rerank.fusion import blend, fuse

        model, weight = ((self.student, self.student_retrieval_weight) if small
                         else (self.reranker, self.retrieval_weight))
        texts = [self.catalog.text(self._row[pid]) for pid in product_ids]
        probs = np.asarray(model.predict([query] * len(texts), texts), dtype=np.float32)
        scores = np.asarray(fuse(probs, self.tasks, self.weights), dtype=np.float64)
        if retrieval_scores is not None and weight > 0.0:
            scores = blend(scores, retrieval_scores, 1.0 - weight)
        return probs, scores

    def _score(self, query: str, product_ids: Sequence[str],
               retrieval_scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_rerank` by the full reranker, or the cascade when there is one (module
        docstring): the student scores every product, the full model rescores the student's
        top ``cascade.full``, which it sees in the given (retrieval) order, so with
        ``full >= n`` its scores are exactly the full model's alone; the rest keep the
        student's scores, shifted to sit below them."""
        if self.cascade is None:
            return self._rerank(query, product_ids, retrieval_scores)
        probs, scores = self._rerank(query, product_ids, retrieval_scores, small=True)
        top = min(self.cascade.full, len(product_ids))
        if top == 0:
            return probs, scores
        ranked = sorted(range(len(product_ids)), key=lambda i: (-scores[i], i))
        head, tail = sorted(ranked[:top]), ranked[top:]
        head_probs, head_scores = self._rerank(query, [product_ids[i] for i in head],
                                               None if retrieval_scores is None else retrieval_scores[head])
        probs, out = probs.copy(), scores.copy()
        probs[head], out[head] = head_probs, head_scores
        if tail:
            out[tail] = scores[tail] + (head_scores.min() - scores[tail].max() - 1.0)
        return probs, out

    def search(self, query: str, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
               filters: Sequence[str] | str | None = None) -> list[SearchHit]:
        """Top-k products for one query (see :meth:`search_many`)."""
        return self.search_many([query], k=k, candidates=candidates, filters=filters)[0]

    def selection(self, filters: Sequence[str] | str | None) -> Any:
        """The index selection of the catalog products matching every filter (None: no filter).

        Filters are typed by the catalog's columns (:mod:`pipeline.data.filters`); a bad one
        is a one-line DataError. Selections are kept per filter set, so batch scoring with
        one filter repeated over many queries builds it once."""
        if not filters:
            return None
        from pipeline.data.filters import filter_mask, parse_filters

        parsed = parse_filters(filters)
        if not parsed:
            return None
        key = tuple(sorted(f.spec for f in parsed))
        if key not in self._selections:
            mask = filter_mask(parsed, self.catalog.table())
            self._selections[key] = self.retriever.select(np.asarray(self.catalog.ids)[mask])
        return self._selections[key]

    def search_many(self, queries: Sequence[str], k: int = 10, candidates: int = DEFAULT_CANDIDATES,
                    filters: Sequence[str] | str | None = None) -> list[list[SearchHit]]:
        """Top-k products per query: retrieve ``candidates``, rerank them, keep ``k``.

        Each query is retrieved and reranked on its own (determinism contract above).
        Ties in the fused score are broken by retrieval rank, so the order is total.
        ``filters`` (e.g. ``["category=Sofas", "price<=500"]``) restrict retrieval to the
        matching products, so all ``k`` results match.
        """
        if k < 1 or candidates < 1:
            raise ShoprankError(f"k and candidates must be >= 1 (got k={k}, candidates={candidates})")
        if self.cascade is not None:
            candidates = self.cascade.small  # the cascade's N is the retrieval depth
        candidates = max(candidates, k) if self.reranked else k
        where = self.selection(filters)
        options: dict[str, Any] = {}
        if self.retrieval != "dense":
            options["mode"] = self.retrieval
        if where is not None:
            options["where"] = where
        results = []
        for raw in queries:
            query = clean_query(raw)
            ids_list, scores_list = self.retriever.search([query], k=candidates, **options)
            ids = [str(p) for p in ids_list[0]]
            rscores = np.asarray(scores_list[0], dtype=np.float64)[: len(ids)]
            if not self.reranked or not ids:
                results.append([SearchHit(i + 1, pid, self.title(pid), float(s), {}, float(s))
                                for i, (pid, s) in enumerate(zip(ids[:k], rscores))])
                continue
            probs, fused = self._score(query, ids, rscores)
            order = sorted(range(len(ids)), key=lambda i: (-fused[i], i))[:k]
            results.append([
                SearchHit(rank, ids[i], self.title(ids[i]), float(rscores[i]),
                          {t: float(probs[i, j]) for j, t in enumerate(self.tasks)}, float(fused[i]))
                for rank, i in enumerate(order, 1)
            ])
        return results

    def score_pairs(self, query: str, product_ids: Sequence[str]) -> list[SearchHit]:
        """Rerank scores for given (query, product) pairs, in the given order (no retrieval).

        Unknown product ids are a :class:`DataError`, since a score for a product the model
        has no text for would be made up. Given pairs have no retrieval score, so ``score``
        is the reranker's fused score without the first-stage blend. A cascade treats the
        given products as the candidate list (the full model rescores the student's top M).
        """
        if not self.reranked:
            raise ArtifactError("scoring given (query, product_id) pairs needs a trained reranker")
        query = clean_query(query)
        unknown = [p for p in product_ids if p not in self._row]
        if unknown:
            raise DataError(f"product_id {unknown[0]!r} is not in the catalog")
        probs, fused = self._score(query, list(product_ids))
        return [SearchHit(None, pid, self.title(pid), float("nan"),
                          {t: float(probs[i, j]) for j, t in enumerate(self.tasks)}, float(fused[i]))
                for i, pid in enumerate(product_ids)]


def require_lexical(retrieval: str, has_lexical: bool, index: Any) -> None:
    """Refuse lexical or hybrid retrieval on an index built without its lexical side, in one line."""
    if retrieval != "dense" and not has_lexical:
        raise ArtifactError(f"{index}: no lexical index for --retrieval {retrieval}; rebuild it with "
                            "`pipeline build-index --lexical`")


def check_cascade(cascade: CascadeSpec | None, reranker: Any | None, student: Any | None) -> CascadeSpec | None:
    """Refuse a cascade its models cannot run: one without a student, a student without a
    cascade, a full stage without the full reranker, or two models predicting different tasks."""
    if (cascade is None) != (student is None):
        raise ShoprankError(CASCADE_PAIRING)
    if cascade is None:
        return None
    if cascade.full > 0 and reranker is None:
        raise ArtifactError(f"--rerank-cascade {cascade}: the full stage needs the full reranker (--reranker); "
                            "use small:N alone for the student by itself")
    if reranker is not None and tuple(reranker.tasks) != tuple(student.tasks):
        raise ArtifactError(f"--student predicts tasks {list(student.tasks)}, the reranker {list(reranker.tasks)}; "
                            "a cascade needs the same tasks (distil the student from this reranker)")
    return cascade


def searcher_text_fields(index_manifest: Mapping[str, Any] | None, reranker_manifest: Mapping[str, Any] | None,
                         index_dir: Any, reranker_dir: Any = None) -> tuple[str, ...]:
    """The product text fields of a searcher: the index's, which a reranker must share.

    Why refuse a difference rather than use each artefact's own: the catalog check compares
    the index's text hashes while the reranker scores its own text, so a pair built on
    different fields could pass one and silently disagree on the other.
    """
    indexed = recorded_text_fields(index_manifest)
    if reranker_manifest is None:
        return indexed
    name = f"reranker {reranker_dir}" if reranker_dir is not None else "the reranker"
    return require_same_text_fields(recorded_text_fields(reranker_manifest), name, indexed, f"index {index_dir}")


def _catalog_from_manifest(manifest: Mapping[str, Any], index_dir: Path | None = None) -> Path:
    """The catalog path an index records (if it still exists), else the sample default.

    A relative recorded path is relative to the index directory
    (:func:`retrieval.index.recorded_catalog_path`), so a moved project keeps working."""
    inputs = manifest.get("inputs", {}) if isinstance(manifest, Mapping) else {}
    for key in ("catalog", "catalog_path"):
        value = inputs.get(key) or manifest.get(key)
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() or index_dir is None else Path(index_dir) / value
            if path.is_file():
                return path
    return Path(DEFAULT_DATA_DIR) / "catalog.parquet"


def run_search(queries: Sequence[str], *, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
               index_dir: str | os.PathLike[str] = DEFAULT_INDEX_DIR,
               reranker: str | os.PathLike[str] | None = DEFAULT_RERANKER_DIR,
               catalog: str | os.PathLike[str] | None = None, weights: Mapping[str, float] | None = None,
               backend: str = "auto", precision: str = DEFAULT_PRECISION,
               reranker_required: bool | None = None, retrieval: str = DEFAULT_RETRIEVAL,
               filters: Sequence[str] | None = None, allow_catalog_change: bool = False,
               student: str | os.PathLike[str] | None = None, cascade: CascadeSpec | str | None = None) -> dict[str, Any]:
    """Load the searcher once and answer several queries (what `pipeline search` prints).

    Queries and filters are validated *before* any model is loaded, so a blank query or a
    malformed filter fails in milliseconds with a one-line error instead of after a model load.
    """
    if not queries:
        raise ShoprankError("no query given; pass a query or --queries-file")
    if filters:
        from pipeline.data.filters import parse_filters

        parse_filters(filters)
    cascade = parse_cascade(cascade)
    cleaned = [clean_query(q) for q in queries]
    truncated = [i for i, q in enumerate(queries) if len(" ".join(str(q).split())) > MAX_QUERY_CHARS]
    searcher = TwoStageSearcher.load(index_dir, reranker, catalog=catalog, backend=backend, precision=precision,
                                     weights=weights, reranker_required=reranker_required, retrieval=retrieval,
                                     allow_catalog_change=allow_catalog_change, student=student, cascade=cascade)
    hits = searcher.search_many(cleaned, k=k, candidates=candidates, filters=filters)
    return {
        "reranked": searcher.reranked, "tasks": list(searcher.tasks), "models": searcher.manifest_ids(),
        **({"retrieval": searcher.retrieval} if searcher.retrieval != DEFAULT_RETRIEVAL else {}),
        **({"filters": list(filters)} if filters else {}),
        "results": [{"query": q, "truncated": i in truncated, "hits": [h.as_dict() for h in row]}
                    for i, (q, row) in enumerate(zip(cleaned, hits))],
    }
