"""The per-batch scoring code both engines run: one input table in, one output table out.

Why it is shared: dedup, skip rules and row layout decide the output file, so the local
engine and every Ray actor call the same :class:`BatchScorer` and cannot drift apart.

* **Dedup.** Repeated queries are answered once (LRU cache keyed by the cleaned query, kept
  across batches); repeated (query, product_id) pairs within a batch are scored once.
  Every input row still gets its own output rows, tagged with ``input_row``.
* **Skips.** Rows with an empty query, and in pairs mode a missing or unknown product,
  produce no output; they are counted per reason with the first row seen.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from pipeline.config import DEFAULT_CANDIDATES
from pipeline.core.cache import LRUCache
from pipeline.scoring.contract import FILTER_COLUMN, output_schema


class Scorer(Protocol):
    """What the batch scorer needs from a searcher (TwoStageSearcher satisfies it)."""

    tasks: tuple[str, ...]

    def manifest_ids(self) -> dict[str, str]: ...
    def search_many(self, queries: Sequence[str], k: int = 10, candidates: int = DEFAULT_CANDIDATES,
                    filters: Any = None) -> list[list[Any]]: ...
    def score_pairs(self, query: str, product_ids: Sequence[str]) -> list[Any]: ...
    def has_product(self, product_id: str) -> bool: ...


def column_values(table: pa.Table, name: str) -> list[Any]:
    """A column as python values (ids stringified), or all None when the log lacks it."""
    if name not in table.column_names:
        return [None] * table.num_rows
    values = table.column(name).to_pylist()
    return [None if v is None else str(v) for v in values]


def clean_query(query: str | None) -> str | None:
    """Cleaned query text, or None for a missing / blank query (skipped, counted)."""
    from pipeline.search import MAX_QUERY_CHARS

    if query is None:
        return None
    text = " ".join(query.split())
    return text[:MAX_QUERY_CHARS] if text else None


class BatchScorer:
    """Turns one input table into one output table (queries mode or pairs mode).

    ``cache`` lets a caller share one query cache between scorers: a Ray actor makes a
    fresh scorer per batch (so the skip counters are that batch's) while repeats across
    its batches stay free. An answer depends only on its query, so sharing is safe.
    """

    def __init__(self, scorer: Scorer, tasks: Sequence[str], *, mode: str, k: int,
                 candidates: int, cache_size: int, cache: LRUCache[list[Any]] | None = None) -> None:
        self.scorer, self.tasks, self.mode = scorer, tuple(tasks), mode
        self.k, self.candidates = k, candidates
        self.cache: LRUCache[list[Any]] = cache if cache is not None else LRUCache(cache_size)
        self.computed = 0  # unique queries / pairs actually sent to the models
        self.skipped: collections.Counter[str] = collections.Counter()
        self.first_skipped: dict[str, int] = {}

    def _skip(self, reason: str, row: int) -> None:
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, row)

    def score(self, table: pa.Table, start_row: int) -> pa.Table:
        """Output rows for ``table``, whose first row is input row ``start_row``."""
        queries = column_values(table, "query")
        qids = column_values(table, "query_id")
        cols: dict[str, list[Any]] = collections.defaultdict(list)
        if self.mode == "queries":
            self._score_queries(queries, qids, start_row, cols,
                                filters=column_values(table, FILTER_COLUMN) if FILTER_COLUMN in table.column_names
                                else None)
        else:
            self._score_pairs(queries, qids, column_values(table, "product_id"), start_row, cols)
        schema = output_schema(self.tasks)
        return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)

    def _emit(self, cols: dict[str, list[Any]], row: int, qid: str | None, query: str, hit: Any) -> None:
        cols["input_row"].append(row)
        cols["query_id"].append(qid if qid is not None else str(row))
        cols["query"].append(query)
        cols["rank"].append(hit.rank)
        cols["product_id"].append(hit.product_id)
        cols["retrieval_score"].append(None if hit.retrieval_score != hit.retrieval_score else hit.retrieval_score)
        for task in self.tasks:
            cols[f"p_{task}"].append(hit.probs.get(task))
        cols["score"].append(hit.score)

    def _search(self, queries: list[str], filters: str | None) -> list[list[Any]]:
        """The scorer's answers, with the row's filter only when there is one (so scorers
        without filter support keep working on logs without a filter column)."""
        if filters:
            return self.scorer.search_many(queries, k=self.k, candidates=self.candidates, filters=filters)
        return self.scorer.search_many(queries, k=self.k, candidates=self.candidates)

    def _score_queries(self, queries: list[str | None], qids: list[str | None], start: int,
                       cols: dict[str, list[Any]], filters: list[str | None] | None = None) -> None:
        """Top-k per query; an optional ``filter`` column (e.g. ``category=Sofas; price<=500``,
        see :mod:`pipeline.data.filters`) restricts each row's products. The cache key is the
        query plus its filter, since both determine the answer."""
        cleaned = [clean_query(q) for q in queries]
        filters = filters or [None] * len(queries)
        keys = [None if q is None else (q if not f else f"{q}\x00{f}") for q, f in zip(cleaned, filters)]
        todo = list(dict.fromkeys((key, q, f) for key, q, f in zip(keys, cleaned, filters)
                                  if key is not None and self.cache.get(key) is None))
        for f in dict.fromkeys(f for _, _, f in todo):
            group = [(key, q) for key, q, g in todo if g == f]
            for (key, _), hits in zip(group, self._search([q for _, q in group], f)):
                self.cache.put(key, hits)
        self.computed += len(todo)
        fresh = {key: self.cache.get(key) for key, _, _ in todo}
        for offset, (raw, clean, qid, key, f) in enumerate(zip(queries, cleaned, qids, keys, filters)):
            row = start + offset
            if clean is None or key is None:
                self._skip("empty query", row)
                continue
            hits = fresh.get(key) or self.cache.get(key)
            if hits is None:  # evicted within this batch (cache smaller than the batch)
                hits = self._search([clean], f)[0]
            for hit in hits:
                self._emit(cols, row, qid, raw, hit)

    def _score_pairs(self, queries: list[str | None], qids: list[str | None], pids: list[str | None],
                     start: int, cols: dict[str, list[Any]]) -> None:
        cleaned = [clean_query(q) for q in queries]
        per_query: dict[str, list[str]] = {}
        for clean, pid in zip(cleaned, pids):
            if clean is not None and pid is not None:
                per_query.setdefault(clean, [])
                if pid not in per_query[clean]:
                    per_query[clean].append(pid)
        scored: dict[tuple[str, str], Any] = {}
        for clean, products in per_query.items():
            products = [p for p in products if self.scorer.has_product(p)]
            if products:
                for hit in self.scorer.score_pairs(clean, products):
                    scored[(clean, hit.product_id)] = hit
                self.computed += len(products)
        for offset, (raw, clean, qid, pid) in enumerate(zip(queries, cleaned, qids, pids)):
            row = start + offset
            if clean is None:
                self._skip("empty query", row)
            elif pid is None:
                self._skip("missing product_id", row)
            elif (clean, pid) not in scored:
                self._skip("product_id not in catalog", row)
            else:
                self._emit(cols, row, qid, raw, scored[(clean, pid)])
