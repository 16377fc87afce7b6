"""A bounded least-recently-used cache with hit counts (a leaf: stages may import it).

Why our own and not ``functools.lru_cache``: callers need explicit ``get``/``put`` (they
compute misses in one batch, not one call per key) and the hit/miss counts for reports.
Used for query vectors (:mod:`retrieval.onnx_encoder`) and query results (:mod:`pipeline.scoring`).
A lock guards each call: the HTTP service (:mod:`pipeline.serve`) encodes queries from several
threads, and interleaved ``OrderedDict`` reorders and evictions could otherwise lose an entry
or raise ``KeyError``.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """``maxsize`` entries at most (0 disables caching); the least recently used goes first."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, V] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: V) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._items), "hits": self.hits, "misses": self.misses}
