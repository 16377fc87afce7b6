"""The HTTP routes: search, score given pairs, health, metrics, admin reload and the web page.

Every failure a client can cause is a 4xx with a one-line ``{"error": "..."}`` body; an
unexpected one is a 500 with the same shape (the traceback goes to the server log only), and
the service keeps serving either way.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.config import DEFAULT_CANDIDATES
from pipeline.core.errors import ShoprankError
from pipeline.search import MAX_QUERY_CHARS, SearchHit, clean_query
from pipeline.serve.metrics import ServiceMetrics, encoder_cache_stats
from pipeline.serve.pool import ModelPool, Overloaded
from pipeline.serve.settings import MAX_BATCH_QUERIES, MAX_CANDIDATES, MAX_K, MAX_SCORE_PRODUCTS, ServeSettings
from pipeline.serve.state import Loaded, ReloadBusy, ReloadFailed, SearcherSlot

log = logging.getLogger("shoprank.serve")

#: Routes whose metrics are labelled by path; anything else is "other", so scanners probing
#: random URLs cannot blow up the label set.
ROUTES = ("/", "/search", "/score", "/healthz", "/readyz", "/metrics", "/admin/reload", "/static", "/docs",
          "/openapi.json")
#: Seconds a client is told to wait after a 503 (overload, or models still loading).
RETRY_AFTER_S = 1


class ApiError(Exception):
    """A client-facing failure: HTTP status, one-line message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class SearchBatch(BaseModel):
    """POST /search body."""

    model_config = ConfigDict(extra="forbid")
    queries: list[str] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)
    k: int = Field(10, ge=1, le=MAX_K)
    candidates: int = Field(DEFAULT_CANDIDATES, ge=1, le=MAX_CANDIDATES)


class ScoreRequest(BaseModel):
    """POST /score body: one query and the products to score for it."""

    model_config = ConfigDict(extra="forbid")
    query: str
    product_ids: list[str] = Field(min_length=1, max_length=MAX_SCORE_PRODUCTS)


class ReloadRequest(BaseModel):
    """POST /admin/reload body (optional): new artefact paths; omitted ones stay as they are."""

    model_config = ConfigDict(extra="forbid")
    index_dir: str | None = None
    reranker: str | None = None
    catalog: str | None = None
    student: str | None = None


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the API."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def checked_query(raw: str) -> str:
    """A query as the searcher will see it; too long is refused here (the CLI cuts instead,
    but an API client should learn that its input was not searched as sent)."""
    try:
        text = clean_query(raw)
    except ShoprankError as exc:
        raise ApiError(422, str(exc)) from None
    if len(" ".join(raw.split())) > MAX_QUERY_CHARS:
        raise ApiError(422, f"query is longer than {MAX_QUERY_CHARS} characters")
    return text


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def hit_json(loaded: Loaded, hit: SearchHit) -> dict[str, Any]:
    """One result: the `pipeline search --json` row, the fused task score the page explains,
    and the catalog's display columns."""
    row = {key: (_finite(v) if isinstance(v, float) else v) for key, v in hit.as_dict().items()}
    if hit.probs:
        from rerank.fusion import fuse

        tasks = tuple(hit.probs)
        row["expected_value"] = float(fuse(np.array([[hit.probs[t] for t in tasks]]), tasks,
                                           loaded.searcher.weights)[0])
    row.update(loaded.display(hit.product_id))
    return row


def provenance(loaded: Loaded) -> dict[str, Any]:
    """What produced the scores: artefact ids, tasks and the fusion the scores come from."""
    from rerank.fusion import DEFAULT_WEIGHTS, NORMALISATION

    searcher = loaded.searcher
    out: dict[str, Any] = {"reranked": searcher.reranked, "tasks": list(searcher.tasks),
                           "models": searcher.manifest_ids()}
    if searcher.reranked:
        weights = searcher.weights if searcher.weights is not None else DEFAULT_WEIGHTS
        out["fusion"] = {"weights": {t: float(weights.get(t, 0.0)) for t in searcher.tasks},
                         "retrieval_weight": searcher.retrieval_weight, "normalisation": NORMALISATION}
    return out


