"""The data step of `pipeline fit`: any supported dataset in, the canonical dataset out.

Training needs four parts (catalog, engagement, queries with splits, qrels); a user's
dataset often has two. What is missing is derived, each the one way the project knows:

* no engagement: simulated from the labels by the sample world's user model
  (:func:`pipeline.world.simulate.simulate_engagement`), with its per-position impression log;
* no queries with a train split: a seeded per-query split (:mod:`pipeline.data.splits`);
* no qrels: grades from engagement, the deepest funnel event per pair
  (:func:`pipeline.data.engagement_qrels`), so the test split can be evaluated.

The result is written as Parquet into one directory, atomically, with a manifest saying
what came from where and what was derived.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import POSITIONS_FILE
from pipeline.core.errors import DataError

#: A dataset directory's file names, as :func:`pipeline.data.find_data_file` looks them up.
PART_FILES = {"catalog": "catalog.parquet", "engagement": "engagement.parquet", "queries": "queries.parquet",
              "qrels": "qrels.parquet", "positions": POSITIONS_FILE}


def source_inputs(files: dict[str, Path | None], mapping: str | os.PathLike[str] | None, seed: int) -> dict[str, Any]:
    """What the data step reads, as its resumability fingerprint: each source file's sha256
    (not its path: a moved copy is the same data), the mapping's text, the seed (simulation
    and splits) and the split shares. A bad mapping is refused here, before anything runs."""
    from pipeline.core.artifacts import sha256_file
    from pipeline.data import SPLIT_SHARES, load_mapping

    load_mapping(mapping)
    return {"files": {kind: sha256_file(path) for kind, path in files.items() if path is not None},
            "mapping": Path(mapping).read_text(encoding="utf-8") if mapping else None,
            "seed": seed, "split_shares": [list(share) for share in SPLIT_SHARES]}


def canonical_parts(dataset: Any, seed: int) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The four parts training needs (plus a simulated positions log), and a note per part
    that was derived rather than read."""
    from pipeline.data import derive_queries, engagement_qrels
    from pipeline.world.simulate import simulate_engagement

    if dataset.engagement is None and dataset.qrels is None:
        raise DataError("fit needs engagement logs or relevance labels (qrels) to train on; found neither")
    parts: dict[str, pd.DataFrame] = {"catalog": dataset.catalog}
    derived: list[str] = []
    engagement = dataset.engagement
    if engagement is None:
        engagement, parts["positions"] = simulate_engagement(dataset.qrels, dataset.catalog, seed=seed,
                                                             return_positions=True)
        derived.append("engagement: simulated from the qrels (sample world's user model)")
    parts["engagement"] = engagement
    queries = dataset.queries
    if queries is None or not (queries["split"] == "train").any():
        texts = set(engagement["query"].astype(str))
        if dataset.qrels is not None:
            texts |= set(dataset.qrels["query"].astype(str))
        queries = derive_queries(texts, seed)
        derived.append("queries: train/valid/test split per query from a seeded hash of its text")
    parts["queries"] = queries
    qrels = dataset.qrels
    if qrels is None:
        grades = engagement_qrels(engagement, queries["query"])
        qrels = pd.DataFrame([(q, p, g) for q, judged in grades.items() for p, g in judged.items()],
                             columns=["query", "product_id", "relevance"])
        derived.append("qrels: grades from engagement (purchase 3, add to cart 2, click 1, shown 0)")
    parts["qrels"] = qrels
    return parts, derived


def prepare_dataset(files: dict[str, Path | None], mapping: str | os.PathLike[str] | None, out_dir: Path, *,
                    seed: int) -> dict[str, Any]:
    """Load and validate the sources, derive what is missing, write the canonical dataset to
    ``out_dir`` (swapped into place whole); return its statistics and what was derived."""
    from pipeline.core.artifacts import atomic_directory, build_manifest, write_manifest
    from pipeline.data import Dataset, SPLIT_SHARES, dataset_stats, load_dataset, write_parquet

    loaded = load_dataset(**files, mapping=mapping)
    parts, derived = canonical_parts(loaded, seed)
    with atomic_directory(out_dir) as tmp:
        for name, frame in parts.items():
            write_parquet(frame, tmp / PART_FILES[name])
        write_manifest(tmp, build_manifest(
            "dataset", config={"seed": seed, "split_shares": [list(s) for s in SPLIT_SHARES],
                               "mapping": str(mapping) if mapping else None},
            inputs={kind: str(path) for kind, path in files.items() if path is not None}, derived=derived))
    canonical = Dataset(catalog=parts["catalog"], engagement=parts["engagement"], queries=parts["queries"],
                        qrels=parts["qrels"], report=loaded.report)
    return {"derived": derived, **dataset_stats(canonical)}


__all__ = ["PART_FILES", "canonical_parts", "prepare_dataset", "source_inputs"]
