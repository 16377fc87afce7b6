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
