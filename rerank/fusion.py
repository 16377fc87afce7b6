"""Score fusion: one ranking score from the per-task probabilities.

Default = **expected value of an impression**: ``0.1·p(click) + 0.3·p(cart) + 1.0·p(purchase)``.
Why these weights: a purchase is the outcome the shop is paid for (value 1); an add-to-cart
is strong intent that often converts later or in another session (0.3); a click is cheap and
noisy (0.1) but is by far the most frequent signal, so it still breaks ties among products
nobody has bought yet. Because funnel heads make p(purchase) <= p(cart) <= p(click), the
weights also counter the raw magnitude gap (clicks are ~10x more probable than purchases),
so the score is not just a click model in disguise.

Override with ``fuse(..., weights={"purchase": 1, "click": 0})`` or ``--weights
click=0,add_to_cart=0.5,purchase=1`` on the CLI. Tasks a model does not predict are skipped,
so a single-task model ranks by its one probability.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_WEIGHTS: dict[str, float] = {"click": 0.1, "add_to_cart": 0.3, "purchase": 1.0}


def fuse(probs: np.ndarray, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Ranking scores (n,) = Σ_t w_t·p_t over the tasks the model predicts."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(tasks):
        raise ValueError(f"probs of shape {probs.shape} do not match {len(tasks)} tasks")
    w = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(w) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown task(s) in fusion weights: {sorted(unknown)}")
    vec = np.array([float(w.get(t, 0.0)) for t in tasks])
    if not np.any(vec):
        raise ValueError(f"fusion weights {w} give every task of {list(tasks)} zero weight")
    return probs @ vec


def parse_weights(spec: str | None) -> dict[str, float] | None:
    """``"click=0.1,purchase=1"`` -> dict (None/empty -> None = defaults). Tasks left out weigh 0."""
    if not spec:
        return None
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fusion weight {part!r} is not task=value")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"fusion weight {part!r}: {value!r} is not a number") from None
    unknown = set(out) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown task(s) in fusion weights: {sorted(unknown)}")
    return out
