"""Fit the first-stage blend of a trained reranker, and train a reranker against an index.

Why in pipeline/: fitting the blend needs both stages (the retriever's candidates and scores,
the reranker's probabilities), and the stages never import each other. The arithmetic lives
in :mod:`rerank.fusion` (:func:`~rerank.fusion.blend`, :func:`~rerank.fusion.fit_alpha`);
this module only gathers the inputs the searcher will see at serving time (the retriever's
top ``candidates`` for each valid query) and writes the fitted weight into the reranker's
manifest, where every serving path reads it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DEFAULT_CANDIDATES
from pipeline.core.artifacts import writes_output
from pipeline.data import Dataset, engagement_qrels, qrels_dict
from pipeline.core.errors import DataError


def retriever_candidates(retriever: Any, queries: Sequence[str],
                         k: int) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Top-``k`` product ids and their retrieval scores per query."""
    ids, scores = retriever.search(list(queries), k=k)
    return ({q: [str(p) for p in row] for q, row in zip(queries, ids)},
            {q: np.asarray(sc, dtype=np.float64)[: len(row)] for q, row, sc in zip(queries, ids, scores)})


def _grades(dataset: Dataset, queries: Sequence[str]) -> tuple[dict[str, dict[str, int]], str]:
    """Graded judgements for ``queries``: the qrels, else grades derived from engagement."""
    if dataset.qrels is not None:
        return qrels_dict(dataset.qrels), "qrels"
    if dataset.engagement is None:
        raise DataError("fitting the blend needs qrels or an engagement log for the valid queries")
    return engagement_qrels(dataset.engagement, queries), "engagement"


def fit_fusion(dataset: Dataset, reranker: Any, retriever: Any, *,
               reranker_dir: str | os.PathLike[str] | None = None, split: str = "valid", candidates: int = DEFAULT_CANDIDATES,
               weights: Mapping[str, float] | None = None, batch_size: int = 128) -> dict[str, Any]:
    """Fit the reranker weight of the first-stage blend on ``split`` and (with
    ``reranker_dir``) record it in that reranker's manifest; return the fit.

    The candidate lists are exactly what :class:`pipeline.search.TwoStageSearcher` reranks
    (retriever top ``candidates``), so the weight is fitted on the scores it will blend.
    """
    from pipeline.core.text import recorded_text_fields
    from rerank.data import text_lookup
    from rerank.fusion import fit_alpha, fuse, save_fusion

    queries = dataset.split_queries(split)
    if not queries:
        raise DataError(f"queries: no rows with split == {split!r} to fit the blend on")
    qrels, graded_by = _grades(dataset, queries)
    queries = [q for q in queries if q in qrels]
    if not queries:
        raise DataError(f"no judgements (qrels or engagement) for the {split!r} queries")
    cand_ids, cand_scores = retriever_candidates(retriever, queries, candidates)
    texts = text_lookup(dataset.catalog, recorded_text_fields(getattr(reranker, "manifest", None)))
    flat = [(q, p, s) for q in queries for p, s in zip(cand_ids[q], cand_scores[q]) if p in texts]
    if not flat:
        raise DataError(f"the retriever returned no catalog products for the {split!r} queries")
    q_col, p_col, r_col = (list(col) for col in zip(*flat))
    probs = np.asarray(reranker.predict(q_col, [texts[p] for p in p_col], batch_size=batch_size))
    rerank_score = fuse(probs, list(reranker.tasks), weights)
    fit = fit_alpha(q_col, p_col, rerank_score, np.asarray(r_col), qrels)
    fit.update({"split": split, "candidates": candidates, "graded_by": graded_by})
    if reranker_dir is not None:
        save_fusion(reranker_dir, fit)
    return fit