class MetricsMiddleware:
    """Counts, times and tracks in-flight requests (pure ASGI, so streaming is untouched)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = "/static" if path.startswith("/static/") else path if path in ROUTES else "other"
        status = 500
        started = time.perf_counter()

        async def capture(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe(route, status, time.perf_counter() - started)


def create_app(settings: ServeSettings, slot: SearcherSlot | None = None) -> FastAPI:
    """The service. Models load in a background thread when the app starts (/readyz says
    when), so health checks answer at once; ``slot`` lets tests inject a loader."""
    slot = slot or SearcherSlot(settings)
    pool = ModelPool(settings.workers, settings.max_queue)
    metrics = ServiceMetrics(lambda: encoder_cache_stats(slot.current.searcher) if slot.current else None,
                             lambda: {"pending": pool.pending, "capacity": pool.capacity})

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if slot.current is None:
            threading.Thread(target=slot.load_initial, name="shoprank-load", daemon=True).start()
        yield
        pool.shutdown()

    app = FastAPI(title="shoprank", summary="Two-stage product search over HTTP", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.slot, app.state.pool, app.state.metrics = slot, pool, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    static = resources.files("pipeline.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(ShoprankError)
    async def _shoprank_error(_request: Request, exc: ShoprankError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"no such page: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    # ------------------------------------------------------------------ helpers
    def current() -> Loaded:
        loaded = slot.current
        if loaded is None:
            why = f"models failed to load: {slot.last_error}" if slot.last_error else "models are still loading"
            raise ApiError(503, why, {"Retry-After": str(RETRY_AFTER_S)})
        return loaded

    async def on_model_thread(fn: Callable[[], Any]) -> Any:
        try:
            return await pool.run(fn)
        except Overloaded:
            metrics.rejected.inc()
            raise ApiError(503, "server busy: too many requests waiting; retry shortly",
                           {"Retry-After": str(RETRY_AFTER_S)}) from None

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Models loaded (readiness): 503 until the first load succeeds."""
        loaded = current()
        return JSONResponse({"status": "ready", **provenance(loaded), "artefacts": loaded.artefacts.describe(),
                             "loaded_at": loaded.loaded_at, "load_seconds": loaded.load_seconds,
                             "last_reload_error": slot.last_error})

    @app.get("/search")
    async def search_one(q: str = Query(..., description="What the shopper typed."),
                         k: int = Query(10, ge=1, le=MAX_K),
                         candidates: int = Query(DEFAULT_CANDIDATES, ge=1, le=MAX_CANDIDATES)) -> JSONResponse:
        """Top-k products for one query, with the three probabilities and the fused score."""
        query = checked_query(q)
        loaded = current()
        hits = await on_model_thread(lambda: loaded.searcher.search(query, k=k, candidates=candidates))
        return JSONResponse({"query": query, "k": k, "candidates": candidates, **provenance(loaded),
                             "hits": [hit_json(loaded, h) for h in hits]})

    @app.post("/search")
    async def search_batch(body: SearchBatch) -> JSONResponse:
        """Several queries in one request (answered one by one, as the CLI does)."""
        queries = [checked_query(q) for q in body.queries]
        loaded = current()
        results = await on_model_thread(
            lambda: loaded.searcher.search_many(queries, k=body.k, candidates=body.candidates))
        return JSONResponse({"k": body.k, "candidates": body.candidates, **provenance(loaded),
                             "results": [{"query": q, "hits": [hit_json(loaded, h) for h in hits]}
                                         for q, hits in zip(queries, results)]})

    @app.post("/score")
    async def score(body: ScoreRequest) -> JSONResponse:
        """Reranker probabilities for given products (no retrieval; ``score`` is the fused
        task score without the first-stage blend, as in `score-logs` on given pairs)."""
        query = checked_query(body.query)
        loaded = current()
        unknown = [p for p in body.product_ids if not loaded.searcher.has_product(p)]
        if unknown:
            raise ApiError(422, f"product_id {unknown[0]!r} is not in the catalog"
                           + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        hits = await on_model_thread(lambda: loaded.searcher.score_pairs(query, body.product_ids))
        return JSONResponse({"query": query, **provenance(loaded), "hits": [hit_json(loaded, h) for h in hits]})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/admin/reload")
    async def reload(request: Request, body: ReloadRequest | None = None) -> JSONResponse:
        """Load new artefacts beside the old ones and swap (needs ``Authorization: Bearer <token>``)."""
        check_admin(settings.admin_token, request.headers.get("authorization"))
        try:
            report = await asyncio.to_thread(slot.reload, body.model_dump() if body else None)
        except ReloadBusy as exc:
            raise ApiError(409, str(exc)) from None
        except ReloadFailed as exc:
            metrics.reloads.labels(outcome="failed").inc()
            raise ApiError(422, str(exc)) from None
        metrics.reloads.labels(outcome="ok").inc()
        return JSONResponse(report)

    return app


def check_admin(token: str | None, authorization: str | None) -> None:
    """Admin routes exist only with a token, and then only for requests that present it."""
    if token is None:
        raise ApiError(403, "admin routes are disabled; start the service with --admin-token to enable them")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong admin token (send Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})


def validation_message(exc: RequestValidationError) -> str:
    """The first validation problem as one line: where, then what."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request body"
    kind = {"query": "query parameter ", "body": ""}.get(str((first.get("loc") or ("",))[0]), "")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{kind}{where}: {first.get('msg', 'invalid')}{more}"
