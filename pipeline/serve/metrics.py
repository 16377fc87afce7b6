"""Prometheus metrics of one service instance (GET /metrics).

Each app gets its own registry, so several apps in one process (tests, the load benchmark)
never share or double-register counters. Query-cache figures are read from the *current*
searcher's encoder at scrape time, so they are gauges: a reload starts a fresh cache.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Latency buckets (seconds) around what a two-stage search costs on CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LiveCollector(Collector):
    """Gauges computed when scraped: the query-vector cache and the model pool."""

    def __init__(self, cache_stats: Callable[[], dict[str, int] | None], pool_stats: Callable[[], dict[str, int]]) -> None:
        self._cache_stats = cache_stats
        self._pool_stats = pool_stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._cache_stats()
        if stats is not None:
            looked_up = stats["hits"] + stats["misses"]
            yield GaugeMetricFamily("shoprank_query_cache_hits", "Query-vector cache hits since the models loaded",
                                    value=stats["hits"])
            yield GaugeMetricFamily("shoprank_query_cache_misses", "Query-vector cache misses since the models loaded",
                                    value=stats["misses"])
            yield GaugeMetricFamily("shoprank_query_cache_hit_ratio", "Query-vector cache hits / lookups",
                                    value=stats["hits"] / looked_up if looked_up else 0.0)
        pool = self._pool_stats()
        yield GaugeMetricFamily("shoprank_model_pending", "Model calls running or waiting", value=pool["pending"])
        yield GaugeMetricFamily("shoprank_model_capacity", "Model calls allowed at once (threads + queue)",
                                value=pool["capacity"])


class ServiceMetrics:
    """Request counts by route and status, latency, in-flight requests, rejections, reloads."""

    def __init__(self, cache_stats: Callable[[], dict[str, int] | None],
                 pool_stats: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("shoprank_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("shoprank_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("shoprank_http_in_flight", "HTTP requests being answered", registry=self.registry)
        self.rejected = Counter("shoprank_overload_rejections", "Requests refused with 503 because the queue was full",
                                registry=self.registry)
        self.reloads = Counter("shoprank_reloads", "Admin reloads by outcome", ["outcome"], registry=self.registry)
        self.registry.register(_LiveCollector(cache_stats, pool_stats))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def encoder_cache_stats(searcher: Any) -> dict[str, int] | None:
    """Hit/miss counts of a searcher's query-vector cache (None when its encoder has none,
    e.g. the PyTorch encoder)."""
    cache = getattr(getattr(getattr(searcher, "retriever", None), "encoder", None), "cache", None)
    return cache.stats() if cache is not None and hasattr(cache, "stats") else None
