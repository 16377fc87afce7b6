"""Data contracts and loaders: catalog, engagement, query log, qrels.

STUB written by the lead so the stages can start; the data helper replaces the loaders
with full validation and schema mapping, keeping these signatures.

Contracts (see ARCHITECTURE.md): every loader returns a pandas DataFrame with the
canonical columns below, string ids, and one-line DataError on bad input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

CATALOG_COLUMNS = ["product_id", "title", "description", "brand", "category", "attributes", "price"]
ENGAGEMENT_COLUMNS = ["query", "product_id", "impressions", "clicks", "add_to_carts", "purchases"]
FUNNEL = ["impressions", "clicks", "add_to_carts", "purchases"]
QUERY_COLUMNS = ["query_id", "query", "split"]
QRELS_COLUMNS = ["query", "product_id", "relevance"]


@dataclass
class Dataset:
    """Everything a training or evaluation command reads, already validated."""

    catalog: pd.DataFrame
    engagement: pd.DataFrame | None = None
    queries: pd.DataFrame | None = None
    qrels: pd.DataFrame | None = None

    def split_queries(self, split: str) -> list[str]:
        """Query texts of one split (train / valid / test)."""
        assert self.queries is not None
        return self.queries.loc[self.queries["split"] == split, "query"].tolist()


def product_text(catalog: pd.DataFrame) -> list[str]:
    """The ONE product text template shared by the bi-encoder and the cross-encoder.

    ``"{title} | {brand} | {category} | {attributes}"`` — empty parts are dropped. The title
    comes first because encoders truncate from the end; description is left out because
    it is long, repetitive and dilutes the short fields that queries actually match.
    """
    parts = catalog.reindex(columns=["title", "brand", "category", "attributes"]).fillna("").astype(str)
    return [" | ".join(p.strip() for p in row if p and p.strip()) for row in parts.itertuples(index=False)]


def qrels_dict(qrels: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{query: {product_id: grade}}`` — the shape :mod:`pipeline.metrics` expects."""
    out: dict[str, dict[str, int]] = {}
    for q, p, g in zip(qrels["query"].astype(str), qrels["product_id"].astype(str),
                       qrels["relevance"].astype("int64")):
        out.setdefault(q, {})[p] = int(g)
    return out


def vocabulary_mismatch_queries(queries: pd.DataFrame, qrels: pd.DataFrame, catalog: pd.DataFrame,
                                min_relevance: int = 2) -> set[str]:
    """Query texts sharing no content word with ANY of their relevant products' text.

    Content words: lower-cased alphanumeric tokens minus stop words
    (:func:`pipeline.textutil.content_words`); product text: :func:`product_text`. Queries
    without a relevant (grade >= ``min_relevance``) product are not counted either way.
    These are the queries on which lexical matching cannot work.
    """
    from pipeline.textutil import content_words

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


def load_dataset(data_dir: str | Path | None = None, *, catalog: str | Path | None = None,
                 engagement: str | Path | None = None, queries: str | Path | None = None,
                 qrels: str | Path | None = None) -> Dataset:
    """Load a dataset directory (catalog/engagement/queries/qrels .parquet) or explicit files."""
    base = Path(data_dir) if data_dir else None

    def pick(explicit, name):
        if explicit:
            return Path(explicit)
        if base is not None and (base / f"{name}.parquet").exists():
            return base / f"{name}.parquet"
        return None

    paths = {n: pick(e, n) for n, e in [("catalog", catalog), ("engagement", engagement),
                                         ("queries", queries), ("qrels", qrels)]}
    frames = {n: (pd.read_parquet(p) if p else None) for n, p in paths.items()}
    return Dataset(**frames)