def examination_propensities(dataset: Dataset, positions: str | os.PathLike[str] | None = None) -> list[float]:
    """Examination probability per position, fitted on the impression log (conditional
    estimator on a per-position log, EM on mean positions; :mod:`rerank.propensity`).

    ``positions``: a per-position log (query, product_id, position, impressions, clicks), as
    the sample world writes in ``positions.parquet``; without one, the engagement's mean
    positions are used, which the estimator flags as biased (a mean hides the spread).
    """
    from pipeline.data import load_position_log
    from rerank.propensity import estimate_propensities

    if positions is not None:
        log = load_position_log(positions)
    elif dataset.engagement is not None and "position" in dataset.engagement.columns:
        log = dataset.engagement
    else:
        raise DataError("debias 'ipw' needs positions: a per-position log (--positions) or a 'position' "
                        "column in the engagement log")
    estimate = estimate_propensities(log)
    return [float(t) for t in estimate.theta]


def retriever_prior(retriever: Any, catalog: Any) -> Any:
    """``(queries, product_ids) -> cosine similarity`` under the retriever's encoder: the
    prior the reranker distils (``prior_weight``). Each distinct query and product is encoded
    once, so a training set of many pairs per query costs one pass over its parts."""
    from pipeline.core.text import recorded_text_fields
    from rerank.data import text_lookup

    texts = text_lookup(catalog, recorded_text_fields(getattr(retriever, "manifest", None)))

    def prior(queries: Sequence[str], product_ids: Sequence[str]) -> np.ndarray:
        uq, q_idx = np.unique(np.asarray(queries, dtype=object).astype(str), return_inverse=True)
        up, p_idx = np.unique(np.asarray(product_ids, dtype=object).astype(str), return_inverse=True)
        qv = retriever.encoder.encode_queries(list(uq))
        pv = retriever.encoder.encode_products([texts[p] for p in up], show_progress=False)
        return np.einsum("ij,ij->i", qv[q_idx], pv[p_idx]).astype(np.float64)

    return prior


def retriever_encoder_dir(retriever: Any) -> Path | None:
    """The fine-tuned retriever's Hugging Face folder, when the index names one on disk."""
    model_path = (getattr(retriever, "manifest", None) or {}).get("model_path")
    path = Path(model_path) if model_path else None
    return path if path is not None and (path / "config.json").is_file() else None


def _retriever(retriever: Any, index_dir: str | os.PathLike[str] | None) -> Any:
    """The given retriever, else the one at ``index_dir``, else None (no first stage)."""
    if retriever is None and index_dir is not None:
        from retrieval.index import Retriever

        retriever = Retriever.load(index_dir)
    return retriever


def training_candidates(dataset: Dataset, retriever: Any, candidates: int, command: str) -> dict[str, list[str]]:
    """The retriever's top ``candidates`` for every train and valid query: the lists a reranker
    (or its distilled student) samples negatives from and is validated on, so it learns on
    what it will rerank. A dataset a reranker cannot train on is refused first, naming
    ``command``."""
    from rerank.train import require_training_data

    require_training_data(dataset, command)
    queries = dataset.split_queries("train") + dataset.split_queries("valid")
    return retriever_candidates(retriever, queries, candidates)[0]


def _record_fusion(report: dict[str, Any], dataset: Dataset, retriever: Any, out_dir: str | os.PathLike[str],
                   candidates: int) -> None:
    """Fit the trained model's first-stage blend on valid, save it in its manifest, and set it
    on the in-memory model too, so that model blends like a reloaded one."""
    report["fusion"] = fit_fusion(dataset, report["model"], retriever, reranker_dir=out_dir, candidates=candidates)
    report["model"].manifest["fusion"] = report["fusion"]


