"""The sample world: deterministic, contract-valid, and a real ranking problem
(vocabulary mismatch, graded relevance, a funnel in the documented ranges)."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from pipeline.data import load_dataset, vocabulary_mismatch_queries
from pipeline.world import vocab as V
from pipeline.world.sample import generate_sample, misspell, sample_stats, write_sample
from pipeline.core.text import content_words

FILES = ("catalog.parquet", "engagement.parquet", "queries.parquet", "qrels.parquet", "positions.parquet")


@pytest.fixture(scope="module")
def world():
    return generate_sample(n_products=1200, n_queries=250, seed=5)


def test_same_seed_gives_byte_identical_parquet(tmp_path) -> None:
    digests = []
    for name in ("a", "b"):
        write_sample(tmp_path / name, n_products=300, n_queries=60, seed=1)
        digests.append([hashlib.sha256((tmp_path / name / f).read_bytes()).hexdigest() for f in FILES])
    assert digests[0] == digests[1]
    write_sample(tmp_path / "c", n_products=300, n_queries=60, seed=2)
    other = [hashlib.sha256((tmp_path / "c" / f).read_bytes()).hexdigest() for f in FILES]
    assert other != digests[0]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([*FILES, "README.md"])


def test_fixture_world_validates_and_readme_states_stats(tiny_data_dir) -> None:
    ds = load_dataset(tiny_data_dir)
    assert ds.report["engagement_unknown_products"] == 0
    assert {"train", "valid", "test"} <= set(ds.queries["split"]) <= {"train", "valid", "test", "unseen"}
    readme = (tiny_data_dir / "README.md").read_text()
    mismatch = vocabulary_mismatch_queries(ds.queries, ds.qrels, ds.catalog)
    assert f"| mismatch_queries | {len(mismatch)} |" in readme
    assert "click_rate" in readme and "purchase_rate" in readme


def test_shop_is_believable(world) -> None:
    cat = world.catalog
    assert cat["product_id"].is_unique
    assert cat["category"].nunique() >= 20 and cat["brand"].nunique() >= 10
    assert (cat["title"].str.len() > 0).all() and (cat["price"] > 0).all()
    assert cat["attributes"].str.contains("colour: ").all() and cat["attributes"].str.contains("material: ").all()
    assert cat["rating"].between(1, 5).all()


def test_split_by_text_and_shared_vocabulary(world) -> None:
    q = world.queries
    assert q["query"].is_unique                       # so no text can be in two splits
    assert {"train", "valid", "test", "unseen"} == set(q["split"])
    train_words = set().union(*(content_words(t) for t in q.loc[q["split"] == "train", "query"]))
    test_words = [content_words(t) for t in q.loc[q["split"] == "test", "query"]]
    # learning transfers: most test queries reuse a word seen in training queries
    assert np.mean([bool(w & train_words) for w in test_words]) > 0.6


def test_vocabulary_mismatch_share_at_least_a_quarter(world) -> None:
    mismatch = vocabulary_mismatch_queries(world.queries, world.qrels, world.catalog)
    share = len(mismatch) / len(world.queries)
    assert share >= 1 / 4
    kinds = world.queries.set_index("query").loc[sorted(mismatch), "intent"]
    assert {"synonym", "jargon", "usecase", "misspelling"} <= set(kinds)
    exact = world.queries.loc[world.queries["intent"] == "exact", "query"]
    assert not set(exact) & mismatch                  # catalog-noun queries always match lexically


def test_graded_relevance_and_several_relevant_per_query(world) -> None:
    qr = world.qrels
    assert set(qr["relevance"].unique()) == {0, 1, 2, 3}
    per_query = qr[qr["relevance"] >= 2].groupby("query").size().reindex(world.queries["query"]).fillna(0)
    assert per_query.min() >= 3
    exact = qr[qr["relevance"] >= 3].groupby("query").size().reindex(world.queries["query"]).fillna(0)
    assert (exact >= 1).mean() > 0.95
    # grade 3 products are in the query's category; grade 0 products are not
    cat = world.catalog.set_index("product_id")["category"]
    target = world.queries.set_index("query")["category"]
    g3 = qr[qr["relevance"] == 3]
    assert (cat.loc[g3["product_id"]].to_numpy() == target.loc[g3["query"]].to_numpy()).all()
    g0 = qr[qr["relevance"] == 0]
    assert (cat.loc[g0["product_id"]].to_numpy() != target.loc[g0["query"]].to_numpy()).all()


def test_funnel_rates_and_task_differences(world) -> None:
    e = world.engagement
    assert (e["purchases"] <= e["add_to_carts"]).all() and (e["add_to_carts"] <= e["clicks"]).all()
    assert (e["clicks"] <= e["impressions"]).all()
    imp = e["impressions"].sum()
    click, cart, buy = (e[c].sum() / imp for c in ("clicks", "add_to_carts", "purchases"))
    assert 0.05 <= click <= 0.15
    assert buy < cart < click
    assert 0.005 <= buy <= 0.03
    # engagement rises with relevance, including for mismatch queries (the ranker shows them)
    merged = e.merge(world.qrels, on=["query", "product_id"])
    ctr = merged.groupby("relevance")[["clicks", "impressions"]].sum()
    rate = (ctr["clicks"] / ctr["impressions"]).to_numpy()
    assert (np.diff(rate) > 0).all()
    mismatch = vocabulary_mismatch_queries(world.queries, world.qrels, world.catalog)
    mm = merged[merged["query"].isin(mismatch)]
    assert mm.loc[mm["relevance"] >= 2, "clicks"].sum() > 0.5 * mm["clicks"].sum()
    # the impressions are not the ground truth: irrelevant products are shown too
    assert (merged["relevance"] == 0).any() and merged.loc[merged["relevance"] == 0, "impressions"].sum() > 0
    # purchase depends on price (cheaper converts more) beyond what clicks explain
    cat = world.catalog.set_index("product_id")
    merged["rel_price"] = cat.loc[merged["product_id"], "price"].to_numpy() / merged.groupby("query")["product_id"].transform(
        lambda s: cat.loc[s, "price"].median()).to_numpy()
    clicked = merged[merged["add_to_carts"] > 0]
    cheap = clicked["rel_price"] < clicked["rel_price"].median()
    conv = lambda d: d["purchases"].sum() / d["add_to_carts"].sum()  # noqa: E731
    assert conv(clicked[cheap]) > conv(clicked[~cheap])


def test_misspell_changes_every_long_word() -> None:
    rng = np.random.default_rng(0)
    for word in ("running shoe", "sofa", "raincoat", "water boiler"):
        typo = misspell(word, rng)
        assert typo != word and len(typo.split()) == len(word.split())
        assert all(a != b for a, b in zip(typo.split(), word.split()) if len(b) >= 4)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        generate_sample(n_products=10, n_queries=50, seed=1)


# ----------------------------------------------------------------------------- world v2
def _catalog_words(world) -> set[str]:
    from pipeline.data import product_text

    return set().union(*(content_words(t) for t in product_text(world.catalog)))


def test_query_words_that_must_be_learned_never_occur_in_products(world) -> None:
    """Synonyms, jargon and type synonyms are the vocabulary-mismatch surface: no product text
    may contain them, or the mismatch would be an accident of wording."""
    words = _catalog_words(world)
    for c in V.CATEGORIES:
        phrases = [*c.synonyms, *c.jargon, *(s for t in c.types for s in t.synonyms)]
        leaked = {p: sorted(content_words(p) & words) for p in phrases if content_words(p) <= words}
        assert not leaked, f"{c.key}: every word of these phrases occurs in product text: {leaked}"


def test_product_types_and_lookalike_accessories(world) -> None:
    cat = world.catalog
    nouns = [t.noun for c in V.CATEGORIES for t in c.types] + [a for c in V.CATEGORIES for a in c.accessories]
    assert all(any(n in title for n in nouns) for title in cat["title"])
    for c in V.CATEGORIES:
        assert len(c.types) >= 3 and len(c.accessories) >= 2
        assert all(c.nouns[0].lower() in a.lower() for a in c.accessories)   # look-alikes share the head noun
    assert {"type", "category", "accessory"} == set(world.queries["level"])
    # accessories of the asked-for category are complements (1) for main-product queries, never exact
    acc_nouns = {a: c.label for c in V.CATEGORIES for a in c.accessories}
    is_acc = cat["title"].map(lambda t: next((lbl for a, lbl in acc_nouns.items() if a in t), ""))
    acc_of = dict(zip(cat["product_id"], is_acc))
    main_q = world.queries[world.queries["level"] != "accessory"].set_index("query")["category"]
    qr = world.qrels[world.qrels["query"].isin(main_q.index)]
    lookalike = qr[[acc_of[p] == main_q[q] for q, p in zip(qr["query"], qr["product_id"])]]
    assert len(lookalike) > 0 and set(lookalike["relevance"]) == {1}


def test_constraints_in_most_queries_and_tens_of_exact_products(world) -> None:
    stats = sample_stats(world)
    assert stats["constraints_0_share"] <= 0.4
    assert stats["constraints_1_share"] + stats["constraints_2plus_share"] >= 0.6
    assert stats["constraints_2plus_share"] >= 0.15
    assert 1 <= stats["exact_per_query_median"] <= 40
    exact = world.qrels[world.qrels["relevance"] == 3].groupby("query").size()
    assert set(exact.index) == set(world.queries["query"])        # every query has an answer
    assert stats["bm25_top10_lookalike_share"] > 0.05


def test_unseen_split_holds_out_types_and_categories(world) -> None:
    q = world.queries
    held_cats = {c.label for c in V.CATEGORIES if c.key in V.UNSEEN_CATEGORIES}
    held = q["category"].isin(held_cats) | q["product_type"].isin(V.UNSEEN_TYPES)
    assert (q.loc[held, "split"] == "unseen").all() and (q.loc[~held, "split"] != "unseen").all()
    assert held.sum() > 0
    seen = q[q["split"].isin(["train", "valid"])]
    assert not set(seen["category"]) & held_cats and not set(seen["product_type"]) & set(V.UNSEEN_TYPES)


def test_position_log_adds_up_to_the_engagement(world) -> None:
    pos = world.positions
    assert pos["position"].between(1, 20).all() and (pos["clicks"] <= pos["impressions"]).all()
    per_pair = pos.groupby(["query", "product_id"])[["impressions", "clicks"]].sum()
    eng = world.engagement.set_index(["query", "product_id"])[["impressions", "clicks"]]
    assert per_pair.sort_index().equals(eng.sort_index())
    mean_pos = (pos["position"] * pos["impressions"]).groupby([pos["query"], pos["product_id"]]).sum() / per_pair["impressions"]
    assert np.allclose(mean_pos.sort_index().to_numpy(),
                       world.engagement.set_index(["query", "product_id"])["position"].sort_index().to_numpy(), atol=1e-3)


def test_judged_irrelevants_are_lookalikes_the_shop_showed(world) -> None:
    """Like ESCI's pools, most judged irrelevant products share a query word (so a lexical
    production ranker shows them), and the log holds shown-and-skipped irrelevant products."""
    from pipeline.data import product_text

    text = dict(zip(world.catalog["product_id"], product_text(world.catalog)))
    zero = world.qrels[world.qrels["relevance"] == 0]
    shares = [bool(content_words(q) & content_words(text[p])) for q, p in zip(zero["query"], zero["product_id"])]
    assert np.mean(shares) > 0.2
    shown = world.engagement.merge(zero, on=["query", "product_id"])
    assert shown["impressions"].sum() / world.engagement["impressions"].sum() > 0.05
    assert shown["clicks"].sum() / shown["impressions"].sum() < 0.02
    assert 0.05 < sample_stats(world)["irrelevant_impression_share"] < 0.2
