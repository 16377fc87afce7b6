"""Query-grouped training: the skipped-row floor, whole-group batches, the listwise loss.

Synthetic frames only (no sample world, no model weights): these run in well under a second.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rerank.batching import GroupBatchSampler
from rerank.data import build_examples
from rerank.losses import MultiTaskLoss, listwise_softmax_ce


def _world(n_engaged: int = 12, n_skipped: int = 10, queries: tuple[str, ...] = ("sofa", "lamp")):
    """A catalog and an engagement log where every query shows more engaged rows than a small cap."""
    rows = []
    for q in queries:
        for i in range(n_engaged + n_skipped):
            clicks = 2 if i < n_engaged else 0
            rows.append({"query": q, "product_id": f"{q}-{i}", "impressions": 10, "clicks": clicks,
                         "add_to_carts": 1 if i < 3 else 0, "purchases": 1 if i == 0 else 0})
    engagement = pd.DataFrame(rows)
    catalog = pd.DataFrame({"product_id": [*engagement["product_id"], *(f"other-{i}" for i in range(20))]})
    catalog["title"] = "product " + catalog["product_id"]
    catalog[["brand", "category", "attributes"]] = ["Acme", "Home", ""]
    return engagement, catalog


def test_skipped_floor_when_engaged_rows_exceed_the_cap() -> None:
    engagement, catalog = _world()
    ex = build_examples(engagement, catalog, ["sofa", "lamp"], negatives=2, max_shown_per_query=8, seed=5)
    shown = ex[ex["source"] == "shown"]
    for _, group in shown.groupby("query"):
        assert len(group) == 8
        assert (group["clicks"] == 0).sum() == 4 and (group["clicks"] > 0).sum() == 4
    assert (ex["source"] == "sampled").sum() == 4
    # one integer group per query, in query order, rows sorted by group
    assert ex["group"].tolist() == sorted(ex["group"].tolist())
    assert ex.groupby("query")["group"].nunique().eq(1).all() and ex.loc[ex["query"] == "sofa", "group"].iloc[0] == 0
    assert ex.equals(build_examples(engagement, catalog, ["sofa", "lamp"], negatives=2, max_shown_per_query=8, seed=5))


def test_engaged_rows_fill_the_slots_skipped_rows_cannot() -> None:
    engagement, catalog = _world(n_engaged=12, n_skipped=2)
    ex = build_examples(engagement, catalog, ["sofa"], negatives=0, max_shown_per_query=8, seed=5)
    assert (ex["clicks"] == 0).sum() == 2 and (ex["clicks"] > 0).sum() == 6
    everything = build_examples(engagement, catalog, ["sofa"], negatives=0, seed=5)
    assert len(everything) == 14  # no cap: every shown row


def test_grouped_sampler_yields_whole_groups_deterministically() -> None:
    groups = [0] * 5 + [1] * 3 + [2] * 7 + [3] * 4 + [4] * 6
    sampler = GroupBatchSampler(groups, groups_per_batch=2, seed=7)
    epochs = [list(sampler) for _ in range(3)]
    assert len(sampler) == 3 and all(len(e) == 3 for e in epochs)
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(len(groups)))  # each row once per epoch
        for batch in batches:
            ids = {groups[i] for i in batch}
            assert len(ids) <= 2 and sorted(batch) == sorted(i for i, g in enumerate(groups) if g in ids)
    again = GroupBatchSampler(groups, groups_per_batch=2, seed=7)
    assert [list(again) for _ in range(3)] == epochs
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled between epochs
    assert GroupBatchSampler.for_rows(groups, batch_size=10).groups_per_batch == 2


def test_listwise_loss_hand_computed() -> None:
    # one group of two: scores log(0.5), log(0.25) -> softmax (2/3, 1/3); target gains (0.3, 0.1) -> (3/4, 1/4)
    scores = torch.log(torch.tensor([0.5, 0.25]))
    loss = listwise_softmax_ce(scores, torch.tensor([0.3, 0.1]), torch.tensor([4, 4]))
    expected = -(0.75 * math.log(2 / 3) + 0.25 * math.log(1 / 3))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # a second group with no positive is skipped; groups need not be contiguous
    loss2 = listwise_softmax_ce(torch.log(torch.tensor([0.5, 0.9, 0.25, 0.2])), torch.tensor([0.3, 0.0, 0.1, 0.0]),
                                torch.tensor([4, 9, 4, 9]))
    assert float(loss2) == pytest.approx(expected, rel=1e-6)
    zero = listwise_softmax_ce(scores.clone().requires_grad_(), torch.zeros(2), torch.tensor([0, 0]))
    assert zero.requires_grad and float(zero.detach()) == 0.0


def test_listwise_loss_prefers_the_engaged_product() -> None:
    gains, groups = torch.tensor([0.4, 0.0, 0.0]), torch.tensor([0, 0, 0])
    right = torch.log(torch.tensor([0.6, 0.1, 0.1]))
    wrong = torch.log(torch.tensor([0.1, 0.6, 0.1]))
    assert float(listwise_softmax_ce(right, gains, groups)) < float(listwise_softmax_ce(wrong, gains, groups))
    scores = torch.zeros(3, requires_grad=True)
    listwise_softmax_ce(scores, gains, groups).backward()
    assert scores.grad[0] < 0 < scores.grad[1]  # gradient descent raises the engaged product


def test_objectives_combine_per_task() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.1], [0.2, 0.05]]))
    labels = torch.tensor([[0.4, 0.2], [0.1, 0.0], [0.0, 0.0]])
    weights, groups = torch.ones(3), torch.tensor([0, 0, 0])
    tasks = ("click", "purchase")
    point = MultiTaskLoss(tasks, objective="pointwise")(logp, labels, weights)[1]
    lw = MultiTaskLoss(tasks, objective="listwise")(logp, labels, weights, groups)[1]
    both = MultiTaskLoss(tasks, objective="both", rank_weight=2.0)(logp, labels, weights, groups)[1]
    np.testing.assert_allclose(both.numpy(), (2 * lw + point).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="needs query groups"):
        MultiTaskLoss(tasks, objective="listwise")(logp, labels, weights)
    with pytest.raises(ValueError, match="unknown objective"):
        MultiTaskLoss(tasks, objective="pairwise")


def test_ipw_labels_count_examined_impressions() -> None:
    """A product shown low on the page was seldom seen: per examined impression its rate is
    higher than the raw one, and it weighs only the impressions that were looked at."""
    engagement, catalog = _world(n_engaged=2, n_skipped=2, queries=("sofa",))
    engagement = engagement.assign(position=[1.0, 10.0, 1.0, 10.0][: len(engagement)])
    theta = lambda pos: 1.0 / np.asarray(pos) ** 0.7  # noqa: E731
    raw = build_examples(engagement, catalog, ["sofa"], negatives=0)
    ipw = build_examples(engagement, catalog, ["sofa"], negatives=0, examination=theta)
    merged = raw.merge(ipw, on="product_id", suffixes=("_raw", "_ipw")).merge(engagement[["product_id", "position"]])
    top, low = merged[merged["position"] == 1.0], merged[merged["position"] == 10.0]
    assert np.allclose(top["y_click_raw"], top["y_click_ipw"]) and np.allclose(top["weight_raw"], top["weight_ipw"])
    clicked = low[low["clicks_raw"] > 0]
    assert (clicked["y_click_ipw"] > clicked["y_click_raw"]).all()
    assert (low["weight_ipw"] < low["weight_raw"]).all()


def test_ipw_needs_propensities(tiny_data_dir) -> None:
    from pipeline.data import load_dataset
    from rerank.train import train_reranker

    with pytest.raises(ValueError, match="propensities"):
        train_reranker(load_dataset(tiny_data_dir), "unused", debias="ipw")
    with pytest.raises(ValueError, match="debias"):
        train_reranker(load_dataset(tiny_data_dir), "unused", debias="pal-ish")


def test_prior_term_pulls_toward_the_retrievers_order() -> None:
    """With only the prior term, the loss is lower when the scores order the list as the
    prior does, and it is the ListNet cross-entropy towards softmax(prior / τ)."""
    groups = torch.tensor([0, 0, 0])
    prior = torch.tensor([0.9, 0.5, 0.1])
    labels = torch.zeros(3, 1)
    weights = torch.ones(3)
    loss = MultiTaskLoss(["click"], objective="pointwise", prior_weight=1.0, prior_temperature=0.5)
    loss.point_weight = 0.0  # isolate the prior term
    agree = torch.log(torch.tensor([[0.6], [0.3], [0.1]]))
    disagree = torch.log(torch.tensor([[0.1], [0.3], [0.6]]))
    l_agree, _ = loss(agree, labels, weights, groups, prior)
    l_disagree, _ = loss(disagree, labels, weights, groups, prior)
    assert float(l_agree) < float(l_disagree)
    target = torch.softmax(prior / 0.5, 0)
    expected = -(target * torch.log_softmax(agree[:, 0], 0)).sum()
    assert float(l_agree) == pytest.approx(float(expected), rel=1e-5)
    no_prior, _ = loss(agree, labels, weights, groups, None)
    assert float(no_prior) == 0.0


def test_pal_tower_is_zero_for_unshown_rows_and_never_above_one() -> None:
    from rerank.pal import PositionTower

    torch.manual_seed(0)
    tower = PositionTower()
    out = tower(torch.tensor([1.0, 2.5, float("nan"), 40.0]))
    assert out[2] == 0.0 and bool((out <= 0).all())
    curve = tower.curve(10)
    assert curve.shape == (10,) and curve[0] == pytest.approx(1.0)


def test_pal_separates_position_from_relevance() -> None:
    """Rates observed as examination(position) * relevance(feature), with the production
    ranker putting relevant rows high: a relevance model trained through the PAL tower
    recovers the examination curve, and one trained without it absorbs position into
    relevance (its relevance for low-ranked rows is underestimated)."""
    from rerank.pal import PositionTower

    gen = torch.Generator().manual_seed(3)
    n = 4000
    x = torch.randn(n, generator=gen)
    true_rel = torch.sigmoid(1.5 * x - 0.5)
    position = (1.0 + 9.0 * torch.rand(n, generator=gen) * torch.sigmoid(-1.2 * x + torch.randn(n, generator=gen)))
    exam = position ** -0.7
    rate = exam * true_rel
    weights = torch.full((n,), 50.0)

    def fit(pal: bool) -> tuple[torch.nn.Module, PositionTower | None]:
        torch.manual_seed(0)
        rel = torch.nn.Linear(1, 1)
        tower = PositionTower() if pal else None
        params = list(rel.parameters()) + (list(tower.parameters()) if tower else [])
        opt = torch.optim.Adam(params, lr=0.05)
        loss = MultiTaskLoss(["click"], objective="pointwise")
        for _ in range(400):
            opt.zero_grad()
            logp = torch.nn.functional.logsigmoid(rel(x[:, None]))
            total, _ = loss(logp, rate[:, None], weights, log_examination=tower(position) if tower else None)
            total.backward()
            opt.step()
        return rel, tower

    rel_pal, tower = fit(True)
    truth = np.arange(1, 11, dtype=np.float64) ** -0.7
    assert np.max(np.abs(tower.curve(10) - truth) / truth) < 0.15, tower.curve(10)
    rel_naive, _ = fit(False)
    with torch.no_grad():
        grid = torch.linspace(-2, 2, 9)[:, None]
        err_pal = (torch.sigmoid(rel_pal(grid)).squeeze() - torch.sigmoid(1.5 * grid - 0.5).squeeze()).abs().mean()
        err_naive = (torch.sigmoid(rel_naive(grid)).squeeze() - torch.sigmoid(1.5 * grid - 0.5).squeeze()).abs().mean()
    assert float(err_pal) < float(err_naive) / 2


def test_pal_needs_positions(tiny_data_dir) -> None:
    from pipeline.core.errors import DataError
    from pipeline.data import load_dataset
    from rerank.train import train_reranker

    dataset = load_dataset(tiny_data_dir)
    dataset.engagement = dataset.engagement.drop(columns="position", errors="ignore")
    with pytest.raises(DataError, match="position"):
        train_reranker(dataset, "unused", debias="pal")
