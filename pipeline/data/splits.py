"""Query splits for datasets that come without them (a judged-pairs file, a raw log).

Training selects queries by split (train fits, valid picks the epoch and the blend) and
evaluation reads test, so a dataset without a queries file still needs one. The split is
drawn per query from a seeded hash of its text, not from a random generator over the list:
a query keeps its split when other queries are added or the file is reordered, and the
same seed gives the same split on every machine.

Only train, valid and test are drawn. ``unseen`` means queries about product types or
categories that no train or valid query asks for; a hash of the text cannot know that, and
a randomly drawn "unseen" split would only be a second test split taken out of training.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.text import identity_key

#: Shares of the query-text splits, in order. Valid and test are equal so that the split the
#: epoch and blend are chosen on is as precise as the one they are judged on.
SPLIT_SHARES: tuple[tuple[str, float], ...] = (("train", 0.7), ("valid", 0.15), ("test", 0.15))
#: The splits that must hold at least one query for training and evaluation to run.
REQUIRED_SPLITS = tuple(name for name, _ in SPLIT_SHARES)


def split_of(query: str, seed: int) -> str:
    """The split of one query text: a uniform draw from 64 bits of BLAKE2b over the seed and
    the query's :func:`~pipeline.core.text.identity_key`, so spellings of one query that
    differ only in case or spacing never land in train and test at once."""
    key = f"{seed}\x1f{identity_key(query)}".encode("utf-8", "surrogatepass")
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
    edge = 0.0
    for name, share in SPLIT_SHARES:
        edge += share
        if u < edge:
            return name
    return SPLIT_SHARES[-1][0]


def derive_queries(texts: Iterable[str], seed: int) -> pd.DataFrame:
    """A queries table (``query_id, query, split``) for the distinct ``texts``, sorted.

    ``query_id`` is ``"q"`` + 12 hex digits of the text's hash, so ids too survive added
    queries. Raises a one-line :class:`DataError` when a required split comes out empty
    (too few queries to train, choose an epoch and evaluate).
    """
    unique = sorted({str(t) for t in texts})
    ids = ["q" + hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest() for t in unique]
    frame = pd.DataFrame({"query_id": ids, "query": unique, "split": [split_of(t, seed) for t in unique]})
    counts = frame["split"].value_counts()
    empty = [name for name in REQUIRED_SPLITS if counts.get(name, 0) == 0]
    if empty:
        raise DataError(f"{len(unique)} distinct queries give no {empty[0]!r} query in the derived "
                        f"{'/'.join(REQUIRED_SPLITS)} split; add queries or pass a queries file with a split column")
    return frame


__all__ = ["REQUIRED_SPLITS", "SPLIT_SHARES", "derive_queries", "split_of"]
