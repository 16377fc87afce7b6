"""pipeline serve: the HTTP API (FastAPI TestClient).

Fast tests run the app on a stand-in searcher (bounded queue, readiness, hot reload with a
request in flight, admin token, one-line errors); the `slow` ones run it on the quick demo's
real artefacts and check it answers exactly as `pipeline search --json` does, and that a reload
under concurrent searches fails none of them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.search import SearchHit  # noqa: E402
from pipeline.serve import Artefacts, ServeSettings  # noqa: E402
from pipeline.serve.app import create_app  # noqa: E402
from pipeline.serve.pool import ModelPool, Overloaded  # noqa: E402
from pipeline.serve.state import Loaded, SearcherSlot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("click", "add_to_cart", "purchase")


class StubSearcher:
    """Answers like a TwoStageSearcher, named by ``tag``; ``gate`` (when set) holds every call."""

    def __init__(self, tag: str, gate: threading.Event | None = None) -> None:
        self.tag, self.gate = tag, gate
        self.reranked, self.tasks, self.weights, self.retrieval_weight = True, TASKS, None, 0.5
        self.started = threading.Event()

    def manifest_ids(self) -> dict[str, str]:
        return {"index": self.tag, "reranker": self.tag, "backend": "stub"}

    def has_product(self, product_id: str) -> bool:
        return product_id.startswith("P")

    def _wait(self) -> None:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)

    def search(self, query: str, k: int = 10, candidates: int = 50) -> list[SearchHit]:
        return self.search_many([query], k, candidates)[0]

    def search_many(self, queries: list[str], k: int = 10, candidates: int = 50) -> list[list[SearchHit]]:
        self._wait()
        return [[SearchHit(1, "P1", f"{q} ({self.tag})", 0.9, dict(zip(TASKS, (0.5, 0.2, 0.1))), 1.0)]
                for q in queries]

    def score_pairs(self, query: str, product_ids: list[str]) -> list[SearchHit]:
        return [SearchHit(None, p, p, float("nan"), dict(zip(TASKS, (0.4, 0.2, 0.1))), 0.2) for p in product_ids]


def stub_slot(*searchers: StubSearcher, fail_with: list[Exception] | None = None,
              first_gate: threading.Event | None = None) -> SearcherSlot:
    """A slot whose loads hand out ``searchers`` in order (or raise the queued failures)."""
    queue, failures = list(searchers), list(fail_with or [])

    def load(artefacts: Artefacts, _settings: ServeSettings) -> Loaded:
        if first_gate is not None:
            assert first_gate.wait(10)
        if failures:
            raise failures.pop(0)
        return Loaded(queue.pop(0), artefacts)  # type: ignore[arg-type]

    return SearcherSlot(ServeSettings(), loader=load)


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_readyz_is_503_until_models_load_and_healthz_answers_meanwhile():
    gate = threading.Event()
    with TestClient(create_app(ServeSettings(), stub_slot(StubSearcher("a"), first_gate=gate))) as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json() == {"error": "models are still loading"}
        assert response.headers["retry-after"] == "1"
        assert client.get("/search", params={"q": "sofa"}).status_code == 503
        gate.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json()["models"]["index"] == "a"


def start_blocked_request(client: TestClient, searcher: StubSearcher) -> tuple[threading.Thread, dict[str, Any]]:
    """Send a search that blocks inside the stub searcher until its gate opens; return once it
    is inside, with the thread and the dict its response lands in (key ``r``)."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=client.get("/search", params={"q": "sofa"})))
    thread.start()
    assert searcher.started.wait(10)
    return thread, result


