"""Examination propensity per position, estimated from the engagement logs themselves.

Clicks confound relevance with position: a product shown first is clicked more because it
is seen more. Training on raw clicks teaches the reranker the production ranker's order.
The position-based click model (PBM) separates the two,

    P(click | q, d, pos) = theta_pos * gamma_{q,d}.

A per-position log shows the same (query, product) pair at several positions, because the
production ranker's per-session noise moves it around; the pair's clicks across those
positions pin down the ratios theta_i / theta_j. Two estimators are offered:

* ``"conditional"`` (the default for per-position logs): conditional on a pair's total
  clicks, their split over positions does not involve gamma, since
  E[clicks at k] = n_k * theta_k * gamma and E[all clicks] = gamma * sum_j n_j * theta_j.
  Solving the resulting estimating equations (a Poisson / multinomial conditional
  likelihood, fitted by a fixed-point iteration) removes the per-pair nuisance parameter
  altogether. With a handful of impressions per pair, which is what real logs hold,
  it stays consistent where the joint fit does not.
* ``"em"``: the joint maximum likelihood of theta and one gamma per pair by
  expectation-maximisation (Wang et al., WSDM 2018). Each pair's gamma is fitted to its
  own few impressions, and that overfitting leaks into theta (the Neyman-Scott problem):
  on the sample world it overstates every position's propensity relative to position 1 by
  several percent. It is kept for comparison and for the mean-position fallback, where the
  relevance is one gamma per query.

``ipw_weights`` turns the estimate into inverse-propensity weights for clicked rows and
``compare_to_truth`` checks it against known propensities (the simulator's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError

REQUIRED_COLUMNS = ("query", "product_id", "position", "impressions", "clicks")
InputKind = Literal["per_position", "mean_position"]
Method = Literal["conditional", "em"]

# Keeps 1 - theta * gamma away from 0 so the E-step's posterior never divides by zero.
_EPS = 1e-6


@dataclass(frozen=True)
class PropensityEstimate:
    """A fitted examination curve.

    ``theta[k]`` is the propensity of position ``k + 1``, normalised so ``theta`` at
    ``anchor`` is 1.0: only ratios between positions are identified (theta * gamma is what
    the clicks see). ``anchor`` is position 1 whenever position 1 has impressions; rounded
    mean positions rarely reach 1, so the fallback anchors at the first observed position.
    Positions with no impressions stay NaN rather than being guessed, so a caller cannot
    mistake an extrapolation for a measurement; ``ipw_weights`` interpolates across them.

    ``method`` names the estimator (module docstring); ``log_likelihood`` is that
    estimator's objective, so values are comparable only between fits of one method.

    ``input_kind`` says which evidence was used: ``"per_position"`` (a pair's impressions
    split by the position they occurred at, the unbiased case) or ``"mean_position"``
    (one row per pair with a mean position; see ``estimate_propensities`` for its bias).
    """

    theta: np.ndarray
    impressions: np.ndarray
    iterations: int
    converged: bool
    log_likelihood: float
    input_kind: InputKind
    anchor: int = 1
    method: Method = "em"

    @property
    def positions(self) -> np.ndarray:
        """1-based positions that ``theta`` and ``impressions`` are indexed by."""
        return np.arange(1, len(self.theta) + 1)

    def to_frame(self) -> pd.DataFrame:
        """One row per position, for reports and manifests."""
        return pd.DataFrame({"position": self.positions, "propensity": self.theta,
                             "impressions": self.impressions})


def _validate(log: pd.DataFrame) -> pd.DataFrame:
    """Reject logs either estimator would silently mis-fit; one-line messages name the problem."""
    missing = [c for c in REQUIRED_COLUMNS if c not in log.columns]
    if missing:
        raise DataError(f"impression log: missing required column {missing[0]!r}")
    if log.empty:
        raise DataError("impression log: no rows")
    numeric = {}
    for col in ("position", "impressions", "clicks"):
        values = pd.to_numeric(log[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"impression log: column {col!r} has a missing or non-numeric value "
                            f"at row {int(np.flatnonzero(bad)[0])}")
        numeric[col] = values
    for col in ("impressions", "clicks"):
        neg = numeric[col] < 0
        if neg.any():
            raise DataError(f"impression log: negative {col} at row {int(np.flatnonzero(neg)[0])}")
    over = numeric["clicks"] > numeric["impressions"]
    if over.any():
        raise DataError(f"impression log: clicks exceed impressions at row {int(np.flatnonzero(over)[0])}")
    low = numeric["position"] < 1
    if low.any():
        raise DataError(f"impression log: position below 1 (positions are 1-based) at row "
                        f"{int(np.flatnonzero(low)[0])}")
    return pd.DataFrame({"query": log["query"].astype(str).to_numpy(),
                         "product_id": log["product_id"].astype(str).to_numpy(), **numeric})


def _input_kind(frame: pd.DataFrame) -> InputKind:
    """Per-position logs repeat a pair across positions; engagement has one row per pair.

    With every pair on a single row, a free gamma per pair would absorb every click and leave
    theta unidentified, so that case must be fitted differently whatever its position values.
    """
    if frame.duplicated(["query", "product_id"]).any():
        fractional = frame["position"] != np.round(frame["position"])
        if fractional.any():
            raise DataError("impression log: a per-position log (pairs repeated across rows) needs "
                            f"integer positions; row {int(np.flatnonzero(fractional.to_numpy())[0])} "
                            "has a fractional one")
        return "per_position"
    return "mean_position"


def estimate_propensities(log: pd.DataFrame, max_position: int = 20, iterations: int = 1000,
                          seed: int = 0, tol: float = 1e-10,
                          method: Method | None = None) -> PropensityEstimate:
    """Fit a position-based click model and return theta per position (theta_1 = 1).

    ``method`` is ``"conditional"`` or ``"em"`` (module docstring); ``None`` picks
    ``"conditional"`` for per-position logs and ``"em"`` for the mean-position fallback,
    whose one row per pair leaves nothing to condition on.

    ``log`` has ``query``, ``product_id``, ``position`` (1-based), ``impressions`` and
    ``clicks``. Rows beyond ``max_position`` are ignored: the tail is sparse and the
    reranker's weights only need the shown slots. ``seed`` draws EM's initial theta and
    gamma (EM converges to the same ratios from any interior start; the seed keeps reruns
    bit-identical). EM stops after ``iterations`` steps or when the log-likelihood improves
    by less than ``tol`` relative to its size; the conditional fit when no theta moves by
    more than ``sqrt(tol)``.

    Input kinds (reported as ``input_kind``):

    * ``"per_position"``: a pair appears on several rows, one per position it was shown at.
      Relevance is one gamma per (query, product), which the conditional fit removes.
    * ``"mean_position"``: aggregated engagement, one row per pair with its *mean* shown
      position, which is rounded. This is biased twice over. A mean hides the spread of
      positions a pair was actually shown at, so clicks earned at position 2 and 8 are booked
      at 5. And with one row per pair a per-pair gamma is not identifiable, so relevance is
      one gamma per query: the production ranker places relevant products higher, and that
      relevance is then credited to position, distorting the curve. Use it as a rough
      fallback only when no per-position log exists.

    Theta is normalised to position 1, or to the first position with impressions when
    position 1 has none (``anchor``). Raises ``DataError`` for missing columns, negative or
    inconsistent counts, positions below 1, or no impressions within ``max_position``.
    """
    if max_position < 1 or iterations < 1:
        raise DataError(f"max_position and iterations must be at least 1, got {max_position} and {iterations}")
    frame = _validate(log)
    kind = _input_kind(frame)
    pos = np.round(frame["position"].to_numpy()).astype(np.int64)
    keep = (pos <= max_position) & (frame["impressions"].to_numpy() > 0)
    pos = pos[keep] - 1
    n = frame["impressions"].to_numpy()[keep]
    c = frame["clicks"].to_numpy()[keep]
    groups = ["query"] if kind == "mean_position" else ["query", "product_id"]
    item = frame.loc[keep, groups].groupby(groups, sort=False).ngroup().to_numpy()

    impressions = np.bincount(pos, weights=n, minlength=max_position)
    has_data = impressions > 0
    if not has_data.any():
        raise DataError(f"impression log: no impressions at positions 1..{max_position}")
    anchor = int(np.flatnonzero(has_data)[0])

    chosen: Method = method or ("em" if kind == "mean_position" else "conditional")
    if chosen not in ("conditional", "em"):
        raise DataError(f"propensity method must be 'conditional' or 'em', got {chosen!r}")
    if chosen == "conditional" and kind == "mean_position":
        raise DataError("propensity method 'conditional' needs a per-position log "
                        "(pairs repeated across positions); use 'em' for mean positions")
    fit = _fit_conditional if chosen == "conditional" else _fit_em
    theta, steps, converged, ll = fit(pos, n, c, item, has_data, max_position, iterations, tol, seed)
    if not (np.isfinite(theta[anchor]) and theta[anchor] > 0):
        raise DataError(f"impression log: no clicks at position {anchor + 1}, so no propensity "
                        "can be expressed relative to it")
    return PropensityEstimate(theta=theta / theta[anchor], impressions=impressions.astype(np.int64),
                              iterations=steps, converged=converged, log_likelihood=ll,
                              input_kind=kind, anchor=anchor + 1, method=chosen)


def _fit_conditional(pos: np.ndarray, n: np.ndarray, c: np.ndarray, item: np.ndarray,
                     has_data: np.ndarray, max_position: int, iterations: int, tol: float,
                     seed: int) -> tuple[np.ndarray, int, bool, float]:
    """Solve the conditional estimating equations by fixed-point iteration.

    For position k: sum over pairs of clicks at k equals sum over pairs of
    C_i * n_ik * theta_k / S_i, with C_i a pair's total clicks and S_i = sum_j n_ij theta_j.
    Each step sets theta_k to the ratio of those sums (the minorise-maximise step of the
    multinomial likelihood), which increases that likelihood monotonically. Positions whose
    pairs were never clicked are unidentified and stay NaN. ``seed`` is unused: the
    iteration starts from a flat curve and is deterministic.
    """
    total = np.bincount(item, weights=c)
    clicked = np.bincount(pos, weights=c, minlength=max_position)
    theta = np.where(has_data, 1.0, 0.0)
    converged = False
    steps = 0
    for steps in range(1, iterations + 1):
        exposure = np.bincount(item, weights=n * theta[pos])
        share = np.divide(total[item] * n, exposure[item], out=np.zeros_like(n, dtype=np.float64),
                          where=exposure[item] > 0)
        expected = np.bincount(pos, weights=share, minlength=max_position)
        new = np.divide(clicked, expected, out=np.zeros(max_position), where=expected > 0)
        new = new / max(float(new.max()), _EPS)
        done = np.max(np.abs(new - theta)) <= tol ** 0.5
        theta = new
        if done:
            converged = True
            break
    exposure = np.bincount(item, weights=n * theta[pos])
    rate = np.divide(n * theta[pos], exposure[item], out=np.ones_like(n, dtype=np.float64),
                     where=exposure[item] > 0)
    ll = float(np.sum(c * np.log(np.clip(rate, _EPS, None))))
    identified = has_data & (np.bincount(pos, weights=(total[item] > 0) * n, minlength=max_position) > 0)
    return np.where(identified, theta, np.nan), steps, converged, ll


def _fit_em(pos: np.ndarray, n: np.ndarray, c: np.ndarray, item: np.ndarray, has_data: np.ndarray,
            max_position: int, iterations: int, tol: float, seed: int) -> tuple[np.ndarray, int, bool, float]:
    """Joint maximum likelihood of theta and one gamma per item by EM (module docstring)."""
    impressions = np.bincount(pos, weights=n, minlength=max_position)
    item_n = np.bincount(item, weights=n)
    rng = np.random.default_rng(seed)
    theta = np.where(has_data, rng.uniform(0.2, 0.8, max_position), np.nan)
    gamma = rng.uniform(0.2, 0.8, len(item_n))
    unclicked = n - c
    prev_ll = -np.inf
    converged = False
    steps = 0
    for steps in range(1, iterations + 1):
        t, g = theta[pos], gamma[item]
        miss = np.clip(1.0 - t * g, _EPS, None)
        # E-step for a non-click: P(examined, not relevant) and P(not examined, relevant).
        exam_only = t * (1.0 - g) / miss
        rel_only = (1.0 - t) * g / miss
        examined = np.bincount(pos, weights=c + unclicked * exam_only, minlength=max_position)
        theta = np.where(has_data, examined / np.where(has_data, impressions, 1.0), np.nan)
        gamma = np.bincount(item, weights=c + unclicked * rel_only) / item_n
        theta = np.clip(theta, _EPS, 1.0 - _EPS)
        gamma = np.clip(gamma, _EPS, 1.0 - _EPS)
        ll = _log_likelihood(theta[pos] * gamma[item], n, c)
        if abs(ll - prev_ll) <= tol * abs(ll):
            converged = True
            break
        prev_ll = ll
    return theta, steps, converged, ll


def _log_likelihood(p: np.ndarray, n: np.ndarray, c: np.ndarray) -> float:
    """Binomial log-likelihood of the counts, without the constant binomial coefficients."""
    return float(np.sum(c * np.log(p) + (n - c) * np.log1p(-p)))


def ipw_weights(positions: np.ndarray | pd.Series | list[float],
                propensities: PropensityEstimate | np.ndarray, clip: float = 10.0) -> np.ndarray:
    """Inverse-propensity weights 1 / theta(position) for clicks observed at ``positions``.

    A click at a rarely examined position stands for many unobserved ones, so it is weighted
    up. Positions may be fractional (engagement's mean position): theta is interpolated
    linearly between integer positions, and across positions with no data; positions past
    the last estimated one take its value, and positions before the first estimated one
    take that one's. Rows without a position (NaN; e.g. retriever
    candidates that were never shown) get weight 1: they hold no click to correct.

    Weights are capped at ``clip``. Clipping trades bias for variance: the few clicks at the
    deepest positions would otherwise dominate the loss with weights that are themselves
    noisy estimates, at the price of under-correcting those positions.
    """
    if clip < 1.0:
        raise DataError(f"ipw clip must be at least 1, got {clip}")
    theta = propensities.theta if isinstance(propensities, PropensityEstimate) else np.asarray(propensities, float)
    grid = np.arange(1, len(theta) + 1, dtype=np.float64)
    known = np.isfinite(theta) & (theta > 0)
    if not known.any():
        raise DataError("propensities: no finite positive value to weight by")
    pos = np.asarray(positions, dtype=np.float64)
    if np.any(pos[np.isfinite(pos)] < 1):
        raise DataError("ipw positions: a position is below 1 (positions are 1-based)")
    theta_at = np.interp(np.nan_to_num(pos, nan=1.0), grid[known], theta[known])
    weights = np.minimum(1.0 / theta_at, clip)
    return np.where(np.isfinite(pos), weights, 1.0)


def expected_examinations(log: pd.DataFrame, propensities: PropensityEstimate | np.ndarray) -> pd.Series:
    """Expected number of times each (query, product) was looked at: its impressions at each
    position times that position's examination propensity, summed over positions.

    ``log`` is a per-position impression log (query, product_id, position, impressions). Why
    per position and not impressions * theta(mean position): theta is convex in position, so
    a product shown at positions 1 and 19 was examined far more than one shown twice at 10.
    Positions past the estimated curve take its last value (``ipw_weights`` without the clip).
    Returns a Series indexed by (query, product_id).
    """
    weights = ipw_weights(log["position"].to_numpy(dtype=np.float64), propensities, clip=np.inf)
    frame = pd.DataFrame({"query": log["query"].astype(str), "product_id": log["product_id"].astype(str),
                          "examined": log["impressions"].to_numpy(dtype=np.float64) / weights})
    return frame.groupby(["query", "product_id"], sort=False)["examined"].sum()


def compare_to_truth(estimate: PropensityEstimate, truth: Callable[[np.ndarray], np.ndarray],
                     positions: int = 10) -> pd.DataFrame:
    """Relative error of the estimate against known propensities for positions 1..``positions``.

    ``truth`` maps 1-based positions to propensities (e.g. the simulator's
    ``lambda p: 1 / p ** 0.7``); it is normalised at the estimate's anchor (position 1 unless
    that had no data) like the estimate, because only ratios are identified. Report
    ``frame["relative_error"].max()`` as the check; positions without data show NaN.
    """
    grid = np.arange(1, min(positions, len(estimate.theta)) + 1, dtype=np.float64)
    true = np.asarray(truth(grid), dtype=np.float64)
    true = true / np.asarray(truth(np.array([float(estimate.anchor)])), dtype=np.float64)[0]
    est = estimate.theta[: len(grid)]
    return pd.DataFrame({"position": grid.astype(np.int64), "estimated": est, "true": true,
                         "relative_error": np.abs(est - true) / true})
