"""The data contracts: canonical columns of each file kind, the :class:`Dataset` a command
reads, and the views every stage derives from them the same way (product text of a catalog,
qrels as the metrics' dict, the vocabulary-mismatch queries).

Why here and not in each stage: training, indexing, evaluation and the sample world must
build the same product text and count the same queries as "mismatch"; one definition keeps
their numbers comparable.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.tasks import FUNNEL
from pipeline.core.text import PRODUCT_TEXT_FIELDS, content_words, join_product_fields

CATALOG_COLUMNS = ["product_id", "title", "description", "brand", "category", "attributes", "price"]
ENGAGEMENT_COLUMNS = ["query", "product_id", *FUNNEL]
QUERY_COLUMNS = ["query_id", "query", "split"]
QRELS_COLUMNS = ["query", "product_id", "relevance"]
#: Grades derived from engagement where a dataset has no qrels: the deepest funnel event wins.
ENGAGEMENT_GRADES = (("purchases", 3), ("add_to_carts", 2), ("clicks", 1))
SPLITS = ("train", "valid", "test", "unseen")   # unseen: held-out types or categories, never trained on


@dataclass
class Dataset:
    """Everything a training or evaluation command reads, already validated.

    ``report`` records what loading did (rows read, unknown product ids skipped, event
    rows aggregated) so `pipeline validate` can show it.
    """

    catalog: pd.DataFrame
    engagement: pd.DataFrame | None = None
    queries: pd.DataFrame | None = None
    qrels: pd.DataFrame | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def split_queries(self, split: str) -> list[str]:
        """Query texts of one split (train / valid / test)."""
        if self.queries is None:
            raise DataError("no queries file loaded: cannot select a split")
        return self.queries.loc[self.queries["split"] == split, "query"].tolist()


def product_text_fields(catalog: pd.DataFrame, fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> dict[str, list[str]]:
    """The catalog columns the product text is made of (``fields``, default
    :data:`PRODUCT_TEXT_FIELDS`), as strings with missing values as ``""``.

    A default field the catalog lacks reads as empty (the contract makes them optional); any
    other field must be a column, or the text would silently lack what the user chose.
    """
    missing = next((f for f in fields if f not in catalog.columns and f not in PRODUCT_TEXT_FIELDS), None)
    if missing is not None:
        raise DataError(f"catalog: no column {missing!r} (named in the product text fields {','.join(fields)})")
    parts = catalog.reindex(columns=list(fields)).astype(object).fillna("").astype(str)
    return {field: parts[field].tolist() for field in fields}


def product_text(catalog: pd.DataFrame, fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> list[str]:
    """The ONE product text template shared by the bi-encoder and the cross-encoder
    (:func:`pipeline.core.text.join_product_fields` over ``fields``, by default
    title | brand | category | attributes)."""
    return [join_product_fields(row) for row in zip(*product_text_fields(catalog, fields).values())]


def qrels_dict(qrels: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{query: {product_id: grade}}`` — the shape :mod:`pipeline.core.metrics` expects."""
    out: dict[str, dict[str, int]] = {}
    for q, p, g in zip(qrels["query"].astype(str), qrels["product_id"].astype(str),
                       qrels["relevance"].astype("int64")):
        out.setdefault(q, {})[p] = int(g)
    return out


def engagement_qrels(engagement: pd.DataFrame, queries: Iterable[str]) -> dict[str, dict[str, int]]:
    """Graded judgements for ``queries`` derived from engagement (:data:`ENGAGEMENT_GRADES`,
    0 = shown and never clicked), so a log-only dataset can still be validated and fitted on."""
    rows = engagement[engagement["query"].isin(set(queries))]
    grades = np.select([rows[col].to_numpy() > 0 for col, _ in ENGAGEMENT_GRADES],
                       [grade for _, grade in ENGAGEMENT_GRADES], 0)
    return qrels_dict(rows[["query", "product_id"]].assign(relevance=grades))


def brand_model_queries(queries: pd.DataFrame, catalog: pd.DataFrame) -> set[str]:
    """Query texts naming a catalog brand (all its words, in any position) or holding a model-like
    token (letters and digits mixed, e.g. ``wh1000xm4``).

    These are the queries where exact lexical matching should shine: a bi-encoder tends to
    blur a rare brand or model number into its nearest common word.
    """
    import re

    brands = {frozenset(content_words(b)) for b in catalog.get("brand", pd.Series(dtype=str)).dropna().astype(str)}
    brands.discard(frozenset())
    out: set[str] = set()
    for q in dict.fromkeys(queries["query"].astype(str)):
        words = content_words(q)
        model_token = any(re.search(r"[a-z]", t) and re.search(r"[0-9]", t) for t in words)
        if model_token or any(b <= words for b in brands):
            out.add(q)
    return out


def vocabulary_mismatch_queries(queries: pd.DataFrame, qrels: pd.DataFrame, catalog: pd.DataFrame,
                                min_relevance: int = 2) -> set[str]:
    """Query texts sharing no content word with ANY of their relevant products' text.

    Content words: lower-cased alphanumeric tokens minus stop words
    (:func:`pipeline.core.text.content_words`); product text: :func:`product_text`. Queries
    without a relevant (grade >= ``min_relevance``) product are not counted either way.
    These are the queries on which lexical matching cannot work.
    """
    words = dict(zip(catalog["product_id"].astype(str), (content_words(t) for t in product_text(catalog))))
    rel = qrels[qrels["relevance"].astype("int64") >= min_relevance]
    vocab: dict[str, set[str]] = {}
    for q, p in zip(rel["query"].astype(str), rel["product_id"].astype(str)):
        w = words.get(p)
        if w is not None:
            vocab.setdefault(q, set()).update(w)
    out: set[str] = set()
    for q in dict.fromkeys(queries["query"].astype(str)):
        if q in vocab and not (content_words(q) & vocab[q]):
            out.add(q)
    return out