def test_full_queue_answers_503_with_retry_after_and_keeps_serving():
    gate = threading.Event()
    busy = StubSearcher("a", gate)
    settings = ServeSettings(workers=1, max_queue=0)
    with TestClient(create_app(settings, stub_slot(busy))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        thread, first = start_blocked_request(client, busy)
        refused = client.get("/search", params={"q": "lamp"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert set(refused.json()) == {"error"}
        gate.set()
        thread.join(10)
        assert first["r"].status_code == 200
        assert client.get("/search", params={"q": "lamp"}).status_code == 200
        assert "shoprank_overload_rejections_total 1.0" in client.get("/metrics").text


def test_pool_counts_a_call_until_its_thread_finishes():
    import asyncio

    async def scenario() -> None:
        pool, gate = ModelPool(workers=1, max_queue=1), threading.Event()
        first = asyncio.ensure_future(pool.run(gate.wait))
        second = asyncio.ensure_future(pool.run(lambda: 2))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await pool.run(lambda: 3)
        first.cancel()  # the client went away; its thread still holds the slot
        await asyncio.sleep(0.05)
        assert pool.pending == 2
        gate.set()
        assert await second == 2
        await asyncio.sleep(0.05)
        assert pool.pending == 0
        pool.shutdown()

    asyncio.run(scenario())


def test_reload_swaps_atomically_and_in_flight_requests_finish_on_the_old_models():
    gate = threading.Event()
    old, new = StubSearcher("old", gate), StubSearcher("new")
    settings = ServeSettings(admin_token="t0ken", workers=2)
    with TestClient(create_app(settings, stub_slot(old, new))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        thread, in_flight = start_blocked_request(client, old)
        reload = client.post("/admin/reload", headers={"Authorization": "Bearer t0ken"})
        assert reload.status_code == 200, reload.text
        assert reload.json()["previous"]["index"] == "old" and reload.json()["models"]["index"] == "new"
        assert client.get("/search", params={"q": "sofa"}).json()["models"]["index"] == "new"
        gate.set()
        thread.join(10)
        assert in_flight["r"].json()["models"]["index"] == "old"
        assert in_flight["r"].json()["hits"][0]["title"] == "sofa (old)"


def test_failed_reload_keeps_serving_the_old_models_and_reports_why():
    from pipeline.core.errors import ArtifactError

    slot = stub_slot(StubSearcher("old"), fail_with=[])
    settings = ServeSettings(admin_token="t0ken")
    with TestClient(create_app(settings, slot)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        slot._loader = lambda *_: (_ for _ in ()).throw(ArtifactError("index.faiss: checksum mismatch"))
        failed = client.post("/admin/reload", headers={"Authorization": "Bearer t0ken"})
        assert failed.status_code == 422
        assert failed.json() == {"error": "reload failed, still serving the previous models: "
                                          "index.faiss: checksum mismatch"}
        ready = client.get("/readyz").json()
        assert ready["models"]["index"] == "old" and ready["last_reload_error"] == "index.faiss: checksum mismatch"
        assert client.get("/search", params={"q": "sofa"}).status_code == 200
        assert 'shoprank_reloads_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_admin_reload_is_off_without_a_token_and_needs_the_right_one():
    with TestClient(create_app(ServeSettings(), stub_slot(StubSearcher("a")))) as client:
        assert client.post("/admin/reload").status_code == 403
    with TestClient(create_app(ServeSettings(admin_token="t0ken"), stub_slot(StubSearcher("a")))) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "t0ken"}):
            response = client.post("/admin/reload", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


BAD_REQUESTS = [
    ("get", "/search?q=", None, 422, "query is empty"),
    ("get", "/search?q=%20%20", None, 422, "query is empty"),
    ("get", "/search?q=" + "a" * 600, None, 422, "longer than 512 characters"),
    ("get", "/search", None, 422, "query parameter q: Field required"),
    ("get", "/search?q=sofa&k=0", None, 422, "query parameter k:"),
    ("get", "/search?q=sofa&k=101", None, 422, "query parameter k:"),
    ("get", "/search?q=sofa&k=ten", None, 422, "query parameter k:"),
    ("get", "/search?q=sofa&candidates=100000", None, 422, "query parameter candidates:"),
    ("post", "/search", b"{not json", 422, "request body is not valid JSON"),
    ("post", "/search", {"queries": []}, 422, "queries:"),
    ("post", "/search", {"queries": ["sofa"], "k": -1}, 422, "k:"),
    ("post", "/search", {"queries": ["sofa", ""]}, 422, "query is empty"),
    ("post", "/search", {"query": "sofa"}, 422, "queries: Field required"),
    ("post", "/score", {"query": "sofa", "product_ids": ["X9", "Y1"]}, 422,
     "product_id 'X9' is not in the catalog (and 1 more)"),
    ("post", "/score", {"query": "sofa", "product_ids": []}, 422, "product_ids:"),
    ("post", "/score", {"query": "sofa", "product_ids": [7]}, 422, "product_ids.0:"),
    ("get", "/no/such/page", None, 404, "no such page: /no/such/page"),
    ("put", "/search", None, 405, "Method Not Allowed"),
]


def check_bad_requests(client: TestClient) -> None:
    """Each bad request: its status and a one-line ``{"error": ...}``; the server answers after."""
    for method, url, body, status, message in BAD_REQUESTS:
        kwargs: dict[str, Any] = {}
        if isinstance(body, bytes):
            kwargs = {"content": body, "headers": {"content-type": "application/json"}}
        elif body is not None:
            kwargs = {"json": body}
        response = client.request(method, url, **kwargs)
        assert response.status_code == status, (url, response.text)
        payload = response.json()
        assert list(payload) == ["error"] and message in payload["error"] and "\n" not in payload["error"], payload
        assert "Traceback" not in response.text
    assert client.get("/search", params={"q": "sofa"}).status_code == 200


def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving():
    with TestClient(create_app(ServeSettings(), stub_slot(StubSearcher("a")))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        check_bad_requests(client)


def test_unexpected_failure_is_a_one_line_500_without_traceback():
    searcher = StubSearcher("a")
    searcher.search_many = lambda *a, **k: 1 / 0  # type: ignore[method-assign]
    with TestClient(create_app(ServeSettings(), stub_slot(searcher)), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        response = client.get("/search", params={"q": "sofa"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (ZeroDivisionError); the server log has the details"}
        assert client.get("/healthz").status_code == 200


def test_page_and_its_static_files_are_served_without_external_urls():
    with TestClient(create_app(ServeSettings(), stub_slot(StubSearcher("a")))) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'role="search"' in page.text and 'name="viewport"' in page.text
        for asset in ("/static/app.js", "/static/style.css"):
            response = client.get(asset)
            assert response.status_code == 200
            assert "http://" not in response.text and "https://" not in response.text  # no CDN, works offline


# ---------------------------------------------------------------------- real artefacts
@pytest.fixture(scope="module")
def demo_client(request: pytest.FixtureRequest) -> Any:
    """The app on the quick demo's artefacts (loaded once for this module's slow tests)."""
    root, _ = request.getfixturevalue("demo_run")
    settings = ServeSettings(Artefacts(root / "indexes/default", root / "models/reranker", root / "data/sample/catalog.parquet"),
                             admin_token="t0ken")
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=120)
        yield root, client


def _common(hit: dict[str, Any]) -> dict[str, Any]:
    keys = ("rank", "product_id", "title", "retrieval_score", "p_click", "p_add_to_cart", "p_purchase", "score")
    return {key: hit[key] for key in keys}


@pytest.mark.slow
def test_get_search_equals_pipeline_search_json(demo_client):
    root, client = demo_client
    query = "comfy couch for the living room"
    cli = subprocess.run([sys.executable, "-m", "pipeline", "search", query, "--k", "7", "--candidates", "30", "--json"],
                         cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    got = client.get("/search", params={"q": query, "k": 7, "candidates": 30}).json()
    assert got["models"] == expected["models"] and got["tasks"] == expected["tasks"]
    assert [_common(h) for h in got["hits"]] == [_common(h) for h in expected["results"][0]["hits"]]
    assert len(got["hits"]) == 7 and {"category", "price"} <= set(got["hits"][0])


@pytest.mark.slow
def test_batch_search_score_and_metrics_on_real_models(demo_client):
    _, client = demo_client
    queries = ["red running shoes", "comfy couch for the living room"]
    batch = client.post("/search", json={"queries": queries, "k": 5, "candidates": 30}).json()
    for query, item in zip(queries, batch["results"]):
        single = client.get("/search", params={"q": query, "k": 5, "candidates": 30}).json()
        assert [_common(h) for h in item["hits"]] == [_common(h) for h in single["hits"]]
    ids = [h["product_id"] for h in batch["results"][0]["hits"][:3]]
    scored = client.post("/score", json={"query": queries[0], "product_ids": ids})
    assert scored.status_code == 200
    hits = scored.json()["hits"]
    assert [h["product_id"] for h in hits] == ids and all(h["retrieval_score"] is None for h in hits)
    assert all(0 <= h["p_purchase"] <= h["p_add_to_cart"] <= h["p_click"] <= 1 for h in hits)
    metrics = client.get("/metrics").text
    assert 'shoprank_http_requests_total{route="/search",status="200"}' in metrics
    assert "shoprank_http_request_seconds_bucket" in metrics and "shoprank_http_in_flight" in metrics
    ratio = float(next(line.split()[1] for line in metrics.splitlines()
                       if line.startswith("shoprank_query_cache_hit_ratio ")))
    assert ratio > 0  # the single searches above repeated the batch's queries
    check_bad_requests(client)


@pytest.mark.slow
def test_reload_of_a_corrupt_index_keeps_serving_then_a_good_one_swaps(demo_client, tmp_path):
    root, client = demo_client
    auth = {"Authorization": "Bearer t0ken"}
    before = client.get("/search", params={"q": "sofa", "k": 3}).json()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(root / "indexes/default", corrupt)
    index_file = next(p for p in corrupt.iterdir() if p.suffix == ".faiss")
    index_file.write_bytes(index_file.read_bytes()[:-64] + b"\0" * 64)
    failed = client.post("/admin/reload", json={"index_dir": str(corrupt)}, headers=auth)
    assert failed.status_code == 422 and failed.json()["error"].startswith("reload failed, still serving")
    assert client.get("/search", params={"q": "sofa", "k": 3}).json()["hits"] == before["hits"]
    good = tmp_path / "good"
    shutil.copytree(root / "indexes/default", good)
    swapped = client.post("/admin/reload", json={"index_dir": str(good)}, headers=auth)
    assert swapped.status_code == 200, swapped.text
    assert client.get("/readyz").json()["artefacts"]["index_dir"] == str(good)
    assert client.get("/search", params={"q": "sofa", "k": 3}).json()["hits"] == before["hits"]


@pytest.mark.slow
def test_reload_under_concurrent_searches_fails_nothing_and_switches_the_index_id(demo_run, tmp_path):
    """Searches keep arriving from several threads while /admin/reload swaps in a rebuilt index
    (`index compact` of a copy: same vectors, new manifest id). Its own app, so the module's
    shared client keeps the original models."""
    from retrieval.index import compact_index

    root, _ = demo_run
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(root / "indexes/default", rebuilt)
    compact_index(rebuilt)
    new_id = json.loads((rebuilt / "manifest.json").read_text(encoding="utf-8"))["id"]
    settings = ServeSettings(Artefacts(root / "indexes/default", root / "models/reranker",
                                       root / "data/sample/catalog.parquet"), admin_token="t0ken")
    queries = ["comfy couch", "red running shoes", "desk lamp", "kids rain boots"]
    answers: list[dict[str, Any]] = []
    stop = threading.Event()

    def keep_searching(client: TestClient, offset: int) -> None:
        i = offset
        while not stop.is_set():
            query, sent = queries[i % len(queries)], time.monotonic()
            try:
                response = client.get("/search", params={"q": query, "k": 5, "candidates": 20})
                status, body = response.status_code, response.json()
            except Exception as exc:  # noqa: BLE001  (any exception is a failed request, recorded)
                status, body = -1, {"error": repr(exc)}
            answers.append({"sent": sent, "answered": time.monotonic(), "status": status, "query": query,
                            "index": body.get("models", {}).get("index"),
                            "ids": [h["product_id"] for h in body.get("hits", [])], "error": body.get("error")})
            i += 1

    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=120)
        old_id = client.get("/readyz").json()["models"]["index"]
        assert new_id != old_id
        threads = [threading.Thread(target=keep_searching, args=(client, n), daemon=True) for n in range(4)]
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: len(answers) >= 8, timeout=60)
            reload_sent = time.monotonic()
            reload = client.post("/admin/reload", json={"index_dir": str(rebuilt)},
                                 headers={"Authorization": "Bearer t0ken"})
            reloaded = time.monotonic()
            wait_until(lambda: sum(a["sent"] >= reloaded for a in answers) >= 8, timeout=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert reload.status_code == 200, reload.text
    assert reload.json()["previous"]["index"] == old_id and reload.json()["models"]["index"] == new_id
    assert [a for a in answers if a["status"] != 200] == []
    before = [a for a in answers if a["answered"] <= reload_sent]
    after = [a for a in answers if a["sent"] >= reloaded]
    assert before and after
    assert {a["index"] for a in before} == {old_id} and {a["index"] for a in after} == {new_id}
    assert {a["index"] for a in answers} <= {old_id, new_id}
    old_hits = {a["query"]: a["ids"] for a in before}
    assert all(a["ids"] == old_hits[a["query"]] for a in after if a["query"] in old_hits)  # same vectors
