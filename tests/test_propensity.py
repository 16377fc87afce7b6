"""Position-bias estimation (rerank.propensity) against a simulated position-based click log."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import DataError
from rerank.propensity import compare_to_truth, estimate_propensities, expected_examinations, ipw_weights

POWER = 0.7
SLOTS = 20


def true_propensity(position: np.ndarray) -> np.ndarray:
    """The simulator's examination curve."""
    return 1.0 / np.asarray(position, dtype=np.float64) ** POWER


def simulate_pbm_log(n_queries: int = 300, n_products: int = 40, sessions: int = 300,
                     seed: int = 7) -> pd.DataFrame:
    """A per-position click log from a known PBM.

    The ranker orders each query's products by a score correlated with relevance plus
    per-session Gumbel noise, so relevant products sit high (naive click rates are biased)
    and each pair is seen at several positions (the PBM is identifiable).
    """
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.02, 0.6, size=(n_queries, n_products))
    static = 3.0 * gamma + 0.5 * rng.normal(size=gamma.shape)
    theta = true_propensity(np.arange(1, SLOTS + 1))
    pair_pos = np.zeros((n_queries * n_products, SLOTS), dtype=np.int64)
    for q in range(n_queries):
        noisy = static[q][None, :] + 0.6 * rng.gumbel(size=(sessions, n_products))
        shown = np.argsort(-noisy, axis=1)[:, :SLOTS]
        flat = (q * n_products + shown) * SLOTS + np.arange(SLOTS)[None, :]
        pair_pos.ravel()[:] += np.bincount(flat.ravel(), minlength=pair_pos.size)
    pair, slot = np.nonzero(pair_pos)
    impressions = pair_pos[pair, slot]
    clicks = rng.binomial(impressions, theta[slot] * gamma.ravel()[pair])
    return pd.DataFrame({"query": (pair // n_products).astype(str),
                         "product_id": (pair % n_products).astype(str),
                         "position": slot + 1, "impressions": impressions, "clicks": clicks})


@pytest.fixture(scope="module")
def pbm_log() -> pd.DataFrame:
    return simulate_pbm_log()


@pytest.mark.parametrize("method", ["conditional", "em"])
def test_estimator_recovers_simulator_propensities(pbm_log: pd.DataFrame, method: str) -> None:
    assert pbm_log.duplicated(["query", "product_id"]).any()
    est = estimate_propensities(pbm_log, max_position=SLOTS, seed=0, method=method)
    assert est.input_kind == "per_position" and est.method == method
    assert est.theta[0] == pytest.approx(1.0)
    assert est.impressions.sum() == pbm_log["impressions"].sum()
    report = compare_to_truth(est, true_propensity, positions=10)
    assert len(report) == 10
    assert report["relative_error"].max() < 0.10, report

    # The check means something: naive click-through rates are far off on this log.
    ctr = (pbm_log.groupby("position")["clicks"].sum() / pbm_log.groupby("position")["impressions"].sum())
    naive = (ctr / ctr.iloc[0]).to_numpy()[:10]
    assert np.max(np.abs(naive - true_propensity(np.arange(1, 11))) / true_propensity(np.arange(1, 11))) > 0.10


def test_conditional_is_the_per_position_default_and_converges(pbm_log: pd.DataFrame) -> None:
    est = estimate_propensities(pbm_log, max_position=SLOTS)
    assert est.method == "conditional" and est.converged and est.iterations < 200


def test_conditional_removes_the_few_impressions_bias() -> None:
    """With few sessions per query each pair's own gamma overfits and EM's curve drifts
    upward relative to position 1; the conditional fit, which never estimates gamma, stays
    close to the truth on the same log."""
    log = simulate_pbm_log(n_queries=1500, sessions=12, seed=11)
    truth = true_propensity(np.arange(1, 11))
    errors = {m: (estimate_propensities(log, max_position=SLOTS, method=m, iterations=3000).theta[:10] - truth)
              / truth for m in ("conditional", "em")}
    assert np.abs(errors["conditional"]).mean() < np.abs(errors["em"]).mean()
    assert np.abs(errors["conditional"]).max() < 0.10, errors


def test_estimate_is_reproducible_and_marks_empty_positions(pbm_log: pd.DataFrame) -> None:
    small = pbm_log[pbm_log["query"].isin([str(q) for q in range(30)])]
    a = estimate_propensities(small, max_position=SLOTS + 5, seed=3, iterations=50, method="em")
    b = estimate_propensities(small, max_position=SLOTS + 5, seed=3, iterations=50, method="em")
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.iterations == 50 and not a.converged
    c = estimate_propensities(small, max_position=SLOTS + 5)
    assert np.isnan(c.theta[SLOTS:]).all()
    assert np.isnan(a.theta[SLOTS:]).all() and (a.impressions[SLOTS:] == 0).all()
    assert np.isfinite(a.log_likelihood)


def test_mean_position_fallback_runs_and_is_flagged(pbm_log: pd.DataFrame) -> None:
    agg = pbm_log.assign(pos_sum=pbm_log["position"] * pbm_log["impressions"])
    agg = agg.groupby(["query", "product_id"], as_index=False)[["impressions", "clicks", "pos_sum"]].sum()
    agg["position"] = agg["pos_sum"] / agg["impressions"]
    est = estimate_propensities(agg.drop(columns="pos_sum"), max_position=SLOTS, iterations=200)
    assert est.input_kind == "mean_position"
    assert est.anchor > 1  # a noisy pair's mean position never rounds to 1
    assert est.theta[est.anchor - 1] == pytest.approx(1.0)
    assert np.isnan(est.theta[: est.anchor - 1]).all()
    observed = est.impressions > 0
    assert np.isfinite(est.theta[observed]).all()
    assert compare_to_truth(est, true_propensity)["relative_error"].notna().any()
    w = ipw_weights(agg["position"], est)  # fractional mean positions, as in engagement files
    assert np.all((w >= 1.0 - 1e-9) & (w <= 10.0))


def test_ipw_weights_monotone_and_clipped() -> None:
    theta = true_propensity(np.arange(1, SLOTS + 1))
    positions = np.array([1.0, 1.5, 2.0, 3.25, 5.0, 10.0, 20.0, 35.0])
    w = ipw_weights(positions, theta, clip=5.0)
    assert w[0] == pytest.approx(1.0)
    assert np.all(np.diff(w) >= 0)
    assert w.max() <= 5.0 and w[-1] == pytest.approx(5.0)
    unclipped = ipw_weights(np.array([4.0]), theta, clip=100.0)
    assert unclipped[0] == pytest.approx(4.0 ** POWER)
    assert ipw_weights(np.array([np.nan]), theta)[0] == 1.0


def test_ipw_interpolates_over_missing_positions() -> None:
    theta = np.array([1.0, np.nan, 0.5])
    assert ipw_weights([2.0], theta)[0] == pytest.approx(1.0 / 0.75)


_GOOD = pd.DataFrame({"query": ["q", "q"], "product_id": ["a", "a"], "position": [1, 2],
                      "impressions": [10, 10], "clicks": [3, 1]})


@pytest.mark.parametrize("bad", [
    _GOOD.drop(columns="clicks"),
    _GOOD.assign(impressions=[-1, 10]),
    _GOOD.assign(clicks=[11, 1]),
    _GOOD.assign(position=[0, 2]),
    _GOOD.assign(position=[1.5, 2]),
    _GOOD.assign(clicks=[np.nan, 1]),
    _GOOD.assign(position=[30, 31]),
])
def test_bad_input_raises_one_line_data_error(bad: pd.DataFrame) -> None:
    with pytest.raises(DataError) as info:
        estimate_propensities(bad)
    assert "\n" not in str(info.value)


def test_conditional_refuses_a_mean_position_log() -> None:
    with pytest.raises(DataError, match="per-position"):
        estimate_propensities(_GOOD.iloc[:1], method="conditional")


def test_ipw_rejects_bad_arguments() -> None:
    with pytest.raises(DataError):
        ipw_weights([1.0], np.ones(3), clip=0.5)
    with pytest.raises(DataError):
        ipw_weights([0.0], np.ones(3))


def test_expected_examinations_sum_over_the_positions_shown_at() -> None:
    # Shown once at position 1 and once at 3 is not "twice at 2": theta is convex, so the
    # per-position sum (1 + 0.25) differs from 2 * theta(2) = 1.0.
    theta = np.array([1.0, 0.5, 0.25])
    log = pd.DataFrame({"query": ["q", "q", "q", "r"], "product_id": ["a", "a", "b", "a"],
                        "position": [1, 3, 2, 9], "impressions": [1, 1, 4, 2]})
    exams = expected_examinations(log, theta)
    assert exams[("q", "a")] == pytest.approx(1.25)
    assert exams[("q", "b")] == pytest.approx(2.0)
    assert exams[("r", "a")] == pytest.approx(0.5)  # past the curve: its last value, unclipped

