"""Score fusion: documented expected-value defaults, overrides, single-task models, bad weights;
the first-stage blend, its fitted weight and its round trip through the reranker manifest."""
from __future__ import annotations

import numpy as np
import pytest

from rerank.fusion import (DEFAULT_WEIGHTS, blend, fit_alpha, fuse, parse_weights, retrieval_weight, save_fusion,
                           zscore)

TASKS = ("click", "add_to_cart", "purchase")


def test_default_is_expected_value_of_an_impression() -> None:
    probs = np.array([[0.5, 0.2, 0.1], [0.2, 0.1, 0.05]], dtype=np.float32)
    expected = 0.1 * probs[:, 0] + 0.3 * probs[:, 1] + 1.0 * probs[:, 2]
    np.testing.assert_allclose(fuse(probs, TASKS), expected, rtol=1e-6)
    assert DEFAULT_WEIGHTS == {"click": 0.1, "add_to_cart": 0.3, "purchase": 1.0}


def test_purchase_likely_product_beats_click_bait_by_default_but_not_with_click_only_weights() -> None:
    click_bait = [0.60, 0.05, 0.01]   # many clicks, nobody buys
    buyable = [0.40, 0.20, 0.15]      # fewer clicks, converts
    probs = np.array([click_bait, buyable])
    assert np.argmax(fuse(probs, TASKS)) == 1
    assert np.argmax(fuse(probs, TASKS, {"click": 1.0})) == 0


def test_single_task_model_ranks_by_its_only_probability() -> None:
    probs = np.array([[0.1], [0.7], [0.3]])
    assert list(np.argsort(-fuse(probs, ("purchase",)))) == [1, 2, 0]


def test_bad_weights_are_refused() -> None:
    probs = np.array([[0.5, 0.2, 0.1]])
    with pytest.raises(ValueError, match="unknown task"):
        fuse(probs, TASKS, {"refund": 1.0})
    with pytest.raises(ValueError, match="zero weight"):
        fuse(np.array([[0.3]]), ("click",), {"purchase": 1.0})
    with pytest.raises(ValueError, match="do not match"):
        fuse(probs, ("click",))


def test_parse_weights() -> None:
    assert parse_weights(None) is None
    assert parse_weights("click=0, purchase=2") == {"click": 0.0, "purchase": 2.0}
    with pytest.raises(ValueError, match="task=value"):
        parse_weights("click")
    with pytest.raises(ValueError, match="not a number"):
        parse_weights("click=lots")


def _two_rankers() -> tuple[list[str], list[str], np.ndarray, np.ndarray, dict[str, dict[str, int]]]:
    """Three queries of four candidates: retrieval orders them right, the reranker backwards."""
    queries, pids, good, bad = [], [], [], []
    qrels: dict[str, dict[str, int]] = {}
    for q in ("q1", "q2", "q3"):
        for i in range(4):
            queries.append(q)
            pids.append(f"{q}-p{i}")
            good.append(1.0 - 0.1 * i)
            bad.append(0.1 * i)
        qrels[q] = {f"{q}-p0": 3, f"{q}-p1": 1}
    return queries, pids, np.array(bad), np.array(good), qrels


