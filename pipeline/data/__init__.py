"""Data contracts and loaders: catalog, engagement, query log, qrels.

* :mod:`~pipeline.data.contracts`: canonical columns, :class:`Dataset`, the splits, and
  the views derived from them (product text, qrels dict, vocabulary-mismatch queries);
* :mod:`~pipeline.data.io`: read and write any supported file format;
* :mod:`~pipeline.data.validate`: loaders that type and check each file kind, one-line errors;
* :mod:`~pipeline.data.mapping`: TOML column/label/event mappings for public datasets;
* :mod:`~pipeline.data.splits`: seeded per-query splits for datasets without them.

The stages may import this package: it stands on :mod:`pipeline.core` only, never on
``retrieval/``, ``rerank/`` or the orchestration. The names below are its public surface.
"""
from pipeline.data.contracts import (CATALOG_COLUMNS, ENGAGEMENT_COLUMNS, ENGAGEMENT_GRADES, QRELS_COLUMNS,
                                     QUERY_COLUMNS, SPLITS, Dataset, brand_model_queries, engagement_qrels, product_text,
                                     product_text_fields, qrels_dict, vocabulary_mismatch_queries)
from pipeline.data.io import FORMATS, find_data_file, load_position_log, read_table, write_parquet
from pipeline.data.mapping import (LABEL_PRESETS, Mapping, SectionMapping, derive_product_id, load_mapping,
                                   parse_mapping)
from pipeline.data.splits import REQUIRED_SPLITS, SPLIT_SHARES, derive_queries, split_of
from pipeline.data.validate import (dataset_paths, dataset_stats, load_catalog, load_dataset, load_engagement,
                                    load_qrels, load_queries, validate_dataset, warn)

__all__ = [
    "CATALOG_COLUMNS", "ENGAGEMENT_COLUMNS", "ENGAGEMENT_GRADES", "FORMATS", "LABEL_PRESETS", "QRELS_COLUMNS",
    "QUERY_COLUMNS", "REQUIRED_SPLITS", "SPLITS", "SPLIT_SHARES", "Dataset", "Mapping", "brand_model_queries", "SectionMapping",
    "dataset_paths", "dataset_stats", "derive_product_id", "derive_queries", "engagement_qrels", "find_data_file",
    "load_catalog", "load_dataset", "load_engagement", "load_mapping",
    "load_position_log", "load_qrels", "load_queries", "parse_mapping", "product_text", "product_text_fields",
    "qrels_dict", "read_table", "split_of", "validate_dataset", "vocabulary_mismatch_queries", "warn", "write_parquet",
]
