"""Training and evaluation pairs for the reranker, built from the engagement log.

Independent of retrieval/: retriever candidates arrive as a plain ``{query: [product_id, ...]}``
dict computed by the caller (pipeline/), never by importing stage 1.

Examples come in **query groups** (column ``group``, one integer per query): the list a
listwise loss compares, and the unit the trainer's batch sampler keeps whole. Per query:

* **shown** pairs — engagement rows, engaged *and* shown-but-skipped, with their counts;
  skipped rows are the most informative negatives we have, because the product was judged
  good enough to show and still lost. ``max_shown_per_query`` bounds the list (training
  cost grows with it) while keeping a floor of skipped rows: engaged rows may take at most
  half of the slots (rounded up), so a list never degenerates into "everything here was clicked", which
  leaves nothing to rank within the query;
* **sampled** negatives — ``negatives`` products per query drawn from the retriever's
  candidates that were never shown for it (or from the whole catalog when no candidates are
  given), with zero counts. They teach the model about the hard look-alikes it will
  actually rerank at serving time.

Labels (``label_mode``):

* ``"rate"`` (default): target = count / impressions, example weight = impressions, so the
  BCE is the binomial log-likelihood of the observed counts — a product shown 40 times and
  bought twice is not the same as one shown twice and bought twice. A sampled negative
  weighs as much as the median shown row (it stands for "would be skipped").
* ``"binary"``: target = 1 if count > 0, weight 1 — simple and robust to impression noise,
  but throws the rate away.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.data import product_text
from pipeline.core.errors import DataError
from pipeline.core.tasks import COUNT_COLUMNS, TASKS
from pipeline.core.runtime import DEFAULT_SEED
from pipeline.core.text import PRODUCT_TEXT_FIELDS

LABEL_MODES = ("rate", "binary")


def text_lookup(catalog: pd.DataFrame, fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> dict[str, str]:
    """product_id -> the shared product text template over ``fields``."""
    return dict(zip(catalog["product_id"].astype(str), product_text(catalog, fields)))


def _shown_rows(engagement: pd.DataFrame, queries: Sequence[str]) -> pd.DataFrame:
    wanted = set(queries)
    cols = ["query", "product_id", "impressions", *COUNT_COLUMNS.values()]
    shown = engagement.loc[engagement["query"].isin(wanted),
                           cols + (["position"] if "position" in engagement.columns else [])].copy()
    shown["product_id"] = shown["product_id"].astype(str)
    shown["source"] = "shown"
    return shown.reset_index(drop=True)


def _limit_shown(shown: pd.DataFrame, max_shown: int | None, rng: np.random.Generator) -> pd.DataFrame:
    """At most ``max_shown`` shown rows per query, at least half of them skipped when possible.

    Why a floor of skipped rows rather than "engaged rows first": engaged rows are about half
    of what a query shows, so keeping them first fills every slot with engaged products and
    the model never sees a shown product losing within its own query. Skipped rows are
    guaranteed ``max_shown // 2`` slots (when the query has that many), engaged rows fill the
    rest, and skipped rows take any slots engaged ones leave; both are sampled by the seeded
    ``rng``.
    """
    if max_shown is None:
        return shown
    engaged = shown["clicks"].to_numpy() > 0
    keep = np.zeros(len(shown), dtype=bool)
    for _, idx in shown.groupby("query", sort=False).indices.items():
        pos, neg = idx[engaged[idx]], idx[~engaged[idx]]
        n_neg = min(len(neg), max_shown // 2)
        n_pos = min(len(pos), max_shown - n_neg)
        n_neg = min(len(neg), max_shown - n_pos)  # skipped rows take what engaged ones leave
        for rows, n in ((pos, n_pos), (neg, n_neg)):
            keep[rng.choice(rows, size=n, replace=False) if n < len(rows) else rows] = True
    return shown[keep].reset_index(drop=True)


def _sampled_negatives(queries: Sequence[str], shown: pd.DataFrame, catalog_ids: Sequence[str],
                       candidates: Mapping[str, Sequence[str]] | None, negatives: int,
                       rng: np.random.Generator) -> pd.DataFrame:
    """``negatives`` never-shown products per query, from candidates (else the catalog)."""
    seen = shown.groupby("query")["product_id"].agg(set).to_dict()
    rows = []
    for query in queries:
        pool = list(candidates.get(query, [])) if candidates is not None else list(catalog_ids)
        excluded = seen.get(query, set())
        pool = [str(p) for p in pool if str(p) not in excluded]
        if not pool or negatives <= 0:
            continue
        picks = rng.choice(len(pool), size=min(negatives, len(pool)), replace=False)
        rows += [(query, pool[i]) for i in sorted(picks)]
    frame = pd.DataFrame(rows, columns=["query", "product_id"])
    frame["impressions"] = 0
    for col in COUNT_COLUMNS.values():
        frame[col] = 0
    frame["source"] = "sampled"
    return frame


def build_examples(engagement: pd.DataFrame, catalog: pd.DataFrame, queries: Sequence[str], *,
                   candidates: Mapping[str, Sequence[str]] | None = None, negatives: int = 4,
                   label_mode: str = "rate", tasks: Sequence[str] = TASKS, seed: int = DEFAULT_SEED,
                   max_shown_per_query: int | None = None,
                   examination: Callable[[np.ndarray], np.ndarray] | None = None,
                   text_fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> pd.DataFrame:
    """Training pairs with per-task labels and weights.

    Columns: query, product_id, text, impressions, clicks, add_to_carts, purchases, source,
    ``y_<task>`` for each task, weight. Deterministic for a given seed.
    ``max_shown_per_query`` caps the shown rows per query (all engaged rows are kept).

    ``examination`` (inverse-propensity debiasing, ``rate`` labels only): maps a row's mean
    shown position to the probability that a shown product was looked at. Labels become
    counts per *examined* impression (``count / (impressions * theta)``) and weights the
    examined impressions: a product shown low on the page was skipped less than its raw
    rate says, because it was seldom seen. Every task is divided, since carts and purchases
    need a click first. Rows without a position keep their raw rate.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {label_mode!r}; choose one of {', '.join(LABEL_MODES)}")
    texts = text_lookup(catalog, text_fields)
    rng = np.random.default_rng(seed)
    all_shown = _shown_rows(engagement, queries)
    shown = _limit_shown(all_shown, max_shown_per_query, rng)
    # never sample a product that *was* shown (even one the cap dropped) as a zero-count negative
    sampled = _sampled_negatives(list(queries), all_shown, list(texts), candidates, negatives, rng)
    frame = pd.concat([shown, sampled], ignore_index=True) if len(sampled) else shown.reset_index(drop=True)
    frame = frame[frame["product_id"].isin(texts)].reset_index(drop=True)
    if frame.empty:
        raise DataError("engagement: no (query, product) pairs for the training queries match the catalog")
    order = {q: i for i, q in enumerate(dict.fromkeys(queries))}
    frame["group"] = frame["query"].map(order).astype(np.int64)
    frame = frame.sort_values("group", kind="stable").reset_index(drop=True)
    frame["text"] = frame["product_id"].map(texts)
    imps = frame["impressions"].to_numpy(dtype=np.float64)
    if examination is not None and label_mode == "rate" and "position" in frame.columns:
        pos = frame["position"].to_numpy(dtype=np.float64)
        theta = np.where(np.isfinite(pos), examination(pos), 1.0)
        imps = imps * np.clip(theta, 1e-3, 1.0)
    for task in tasks:
        counts = frame[COUNT_COLUMNS[task]].to_numpy(dtype=np.float64)
        if label_mode == "binary":
            frame[f"y_{task}"] = (counts > 0).astype(np.float32)
        else:
            frame[f"y_{task}"] = np.where(imps > 0, counts / np.maximum(imps, 1.0), 0.0).clip(0.0, 1.0).astype(np.float32)
    if label_mode == "binary":
        frame["weight"] = 1.0
    else:
        shown_imps = imps[frame["source"].to_numpy() == "shown"]
        neg_weight = float(np.median(shown_imps)) if len(shown_imps) else 1.0
        frame["weight"] = np.where(frame["source"] == "shown", np.maximum(imps, 1.0), max(neg_weight, 1.0))
    frame["weight"] = frame["weight"].astype(np.float32)
    return frame


