"""Training thread count (pipeline.core.runtime): usable CPUs and the SHOPRANK_THREADS override."""
from __future__ import annotations

import os

import pytest

from pipeline.core.errors import DataError
from pipeline.core.runtime import THREADS_ENV, available_cpus, training_threads


def test_available_cpus_is_bounded_by_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_threads_default_to_usable_cpus_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert training_threads() == available_cpus()
    monkeypatch.setenv(THREADS_ENV, "1")
    assert training_threads() == 1


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_bad_thread_count_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(THREADS_ENV, bad)
    with pytest.raises(DataError, match=THREADS_ENV):
        training_threads()