def test_blend_standardises_each_list_and_alpha_one_is_the_reranker_order() -> None:
    rerank, retrieval = np.array([0.01, 0.03, 0.02]), np.array([0.9, 0.1, 0.5])
    np.testing.assert_allclose(blend(rerank, retrieval, 1.0), zscore(rerank))
    np.testing.assert_allclose(blend(rerank, retrieval, 0.0), zscore(retrieval))
    assert zscore([2.0, 2.0]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend(rerank, retrieval, 1.5)


def test_fit_alpha_picks_the_better_ranker() -> None:
    queries, pids, bad, good, qrels = _two_rankers()
    fit = fit_alpha(queries, pids, bad, good, qrels)  # reranker wrong, retrieval right
    # the reranker is retrieval reversed, so every alpha < 0.5 gives retrieval's (perfect) order:
    # the fit takes the middle of that plateau, mostly retrieval
    assert fit["alpha"] == 0.2 and fit["retrieval_weight"] == pytest.approx(0.8) and fit["queries"] == 3
    assert fit["by_alpha"]["0"] == fit["by_alpha"]["0.2"] == pytest.approx(1.0) and fit["by_alpha"]["1"] < 1.0
    assert fit_alpha(queries, pids, good, bad, qrels)["alpha"] == 0.8  # and the other way round
    assert fit_alpha(queries, pids, bad, good, qrels, grid=(0.0, 1.0))["retrieval_weight"] == 1.0
    with pytest.raises(ValueError, match="no.*judgements"):
        fit_alpha(queries, pids, good, bad, {"other": {"x": 1}})


def test_fusion_weight_round_trips_through_the_manifest_into_the_searcher(tmp_path) -> None:
    import pandas as pd

    from pipeline.core.artifacts import build_manifest, read_manifest, write_manifest
    from pipeline.search import TwoStageSearcher

    write_manifest(tmp_path, build_manifest("reranker", tasks=list(TASKS)))
    assert retrieval_weight(read_manifest(tmp_path)) == 0.0  # older models: reranker order alone
    before = read_manifest(tmp_path)
    save_fusion(tmp_path, {"retrieval_weight": 0.7, "alpha": 0.3})
    manifest = read_manifest(tmp_path, kind="reranker")
    assert retrieval_weight(manifest) == 0.7 and manifest["id"] == before["id"]
    assert manifest["fusion"]["normalisation"] == "zscore-per-query"

    ids = ["a", "b", "c"]

    class Retriever:
        catalog_ids = ids
        encoder = None
        manifest = {"id": "idx"}

        def search(self, queries, k):
            return [ids[:k]] * len(queries), [np.array([0.9, 0.5, 0.1])[:k]] * len(queries)

    class Reranker:
        tasks = ("purchase",)
        needs_torch = False

        def __init__(self, manifest):
            self.manifest = manifest

        def predict(self, queries, texts):
            return np.array([[0.1], [0.2], [0.3]], dtype=np.float32)[: len(texts)]

    catalog = pd.DataFrame({"product_id": ids, "title": ["A", "B", "C"], "brand": "", "category": "", "attributes": ""})
    blended = TwoStageSearcher(Retriever(), Reranker(manifest), catalog)
    assert blended.retrieval_weight == 0.7 and blended.manifest_ids()["fusion"] == "retrieval_weight=0.7"
    hits = blended.search("x", k=3, candidates=3)
    assert [h.product_id for h in hits] == ["a", "b", "c"]  # retrieval dominates at weight 0.7
    np.testing.assert_allclose([h.score for h in hits], blend([0.1, 0.2, 0.3], [0.9, 0.5, 0.1], 0.3), atol=1e-6)
    assert hits[0].probs == {"purchase": pytest.approx(0.1)}  # probabilities stay the model's
    alone = TwoStageSearcher(Retriever(), Reranker(before), catalog)
    assert [h.product_id for h in alone.search("x", k=3, candidates=3)] == ["c", "b", "a"]
    forced = TwoStageSearcher(Retriever(), Reranker(manifest), catalog, retrieval_weight=0.0)
    assert forced.search("x", k=1)[0].product_id == "c"


def test_fit_fusion_blends_the_searchers_candidates_and_saves_the_weight(tmp_path) -> None:
    """pipeline.blend.fit_fusion on stand-ins: retrieval right, reranker backwards -> mostly retrieval."""
    import pandas as pd

    from pipeline.core.artifacts import build_manifest, read_manifest, write_manifest
    from pipeline.blend import fit_fusion
    from pipeline.data import Dataset

    ids = [f"p{i}" for i in range(4)]
    catalog = pd.DataFrame({"product_id": ids, "title": ids, "brand": "", "category": "", "attributes": ""})
    queries = pd.DataFrame({"query_id": ["1", "2", "3"], "query": ["a", "b", "c"],
                            "split": ["valid", "valid", "train"]})
    qrels = pd.DataFrame({"query": ["a", "a", "b", "b"], "product_id": ["p0", "p1", "p0", "p1"],
                          "relevance": [3, 1, 3, 1]})

    class Retriever:
        def search(self, qs, k):
            return [ids[:k]] * len(qs), [np.array([0.9, 0.7, 0.5, 0.3])[:k]] * len(qs)

    class Reranker:
        tasks = ("click",)

        def predict(self, qs, texts, batch_size=64):
            return np.array([[float(t[1:]) / 10] for t in texts])  # p3 best: backwards

    write_manifest(tmp_path, build_manifest("reranker", tasks=["click"]))
    fit = fit_fusion(Dataset(catalog, queries=queries, qrels=qrels), Reranker(), Retriever(),
                     reranker_dir=tmp_path, candidates=4)
    assert fit["queries"] == 2 and fit["split"] == "valid" and fit["graded_by"] == "qrels"
    assert fit["retrieval_weight"] > 0.5 and fit["by_alpha"]["0"] == pytest.approx(1.0)
    assert read_manifest(tmp_path)["fusion"]["retrieval_weight"] == fit["retrieval_weight"]