def build_eval_pairs(engagement: pd.DataFrame, catalog: pd.DataFrame, queries: Sequence[str], *,
                     candidates: Mapping[str, Sequence[str]] | None = None,
                     include_shown: bool = True,
                     text_fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> pd.DataFrame:
    """Pairs to score for evaluation, with their engagement counts (zero if never shown).

    ``include_shown=True``: shown products plus candidates (validation during training).
    ``include_shown=False``: exactly the candidates (retriever top-N), in candidate order —
    the list a reranker reorders at serving time, so per-task NDCG there is what users see.
    Columns: query, product_id, text, impressions, clicks, add_to_carts, purchases, source, cand_rank.
    """
    texts = text_lookup(catalog, text_fields)
    shown = _shown_rows(engagement, queries)
    rows = []
    if candidates is not None:
        for query in queries:
            rows += [(query, str(p), r) for r, p in enumerate(candidates.get(query, []))]
    cand = pd.DataFrame(rows, columns=["query", "product_id", "cand_rank"]).drop_duplicates(["query", "product_id"])
    if include_shown or candidates is None:
        cand = cand.merge(shown[["query", "product_id"]], how="left", indicator=True)
        cand = cand[cand["_merge"] == "left_only"].drop(columns="_merge")
        for col in ("impressions", *COUNT_COLUMNS.values()):
            cand[col] = 0
        cand["source"] = "candidate"
        shown = shown.assign(cand_rank=-1)
        frame = pd.concat([shown, cand], ignore_index=True) if len(cand) else shown.reset_index(drop=True)
    else:
        counts = shown.drop(columns="source").drop_duplicates(["query", "product_id"])
        frame = cand.merge(counts, how="left", on=["query", "product_id"])
        frame[["impressions", *COUNT_COLUMNS.values()]] = (
            frame[["impressions", *COUNT_COLUMNS.values()]].fillna(0).astype(np.int64))
        frame["source"] = np.where(frame["impressions"] > 0, "shown", "candidate")
    frame = frame[frame["product_id"].isin(texts)].reset_index(drop=True)
    frame["text"] = frame["product_id"].map(texts)
    return frame
