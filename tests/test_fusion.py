"""Score fusion: documented expected-value defaults, overrides, single-task models, bad weights."""
from __future__ import annotations

import numpy as np
import pytest

from rerank.fusion import DEFAULT_WEIGHTS, fuse, parse_weights

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
