"""Batch scoring of query logs into Parquet, on one machine or on Ray.

:func:`score_logs` is the entry point (``engine="local"`` or ``"ray"``); :class:`BatchScorer`
is the per-batch code both engines run; :func:`read_scored_metadata` reads a scored file's
provenance.
"""
from pipeline.scoring.contract import METADATA_KEY, output_schema, read_scored_metadata
from pipeline.scoring.job import score_logs
from pipeline.scoring.scorer import BatchScorer, Scorer

__all__ = ["score_logs", "BatchScorer", "Scorer", "read_scored_metadata", "output_schema", "METADATA_KEY"]
