"""Batches of whole query groups for the trainer.

Why: a listwise loss compares the products of one query, so a query's list must never be
split across batches (half a list ranks against the wrong competitors, a single row against
none). The sampler shuffles the *groups*, not the rows, and puts a fixed number of groups in
each batch, so the number of batches per epoch is the same every epoch (the Trainer sizes its
learning-rate schedule from ``len(dataloader)`` once, before the first epoch).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class GroupBatchSampler(Sampler[list[int]]):
    """Yields lists of row indices, each the union of ``groups_per_batch`` whole groups.

    ``groups``: the group id of every row. Group order is shuffled with a generator seeded
    by ``seed`` and the epoch number (each full pass over the sampler is one epoch), so two
    samplers built with the same seed yield the same batches, epoch after epoch. Within a
    group, rows keep their dataset order.
    """

    def __init__(self, groups: Sequence[int], groups_per_batch: int, seed: int = 0, shuffle: bool = True) -> None:
        if groups_per_batch < 1:
            raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
        ids = np.asarray(groups)
        self._members = [np.flatnonzero(ids == g).tolist() for g in dict.fromkeys(ids.tolist())]
        self.groups_per_batch = groups_per_batch
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    @classmethod
    def for_rows(cls, groups: Sequence[int], batch_size: int, seed: int = 0) -> GroupBatchSampler:
        """Groups per batch chosen so a batch holds about ``batch_size`` rows (at least one group)."""
        sizes = np.unique(np.asarray(groups), return_counts=True)[1]
        per_batch = max(1, int(round(batch_size / float(np.mean(sizes))))) if len(sizes) else 1
        return cls(groups, per_batch, seed)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle as for ``epoch`` on the next pass (otherwise passes count themselves)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self._members) // self.groups_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.arange(len(self._members))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        self.epoch += 1
        for start in range(0, len(order), self.groups_per_batch):
            yield [row for g in order[start:start + self.groups_per_batch] for row in self._members[g]]


__all__ = ["GroupBatchSampler"]
