"""Evaluation of every stage on one split: baselines, the fine-tuned retriever, two-stage.

Systems (each ranks the whole catalog for every query of the split):

* ``bm25``               lexical baseline (bm25s) — the floor any learned model must beat;
* ``dense-zero-shot``    the bundled MiniLM, not fine-tuned — shows what training buys;
* ``dense-fine-tuned``   the index at ``index_dir`` (the trained retriever);
* ``two-stage``          that retriever's top ``candidates`` reranked by the cross-encoder;
* ``oracle-rerank``      that retriever's top ``candidates`` sorted by their true grade: the
  best any reranker of those candidates could do. Its gap to ``dense-fine-tuned`` is the
  headroom stage 2 has; a world or dataset with little headroom cannot show a reranker's worth;
* ``lexical``            the index's own BM25 side (same text as its vectors);
* ``hybrid``             the index's dense and lexical sides fused as its manifest records;
* ``two-stage-hybrid``   the hybrid top ``candidates`` reranked (the served order with
  ``--retrieval hybrid``).

The last three need an index with a lexical side and are left out (with a note) without one.
Each is scored overall, on the **vocabulary-mismatch** queries (no content word shared
with any relevant product), where lexical matching fails by construction, and on the
**brand-model** queries (naming a catalog brand or a model-like token), where it should win. Every system's
run is also written as a TREC run file (query ids as keys) next to a TREC qrels file, so
the numbers can be re-checked with trec_eval / ir-measures — evaluation here is a separate
step over run files, as in pyserini. Metrics come only from :mod:`pipeline.core.metrics`.

The reranker additionally gets per-task engagement metrics: ROC AUC of p(click),
p(add_to_cart), p(purchase) against whether that event happened for the split's logged
(query, product) impressions.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DEFAULT_CANDIDATES, DEFAULT_INDEX_DIR, DEFAULT_RERANKER_DIR, DEFAULT_SEED, EVAL_SYSTEMS
from pipeline.core.errors import DataError, ShoprankError
from pipeline.core.tasks import COUNT_COLUMNS
from pipeline.core.metrics import (DEFAULT_MEASURES, aggregate, auc, paired_bootstrap, per_query, write_trec_qrels,
                                   write_trec_run)

SYSTEMS = EVAL_SYSTEMS
#: Systems that read the index's lexical side.
LEXICAL_SYSTEMS = ("lexical", "hybrid", "two-stage-hybrid")
# Paired comparisons reported with a bootstrap interval: (system, the system it must beat).
PAIRED_AGAINST = (("two-stage", "dense-fine-tuned"), ("dense-fine-tuned", "dense-zero-shot"),
                  ("dense-zero-shot", "bm25"), ("hybrid", "dense-fine-tuned"), ("two-stage-hybrid", "two-stage"))
PAIRED_MEASURE = "nDCG@10"
Ranker = Callable[[list[str]], tuple[list[list[str]], list[Sequence[float]]]]


def _engagement_metrics(reranker: Any, catalog: Any, engagement: Any, queries: set[str],
                        max_pairs: int, seed: int, weights: Any = None) -> list[dict[str, Any]]:
    """Per-task ROC AUC of the reranker's probabilities on the split's logged impressions."""
    from pipeline.core.text import recorded_text_fields
    from pipeline.data import product_text
    from rerank.fusion import fuse

    rows = engagement[engagement["query"].isin(queries) & (engagement["impressions"] > 0)]
    rows = rows[rows["product_id"].astype(str).isin(set(catalog["product_id"].astype(str)))]
    if len(rows) > max_pairs:  # a fixed, seeded sample keeps evaluation time bounded
        rows = rows.sample(n=max_pairs, random_state=seed)
    if rows.empty:
        return []
    texts = dict(zip(catalog["product_id"].astype(str), product_text(catalog, recorded_text_fields(reranker.manifest))))
    probs = np.asarray(reranker.predict(rows["query"].astype(str).tolist(),
                                        [texts[str(p)] for p in rows["product_id"]]), dtype=np.float32)
    tasks = list(reranker.tasks)
    fused = fuse(probs, tasks, weights)
    out = []
    for j, task in enumerate(tasks):
        labels = (rows[COUNT_COLUMNS[task]].to_numpy() > 0).astype(int)
        out.append({"task": task, "pairs": int(len(rows)), "positives": int(labels.sum()),
                    "auc": auc(labels, probs[:, j]), "auc_fused_score": auc(labels, fused),
                    "mean_p": float(probs[:, j].mean()), "observed_rate": float(labels.mean())})
    return out


def _dense_zero_shot(catalog: Any, workdir: Path, fields: Sequence[str]) -> Any:
    """A flat index over the catalog's ``fields`` with the bundled, untrained MiniLM."""
    from retrieval.encoders import load_encoder
    from retrieval.index import Retriever, build_index

    encoder = load_encoder(None, "torch")
    build_index(catalog, encoder, workdir / "zero-shot", index_type="flat", show_progress=False, text_fields=fields)
    return Retriever.load(workdir / "zero-shot", encoder=encoder)