@writes_output("out_dir", "model folder")
def train_reranker_on_index(dataset: Dataset, out_dir: str | os.PathLike[str], *,
                            index_dir: str | os.PathLike[str] | None = None, candidates: int = DEFAULT_CANDIDATES,
                            retriever: Any = None, encoder_from_retriever: bool = True,
                            positions: str | os.PathLike[str] | None = None,
                            text_fields: Sequence[str] | None = None, **train_kwargs: Any) -> dict[str, Any]:
    """Train a reranker on retriever candidates, then fit and save its first-stage blend.

    Without ``index_dir`` or ``retriever`` this is :func:`rerank.train.train_reranker` with
    catalog-sampled negatives and no blend (there is no first stage to blend with).
    ``encoder_from_retriever``: when no ``encoder`` is given, start the cross-encoder from
    the fine-tuned retriever's weights instead of the bundled MiniLM. Why: they already map
    the shop's jargon and synonyms to its products, which a cross-encoder trained for a few
    hundred steps on noisy engagement cannot learn from scratch (docs/rerank.md).
    ``text_fields``: the product text fields (None: the index's, else the default template);
    fields other than the index's are refused, since the searcher would refuse the pair.
    """
    from pipeline.core.text import PRODUCT_TEXT_FIELDS, recorded_text_fields, require_same_text_fields
    from rerank.train import train_reranker

    if train_kwargs.get("debias") == "ipw" and train_kwargs.get("propensities") is None:
        train_kwargs["propensities"] = examination_propensities(dataset, positions)
    retriever = _retriever(retriever, index_dir)
    if retriever is None:
        return train_reranker(dataset, out_dir, text_fields=text_fields or PRODUCT_TEXT_FIELDS, **train_kwargs)
    indexed = recorded_text_fields(getattr(retriever, "manifest", None))
    train_kwargs["text_fields"] = indexed if text_fields is None else require_same_text_fields(
        text_fields, "--text-fields", indexed, f"index {getattr(retriever, 'index_dir', index_dir)}")
    cand_ids = training_candidates(dataset, retriever, candidates, "train-reranker")
    if encoder_from_retriever and train_kwargs.get("encoder") is None:
        train_kwargs["encoder"] = retriever_encoder_dir(retriever)
    if train_kwargs.get("prior_weight"):
        train_kwargs["prior"] = retriever_prior(retriever, dataset.catalog)
    report = train_reranker(dataset, out_dir, candidates=cand_ids, **train_kwargs)
    _record_fusion(report, dataset, retriever, out_dir, candidates)
    return report


@writes_output("out_dir", "model folder")
def distill_reranker_on_index(dataset: Dataset, teacher_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                              *, index_dir: str | os.PathLike[str] | None = None,
                              candidates: int = DEFAULT_CANDIDATES, retriever: Any = None, export: bool = True,
                              **distill_kwargs: Any) -> dict[str, Any]:
    """Distil a student of the teacher at ``teacher_dir`` (:func:`rerank.distill.distill_reranker`)
    on the retriever's candidates, fit its own first-stage blend on valid, export it to ONNX.

    The same steps as :func:`train_reranker_on_index`, so a student is served like any
    reranker: candidates are the retriever's top ``candidates`` for the train and valid
    queries (without an index: catalog negatives and no blend); the blend is refitted
    rather than copied from the teacher because it depends on how good the student's own
    order is. ``export``: fp32 + int8 ONNX next to the model (:mod:`pipeline.export`), so
    ``--backend auto`` picks ONNX Runtime for the student as for the teacher.
    """
    from rerank.distill import distill_reranker, student_layers, teacher_depth

    student_layers(teacher_depth(teacher_dir), distill_kwargs.get("layers", 2),
                   distill_kwargs.get("layer_choice", "spread"))  # bad input fails before the index loads
    retriever = _retriever(retriever, index_dir)
    cand_ids = None if retriever is None else training_candidates(dataset, retriever, candidates, "distill-reranker")
    report = distill_reranker(dataset, teacher_dir, out_dir, candidates=cand_ids, **distill_kwargs)
    if retriever is not None:
        _record_fusion(report, dataset, retriever, out_dir, candidates)
    if export:
        from pipeline.export import export_onnx

        report["onnx"] = export_onnx(None, out_dir)["reranker"]["export"]
    return report


__all__ = ["distill_reranker_on_index", "fit_fusion", "retriever_candidates", "retriever_prior",
           "train_reranker_on_index", "training_candidates"]
