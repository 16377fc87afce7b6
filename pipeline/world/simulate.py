"""The simulated shop: an imperfect production ranker and a position-biased user with a
click -> add-to-cart -> purchase funnel.

Shared by ``pipeline sample-data`` (built-in world) and ``pipeline simulate-engagement``
(any labelled dataset), so both produce engagement with the same statistics.

Why it looks like this:
* Impressions must come from a *production ranker*, not from the ground truth, or the
  logs would teach nothing a model could not read off the qrels. Our ranker mixes
  lexical overlap (optionally widened by a partial hand-made synonym table), a noisy
  "historical engagement" prior (it knows the grade of only some (query, product) pairs,
  like a CTR feature that exists only for pairs that were shown before), popularity and
  per-session noise. So it surfaces relevant products reasonably often even when the
  query shares no word with them, which is what gives engagement its positives.
* Examination is position-biased (``1 / pos ** 0.7``) over the top ``slots`` results.
* The funnel depends on relevance *and* on different product properties: clicks mostly on
  relevance, add-to-cart also on rating, purchase also on price relative to the category
  median. So the three tasks are correlated but not identical, and purchase is sparsest.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import ENGAGEMENT_COLUMNS, product_text
from pipeline.core.errors import DataError
from pipeline.core.text import content_words
from pipeline.core.runtime import DEFAULT_SEED


@dataclass(frozen=True)
class UserModel:
    """Parameters of the production ranker and the simulated user (grades 0..3)."""

    slots: int = 20                      # results shown per page
    pool: int = 60                       # ranker's candidate pool before session noise
    sessions_mean: float = 40.0          # mean searches per query (Zipf-like spread)
    examine_power: float = 0.7           # P(examine pos) = 1 / pos ** power
    attract: tuple[float, ...] = (0.02, 0.08, 0.25, 0.45)     # P(click | examined, grade)
    cart: tuple[float, ...] = (0.02, 0.08, 0.20, 0.32)        # P(cart | click, grade), rating-scaled
    buy: tuple[float, ...] = (0.10, 0.22, 0.36, 0.50)         # P(buy | cart, grade), price-scaled
    w_lexical: float = 1.0
    w_prior: float = 0.7                 # weight of the noisy historical-engagement prior
    prior_known: float = 0.55            # share of pairs for which that prior exists
    w_popularity: float = 0.5
    noise: float = 0.35                  # per-session Gumbel noise scale
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # partial expansion table


def _grade_table(values: tuple[float, ...], grades: np.ndarray) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    return table[np.clip(grades, 0, len(table) - 1)]


def _product_features(catalog: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Rating, relative price and popularity per product (filled in when absent)."""
    rng = np.random.default_rng([seed, 7])
    n = len(catalog)
    feats = pd.DataFrame({"product_id": catalog["product_id"].astype(str).to_numpy()})
    if "rating" in catalog.columns:
        rating = pd.to_numeric(catalog["rating"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        rating = np.full(n, np.nan)
    rating = np.where(np.isnan(rating), 4.0, rating)
    feats["rating"] = np.clip(rating, 1.0, 5.0)
    price = pd.to_numeric(catalog["price"], errors="coerce") if "price" in catalog.columns else pd.Series(np.nan, index=catalog.index)
    price = price.to_numpy(dtype=np.float64)
    cat = catalog["category"].astype(str).to_numpy() if "category" in catalog.columns else np.full(n, "")
    med = pd.Series(price).groupby(cat).transform("median").to_numpy()
    rel = np.where((price > 0) & (med > 0), price / np.where(med > 0, med, 1.0), 1.0)
    feats["rel_price"] = np.nan_to_num(rel, nan=1.0)
    if "popularity" in catalog.columns:
        pop = pd.to_numeric(catalog["popularity"], errors="coerce").fillna(0.0).to_numpy(dtype=np.float64)
    else:
        pop = rng.normal(0.0, 1.0, n) + 0.5 * (feats["rating"].to_numpy() - 4.0)
    feats["popularity"] = pop
    return feats


def _lexical_overlap(queries: np.ndarray, texts: np.ndarray, synonyms: Mapping[str, tuple[str, ...]]) -> np.ndarray:
    """Share of a query's content words (after partial synonym expansion) found in the product."""
    qcache: dict[str, frozenset[str]] = {}
    pcache: dict[str, frozenset[str]] = {}
    out = np.zeros(len(queries), dtype=np.float64)
    for i, (q, t) in enumerate(zip(queries, texts)):
        qw = qcache.get(q)
        if qw is None:
            words = set(content_words(q))
            for w in list(words):
                words.update(synonyms.get(w, ()))
            qw = qcache[q] = frozenset(words)
        pw = pcache.get(t)
        if pw is None:
            pw = pcache[t] = content_words(t)
        if qw:
            out[i] = len(qw & pw) / len(content_words(q) or qw)
    return out


def examination_propensity(model: UserModel) -> np.ndarray:
    """P(examine) per shown position 1..slots: the position bias the simulated user applies."""
    return 1.0 / np.arange(1, model.slots + 1, dtype=np.float64) ** model.examine_power


def simulate_engagement(qrels: pd.DataFrame, catalog: pd.DataFrame, *, seed: int = DEFAULT_SEED,
                        model: UserModel | None = None,
                        return_positions: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate logged engagement for the judged (query, product) pairs in ``qrels``.

    The production ranker ranks each query's judged pool; every session shows the top
    ``model.slots``; users examine, click, add to cart and buy as the model says. Returns
    one row per (query, product) ever shown, with funnel-consistent counts and the mean
    position, sorted by (query, product_id) so output is deterministic.

    ``return_positions=True`` also returns impressions and clicks per (query, product,
    position): what a shop's raw impression log holds, and what estimating position bias
    needs (the aggregated mean position hides how a product's position varied).
    """
    model = model or UserModel()
    missing = [c for c in ("query", "product_id", "relevance") if c not in qrels.columns]
    if missing:
        raise DataError(f"qrels: missing required column {missing[0]!r}")
    rng = np.random.default_rng(seed)
    feats = _product_features(catalog, seed).set_index("product_id")
    texts = pd.Series(product_text(catalog), index=catalog["product_id"].astype(str).to_numpy())

    pairs = qrels[["query", "product_id", "relevance"]].copy()
    pairs["product_id"] = pairs["product_id"].astype(str)
    pairs["query"] = pairs["query"].astype(str)
    pairs = pairs[pairs["product_id"].isin(feats.index)]
    pairs = pairs.sort_values(["query", "product_id"], kind="stable").drop_duplicates(["query", "product_id"])
    pairs = pairs.reset_index(drop=True)
    if pairs.empty:
        raise DataError("qrels: no judged pair refers to a product in the catalog")

    grade = pairs["relevance"].to_numpy(dtype=np.int64).clip(0, 3)
    pf = feats.loc[pairs["product_id"].to_numpy()]
    rating = pf["rating"].to_numpy()
    rel_price = pf["rel_price"].to_numpy()
    pop = pf["popularity"].to_numpy()
    lex = _lexical_overlap(pairs["query"].to_numpy(), texts.loc[pairs["product_id"].to_numpy()].to_numpy(),
                           model.synonyms)
    known = rng.random(len(pairs)) < model.prior_known
    static = (model.w_lexical * lex + model.w_prior * known * grade / 3.0
              + model.w_popularity * np.tanh(pop / 2.0))

    p_attract = _grade_table(model.attract, grade)
    p_cart = np.clip(_grade_table(model.cart, grade) * (rating / 4.2) ** 2, 0.0, 0.95)
    price_factor = np.clip(1.0 - 0.6 * np.log(np.clip(rel_price, 0.05, 20.0)), 0.25, 1.6)
    p_buy = np.clip(_grade_table(model.buy, grade) * price_factor * (0.6 + 0.1 * rating), 0.0, 0.95)

    starts = np.flatnonzero(np.r_[True, pairs["query"].to_numpy()[1:] != pairs["query"].to_numpy()[:-1]])
    ends = np.r_[starts[1:], len(pairs)]
    exam = examination_propensity(model)

    n = len(pairs)
    impressions = np.zeros(n, np.int64)
    clicks = np.zeros(n, np.int64)
    carts = np.zeros(n, np.int64)
    buys = np.zeros(n, np.int64)
    pos_sum = np.zeros(n, np.float64)
    by_pos_imp = np.zeros((n, model.slots), np.int64) if return_positions else None
    by_pos_click = np.zeros((n, model.slots), np.int64) if return_positions else None
    for lo, hi in zip(starts, ends):
        size = hi - lo
        pool = lo + np.argsort(-static[lo:hi], kind="stable")[: model.pool]
        sessions = max(3, int(round(model.sessions_mean * (0.35 + rng.pareto(2.5)))))
        sessions = min(sessions, int(model.sessions_mean * 6))
        noisy = static[pool][None, :] + model.noise * rng.gumbel(size=(sessions, len(pool)))
        shown_k = min(model.slots, len(pool), size)
        order = np.argsort(-noisy, axis=1, kind="stable")[:, :shown_k]
        shown = pool[order]                                    # (sessions, shown_k) row indices
        pos = np.broadcast_to(np.arange(1, shown_k + 1), shown.shape)
        click = rng.random(shown.shape) < exam[:shown_k][None, :] * p_attract[shown]
        cart = click & (rng.random(shown.shape) < p_cart[shown])
        buy = cart & (rng.random(shown.shape) < p_buy[shown])
        flat = shown.ravel()
        np.add.at(impressions, flat, 1)
        np.add.at(pos_sum, flat, pos.ravel())
        np.add.at(clicks, flat, click.ravel())
        np.add.at(carts, flat, cart.ravel())
        np.add.at(buys, flat, buy.ravel())
        if by_pos_imp is not None:
            np.add.at(by_pos_imp, (flat, pos.ravel() - 1), 1)
            np.add.at(by_pos_click, (flat, pos.ravel() - 1), click.ravel())

    seen = impressions > 0
    out = pd.DataFrame({
        "query": pairs["query"].to_numpy()[seen],
        "product_id": pairs["product_id"].to_numpy()[seen],
        "impressions": impressions[seen],
        "clicks": clicks[seen],
        "add_to_carts": carts[seen],
        "purchases": buys[seen],
        "position": np.round(pos_sum[seen] / impressions[seen], 3),
    })
    out = out[ENGAGEMENT_COLUMNS + ["position"]].reset_index(drop=True)
    if by_pos_imp is None:
        return out
    row, col = np.nonzero(by_pos_imp)
    positions = pd.DataFrame({
        "query": pairs["query"].to_numpy()[row], "product_id": pairs["product_id"].to_numpy()[row],
        "position": (col + 1).astype(np.int64), "impressions": by_pos_imp[row, col],
        "clicks": by_pos_click[row, col],
    })
    return out, positions


def funnel_rates(engagement: pd.DataFrame) -> dict[str, float]:
    """Click / add-to-cart / purchase rates per impression (and cart-per-click)."""
    imp = float(engagement["impressions"].sum()) or 1.0
    clicks = float(engagement["clicks"].sum())
    return {
        "impressions": int(imp),
        "click_rate": clicks / imp,
        "add_to_cart_rate": float(engagement["add_to_carts"].sum()) / imp,
        "purchase_rate": float(engagement["purchases"].sum()) / imp,
        "cart_per_click": float(engagement["add_to_carts"].sum()) / (clicks or 1.0),
    }


def engagement_from_labels(qrels: str | Path, catalog: str | Path, out: str | Path, *, seed: int = DEFAULT_SEED,
                           mapping: str | Path | None = None, queries: str | Path | None = None) -> dict:
    """`pipeline simulate-engagement`: load a labelled dataset (through the schema mapping),
    simulate engagement with the same user model as the sample world, write Parquet.

    This is how a public relevance dataset without logs (ESCI, WANDS) can train the whole
    pipeline. ``queries`` gives the query texts of labels keyed by ``query_id`` (WANDS'
    label.csv). Returns statistics (rows, funnel rates, skipped unknown products).
    """
    from pipeline.core.artifacts import atomic_path
    from pipeline.data import load_catalog, load_qrels, load_queries, write_parquet

    cat = load_catalog(catalog, mapping)
    report: dict = {}
    texts = load_queries(queries, mapping) if queries is not None else None
    judged = load_qrels(qrels, mapping, catalog_ids=set(cat["product_id"]), queries=texts, report=report)
    engagement = simulate_engagement(judged, cat, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        write_parquet(engagement, tmp)
    return {"out": str(out), "queries": int(engagement["query"].nunique()), "rows": int(len(engagement)),
            "qrels_unknown_products": report.get("qrels_unknown_products", 0), **funnel_rates(engagement)}


def propensity_report(log: str | Path, *, max_position: int = 20, against_simulator: bool = False,
                      seed: int = DEFAULT_SEED, method: str | None = None) -> dict:
    """`pipeline estimate-propensity`: examination propensity per position, fitted on a log.

    ``log`` is a per-position impression log (``positions.parquet`` of the sample world, or a
    shop's own) or an engagement file with a mean ``position`` column (biased; the estimate
    says so). ``against_simulator`` adds the propensities the sample world's user applied
    and the relative error of the estimate, the check that position-bias correction
    recovers a known truth.
    """
    from pipeline.data import load_position_log
    from rerank.propensity import compare_to_truth, estimate_propensities

    est = estimate_propensities(load_position_log(log), max_position=max_position, seed=seed,
                                method=method)  # type: ignore[arg-type]
    rows = [{"position": int(p), "propensity": float(t), "impressions": int(n)}
            for p, t, n in zip(est.positions, est.theta, est.impressions)]
    report: dict = {"log": str(log), "input": est.input_kind, "method": est.method, "anchor_position": int(est.anchor),
                    "iterations": int(est.iterations), "converged": bool(est.converged), "positions": rows}
    if against_simulator:
        power = UserModel().examine_power
        check = compare_to_truth(est, lambda p: 1.0 / np.asarray(p, dtype=np.float64) ** power, positions=min(10, max_position))
        truth = dict(zip(check["position"], check["true"]))
        err = dict(zip(check["position"], check["relative_error"]))
        for row in rows:
            if row["position"] in truth:
                row["simulator"] = float(truth[row["position"]])
                row["relative_error"] = float(err[row["position"]])
        report["max_relative_error_1_10"] = float(np.nanmax(np.abs(check["relative_error"].to_numpy())))
    return report