def evaluate(data_dir: str | os.PathLike[str] | None = None, *, dataset: Any = None,
             catalog: str | os.PathLike[str] | None = None, queries: str | os.PathLike[str] | None = None,
             qrels: str | os.PathLike[str] | None = None, engagement: str | os.PathLike[str] | None = None,
             split: str = "test", index_dir: str | os.PathLike[str] = DEFAULT_INDEX_DIR,
             reranker: str | os.PathLike[str] | None = DEFAULT_RERANKER_DIR,
             run_dir: str | os.PathLike[str] | None = None, systems: Sequence[str] = SYSTEMS,
             candidates: int = DEFAULT_CANDIDATES, depth: int = 100, measures: Sequence[str] = DEFAULT_MEASURES,
             max_engagement_pairs: int = 2000, seed: int = DEFAULT_SEED,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate the requested systems on ``split``; returns a JSON-able report.

    ``progress`` receives one line per step (model loading, each system), because a full
    evaluation takes minutes on CPU and silence looks like a hang.

    ``report["rows"]`` is the table (one row per system x subset with each measure);
    ``report["tasks"]`` the reranker's per-task engagement metrics; ``report["run_files"]``
    the TREC run files written to ``run_dir`` (a temporary directory if None, removed after).
    """
    from pipeline.data import brand_model_queries, load_dataset, qrels_dict, vocabulary_mismatch_queries

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ShoprankError(f"unknown system {unknown[0]!r}; choose from {', '.join(SYSTEMS)}")
    ds = dataset or load_dataset(data_dir, catalog=catalog, queries=queries, qrels=qrels, engagement=engagement)
    if ds.queries is None or ds.qrels is None:
        raise DataError(f"{data_dir or 'evaluation data'}: needs queries and qrels (queries.parquet, qrels.parquet)")
    split_df = ds.queries[ds.queries["split"] == split] if split != "all" else ds.queries
    if split_df.empty:
        raise DataError(f"queries: no queries in split {split!r} (splits: {sorted(ds.queries['split'].unique())})")
    qid_of: dict[str, str] = {}
    for qid, text in split_df[["query_id", "query"]].astype(str).itertuples(index=False):
        qid_of.setdefault(text, qid.replace(" ", "_"))
    all_qrels = qrels_dict(ds.qrels)
    texts = [t for t in qid_of if t in all_qrels]
    if not texts:
        raise DataError(f"qrels: no judgements for the {split!r} queries")
    qrels_by_id = {qid_of[t]: all_qrels[t] for t in texts}
    mismatch = vocabulary_mismatch_queries(split_df, ds.qrels, ds.catalog)
    mismatch_ids = [qid_of[t] for t in texts if t in mismatch]
    anchored = brand_model_queries(split_df, ds.catalog)
    anchored_ids = [qid_of[t] for t in texts if t in anchored]
    systems = _available(systems, index_dir, progress)

    with tempfile.TemporaryDirectory(prefix="shoprank-eval-") as scratch:
        out_dir = Path(run_dir) if run_dir else Path(scratch) / "runs"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ShoprankError(f"{out_dir}: cannot create run directory ({exc.strerror})") from None
        write_trec_qrels(out_dir / "qrels.txt", qrels_by_id)
        say = progress or (lambda line: None)
        say(f"evaluate: loading the models for {', '.join(systems)}")
        rankers, details = _build_rankers(ds, systems, Path(scratch), index_dir, reranker,
                                          candidates, depth, all_qrels)
        rows, run_files, per_system = [], {}, {}
        for system, ranker in rankers.items():
            say(f"evaluate: {system} on {len(texts)} queries")
            ids, scores = ranker(texts)
            run = {qid_of[t]: {pid: float(s) for pid, s in zip(r_ids, r_sc)}
                   for t, r_ids, r_sc in zip(texts, ids, scores)}
            path = out_dir / f"{system}.run"
            write_trec_run(path, run, system)
            run_files[system] = str(path)
            for subset, keys in (("all", list(qrels_by_id)), ("mismatch", mismatch_ids),
                                 ("brand-model", anchored_ids)):
                values = aggregate(run, qrels_by_id, measures, queries=keys) if keys else {m: float("nan") for m in measures}
                rows.append({"system": system, "subset": subset, "queries": len(keys), **values})
            per_system[system] = per_query(run, qrels_by_id, [PAIRED_MEASURE])[PAIRED_MEASURE]
        task_rows = []
        if "two-stage-model" in details and ds.engagement is not None:
            say("evaluate: reranker per-task engagement metrics")
            task_rows = _engagement_metrics(details["two-stage-model"], ds.catalog, ds.engagement, set(texts),
                                            max_engagement_pairs, seed)
        report = {
            "split": split, "queries": len(texts), "mismatch_queries": len(mismatch_ids),
            "brand_model_queries": len(anchored_ids),
            "measures": list(measures), "rows": rows, "tasks": task_rows,
            "run_dir": str(out_dir) if run_dir else None,
            "run_files": run_files if run_dir else {},
            "qrels_file": str(out_dir / "qrels.txt") if run_dir else None,
            "models": {k: v for k, v in details.items() if isinstance(v, str)},
            "candidates": candidates,
        }
        report["headroom"] = _headroom(rows)
        report["paired"] = _paired(per_system, seed)
    return report


def _available(systems: Sequence[str], index_dir: Any, progress: Callable[[str], None] | None) -> list[str]:
    """``systems`` minus those needing a lexical side the index lacks (said, not an error:
    indexes built with --no-lexical or before it existed still evaluate the rest)."""
    if not set(LEXICAL_SYSTEMS) & set(systems):
        return list(systems)
    from pipeline.core.artifacts import read_manifest

    has_index = index_dir is not None and (Path(index_dir) / "manifest.json").is_file()
    if has_index and "lexical" in read_manifest(index_dir):
        return list(systems)
    dropped = [s for s in systems if s in LEXICAL_SYSTEMS]
    if progress:
        progress(f"evaluate: {index_dir} has no lexical side; skipping {', '.join(dropped)}")
    return [s for s in systems if s not in LEXICAL_SYSTEMS]


def _paired(per_system: dict[str, dict[str, float]], seed: int) -> list[dict[str, Any]]:
    """Each learned system against the one it builds on, by a paired bootstrap over queries."""
    out = []
    for system, baseline in PAIRED_AGAINST:
        if system in per_system and baseline in per_system:
            out.append({"system": system, "baseline": baseline, "measure": PAIRED_MEASURE,
                        **paired_bootstrap(per_system[system], per_system[baseline], seed=seed)})
    return out


def _headroom(rows: list[dict[str, Any]], measure: str = "nDCG@10") -> float | None:
    """Oracle reranking minus fine-tuned dense (overall), when both were evaluated."""
    value = {r["system"]: r.get(measure) for r in rows if r["subset"] == "all"}
    if value.get("oracle-rerank") is None or value.get("dense-fine-tuned") is None:
        return None
    return float(value["oracle-rerank"] - value["dense-fine-tuned"])


def _oracle(retriever: Any, qrels: dict[str, dict[str, int]], candidates: int) -> Ranker:
    """Rerank the retriever's top ``candidates`` by true grade (ties keep retrieval order)."""
    def rank(qs: list[str]) -> tuple[list[list[str]], list[list[float]]]:
        ids, _ = retriever.search(qs, k=candidates)
        out_ids, out_scores = [], []
        for q, row in zip(qs, ids):
            grades = qrels.get(q, {})
            order = sorted(range(len(row)), key=lambda i: (-grades.get(row[i], 0), i))
            out_ids.append([row[i] for i in order])
            out_scores.append([float(len(row) - r) for r in range(len(row))])
        return out_ids, out_scores
    return rank


def _build_rankers(ds: Any, systems: Sequence[str], scratch: Path, index_dir: Any, reranker: Any,
                   candidates: int, depth: int,
                   qrels: dict[str, dict[str, int]] | None = None) -> tuple[dict[str, Ranker], dict[str, Any]]:
    """One ranking function per system (texts -> ids, scores), loading each model once."""
    rankers: dict[str, Ranker] = {}
    details: dict[str, Any] = {}
    fields = _index_text_fields(index_dir)  # every system reads the product text the index encoded
    if "bm25" in systems:
        from retrieval.lexical import BM25Retriever

        bm25 = BM25Retriever(ds.catalog, fields=fields)
        rankers["bm25"] = lambda qs: bm25.search(qs, k=depth)
    if "dense-zero-shot" in systems:
        zero = _dense_zero_shot(ds.catalog, scratch, fields)
        details["dense-zero-shot-model"] = str(zero.encoder.model_id)
        rankers["dense-zero-shot"] = lambda qs: zero.search(qs, k=depth)
    if {"dense-fine-tuned", "two-stage", "oracle-rerank", *LEXICAL_SYSTEMS} & set(systems):
        from pipeline.search import CatalogText, TwoStageSearcher
        from retrieval.index import Retriever

        # Always rank the dataset's own catalog (never a default path on disk).
        model = _load_reranker(reranker) if {"two-stage", "two-stage-hybrid"} & set(systems) else None
        catalog_file = (getattr(ds, "report", None) or {}).get("files", {}).get("catalog")
        catalog = CatalogText.from_frame(ds.catalog, f"catalog {catalog_file}" if catalog_file else "the catalog",
                                         fields)
        searcher = TwoStageSearcher(Retriever.load(index_dir), model, catalog)
        details["dense-fine-tuned-model"] = str(searcher.retriever.encoder.model_id)
        if "dense-fine-tuned" in systems:
            rankers["dense-fine-tuned"] = lambda qs: searcher.retriever.search(qs, k=depth)
        if "oracle-rerank" in systems:
            rankers["oracle-rerank"] = _oracle(searcher.retriever, qrels or {}, candidates)
        for mode in ("lexical", "hybrid"):
            if mode in systems:
                rankers[mode] = (lambda m: lambda qs: searcher.retriever.search(qs, k=depth, mode=m))(mode)
        if model is not None:
            details["two-stage-model"] = model
            details["reranker"] = str(model.manifest.get("id", ""))
        if "two-stage" in systems:
            rankers["two-stage"] = _two_stage(searcher, candidates)
        if "two-stage-hybrid" in systems:
            hybrid = TwoStageSearcher(searcher.retriever, model, catalog, retrieval="hybrid", catalog_verified=True)
            rankers["two-stage-hybrid"] = _two_stage(hybrid, candidates)
    return rankers, details


def _two_stage(searcher: Any, candidates: int) -> Ranker:
    """The searcher's served order of its top ``candidates`` (scores: the blended ranking score)."""
    def rank(qs: list[str]) -> tuple[list[list[str]], list[list[float]]]:
        hits = searcher.search_many(qs, k=candidates, candidates=candidates)
        return [[h.product_id for h in row] for row in hits], [[h.score for h in row] for row in hits]
    return rank


def _index_text_fields(index_dir: Any) -> tuple[str, ...]:
    """The product text fields the index records (the default template without an index)."""
    from pipeline.core.artifacts import read_manifest
    from pipeline.core.text import recorded_text_fields

    has_index = index_dir is not None and (Path(index_dir) / "manifest.json").is_file()
    return recorded_text_fields(read_manifest(index_dir) if has_index else None)


def _load_reranker(path: Any) -> Any:
    """The trained cross-encoder at ``path`` (ArtifactError if there is none)."""
    from pipeline.core.errors import ArtifactError
    from rerank.loading import load_reranker

    if path is None or not (Path(path) / "manifest.json").is_file():
        raise ArtifactError(f"{path}: no trained reranker here (two-stage evaluation needs one)")
    return load_reranker(path, "torch", "fp32")
