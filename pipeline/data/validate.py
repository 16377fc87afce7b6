"""Loaders that check the data contracts: catalog, engagement, query log, qrels, datasets.

Every loader returns a pandas DataFrame with the canonical columns of
:mod:`pipeline.data.contracts` (string ids, int64 counts/grades, float64 price), whatever the
input format or column names (a mapping renames them, see :mod:`pipeline.data.mapping`). Bad
input raises a one-line :class:`DataError` naming the file, the column and the row (rows are
counted from 1 = first data record, after any header), because a message that says *where*
is what lets someone fix a million-row file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.tasks import EVENTS, FUNNEL
from pipeline.data.contracts import ENGAGEMENT_COLUMNS, QRELS_COLUMNS, SPLITS, Dataset, vocabulary_mismatch_queries
from pipeline.data.io import find_data_file, read_table
from pipeline.data.mapping import GradeScale, Mapping, SectionMapping, derive_product_id, load_mapping

def warn(message: str) -> None:
    """Data warnings go to stderr (one line) so stdout stays clean for --json."""
    sys.stderr.write(f"warning: {message}\n")


def _require(frame: pd.DataFrame, columns: list[str], path: Path, section: SectionMapping) -> None:
    for col in columns:
        if col not in frame.columns:
            source = section.source_name(col)
            hint = f" (mapped from {source!r})" if source != col else ""
            have = ", ".join(map(str, frame.columns[:12]))
            raise DataError(f"{path}: missing required column {col!r}{hint}; found: {have}")


def _as_str(frame: pd.DataFrame, col: str) -> pd.Series:
    """String column: NaN/None become empty, numbers become their text (ids like 123)."""
    s = frame[col]
    if pd.api.types.is_float_dtype(s) and s.dropna().apply(float.is_integer).all():
        s = s.astype("Int64")
    return s.astype(object).where(s.notna(), "").astype(str).str.strip()


def _bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _as_int(frame: pd.DataFrame, col: str, path: Path, *, minimum: int | None = 0) -> np.ndarray:
    """Integer column with a row-naming error for non-integers and negatives."""
    raw = frame[col]
    num = pd.to_numeric(raw, errors="coerce")
    blank = raw.astype(str).str.strip() == "" if raw.dtype == object or pd.api.types.is_string_dtype(raw) else None
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    bad |= np.where(np.isfinite(values), values % 1 != 0, False)
    if bad.any():
        i = _bad_row(bad)
        value = raw.iloc[i]
        what = "empty value" if blank is not None and bool(blank.iloc[i]) else f"not an integer: {value!r}"
        raise DataError(f"{path}: column {col!r}, row {i + 1}: {what}")
    out = values.astype(np.int64)
    if minimum is not None and (out < minimum).any():
        i = _bad_row(out < minimum)
        raise DataError(f"{path}: column {col!r}, row {i + 1}: negative count {out[i]}" if minimum == 0 else
                        f"{path}: column {col!r}, row {i + 1}: value {out[i]} below {minimum}")
    return out


def _frame_in(source: str | Path | pd.DataFrame, section: SectionMapping) -> tuple[pd.DataFrame, Path]:
    if isinstance(source, pd.DataFrame):
        frame, path = source.copy(), Path("<dataframe>")
    else:
        path = Path(source)
        frame = read_table(path, section.format)
    if not section.id_from:
        return section.apply(frame, path), path
    ids = _derived_ids(frame, path, section.id_from)
    frame = section.apply(frame, path)
    if "product_id" in frame.columns:
        source_name = section.source_name("product_id")
        raise DataError(f"{path}: the mapping's id_from derives 'product_id', but the file has a "
                        f"{source_name!r} column for it too; drop one of them")
    return frame.assign(product_id=ids), path


def _derived_ids(frame: pd.DataFrame, path: Path, columns: list[str]) -> list[str]:
    """``product_id`` per row from the source ``columns`` (:func:`derive_product_id`), read
    before any rename so every section names the same raw columns."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} listed in the mapping's id_from")
    fields = [_as_str(frame, c) for c in columns]
    empty = np.logical_and.reduce([(f == "").to_numpy() for f in fields])
    if empty.any():
        raise DataError(f"{path}: row {_bad_row(empty) + 1}: {' and '.join(map(repr, columns))} empty, "
                        "no text to derive a product_id from")
    return [derive_product_id(row) for row in zip(*fields)]


def load_catalog(source: str | Path | pd.DataFrame, mapping: Mapping | str | Path | dict | None = None,
                 report: dict | None = None) -> pd.DataFrame:
    """Catalog with unique non-empty ``product_id``, non-empty ``title`` and canonical columns.

    A duplicate id is an error, except for ids the mapping derives (``id_from``): there the
    rows are one product judged several times, and the first row in the file is kept.
    """
    section = load_mapping(mapping).catalog
    frame, path = _frame_in(source, section)
    _require(frame, ["product_id", "title"], path, section)
    out = pd.DataFrame({"product_id": _as_str(frame, "product_id")})
    empty = (out["product_id"] == "").to_numpy()
    if empty.any():
        raise DataError(f"{path}: column 'product_id', row {_bad_row(empty) + 1}: empty product_id")
    dup = out["product_id"].duplicated().to_numpy()
    if dup.any() and not section.id_from:
        i = _bad_row(dup)
        pid = out["product_id"].iloc[i]
        first = int(np.flatnonzero((out["product_id"] == pid).to_numpy())[0])
        raise DataError(f"{path}: column 'product_id', row {i + 1}: duplicate product_id {pid!r} (first at row {first + 1})")
    out["title"] = _as_str(frame, "title")
    empty = (out["title"] == "").to_numpy()
    if empty.any():
        raise DataError(f"{path}: column 'title', row {_bad_row(empty) + 1}: empty title")
    for col in ("description", "brand", "category", "attributes"):
        out[col] = _as_str(frame, col) if col in frame.columns else ""
    if "price" in frame.columns:
        raw = frame["price"]
        price = pd.to_numeric(raw, errors="coerce")
        bad = (price.isna() & (raw.astype(str).str.strip() != "") & raw.notna()).to_numpy().copy()
        bad |= (price < 0).fillna(False).to_numpy()
        if bad.any():
            i = _bad_row(bad)
            raise DataError(f"{path}: column 'price', row {i + 1}: not a non-negative number: {raw.iloc[i]!r}")
        out["price"] = price.astype(np.float64).to_numpy()
    else:
        out["price"] = np.nan
    if "rating" in frame.columns:
        out["rating"] = pd.to_numeric(frame["rating"], errors="coerce").astype(np.float64).to_numpy()
    # Other columns pass through untouched: --text-fields may name them.
    for col in frame.columns:
        if col not in out.columns:
            out[col] = frame[col].to_numpy()
    if section.id_from:   # every row was checked above, so errors still name file rows
        out = out[~dup]
        if report is not None:
            report["catalog_rows_merged"] = int(dup.sum())
    return out.reset_index(drop=True)


def _aggregate_events(frame: pd.DataFrame, path: Path, section: SectionMapping) -> pd.DataFrame:
    """One row per event -> one row per (query, product) with funnel counts."""
    _require(frame, ["query", "product_id", "event"], path, section)
    events = _as_str(frame, "event").str.lower().map(lambda e: section.events.get(e, e))
    bad = ~events.isin(list(EVENTS)).to_numpy()
    if bad.any():
        i = _bad_row(bad)
        raise DataError(f"{path}: column 'event', row {i + 1}: unknown event {frame['event'].iloc[i]!r} "
                        f"(expected one of {', '.join(EVENTS)}; map others in [engagement.events])")
    counts = pd.get_dummies(events.map(EVENTS)).reindex(columns=FUNNEL, fill_value=False).astype(np.int64)
    keyed = pd.concat([pd.DataFrame({"query": _as_str(frame, "query"), "product_id": _as_str(frame, "product_id")}),
                       counts], axis=1)
    agg = keyed.groupby(["query", "product_id"], sort=True, as_index=False)[FUNNEL].sum()
    return agg


def load_engagement(source: str | Path | pd.DataFrame, mapping: Mapping | str | Path | dict | None = None,
                    catalog_ids: set[str] | pd.Series | None = None, report: dict | None = None) -> pd.DataFrame:
    """Engagement counts per (query, product), funnel-checked; event logs are aggregated.

    Rows whose product_id is not in ``catalog_ids`` are counted, reported with a warning
    and skipped (logs outlive catalogs; that is expected, not fatal).
    """
    section = load_mapping(mapping).engagement
    frame, path = _frame_in(source, section)
    report = report if report is not None else {}
    is_events = "event" in frame.columns and not set(FUNNEL) & set(frame.columns)
    if is_events:
        report["engagement_event_rows"] = int(len(frame))
        frame = _aggregate_events(frame, path, section)
    _require(frame, ENGAGEMENT_COLUMNS, path, section)
    out = pd.DataFrame({"query": _as_str(frame, "query"), "product_id": _as_str(frame, "product_id")})
    for col in FUNNEL:
        out[col] = _as_int(frame, col, path)
    for upper, lower in zip(FUNNEL, FUNNEL[1:]):
        bad = (out[lower] > out[upper]).to_numpy()
        if bad.any():
            i = _bad_row(bad)
            key = f" for ({out['query'].iloc[i]!r}, {out['product_id'].iloc[i]!r}) after aggregating events" if is_events else ""
            raise DataError(f"{path}: column {lower!r}, row {i + 1}: funnel violation{key}: "
                            f"{lower} ({out[lower].iloc[i]}) > {upper} ({out[upper].iloc[i]})")
    for col in ("position",):
        if col in frame.columns:
            out[col] = pd.to_numeric(frame[col], errors="coerce").astype(np.float64).to_numpy()
    out = _drop_unknown(out, catalog_ids, path, "engagement", report)
    if out.duplicated(["query", "product_id"]).any():   # e.g. daily rows: sum them
        keep = [c for c in out.columns if c in FUNNEL or c in ("query", "product_id")]
        out = out[keep].groupby(["query", "product_id"], sort=True, as_index=False)[FUNNEL].sum()
    report["engagement_rows"] = int(len(out))
    return out.reset_index(drop=True)


def _drop_unknown(frame: pd.DataFrame, catalog_ids, path: Path, what: str, report: dict) -> pd.DataFrame:
    if catalog_ids is None:
        return frame
    known = frame["product_id"].isin(catalog_ids if not isinstance(catalog_ids, set) else list(catalog_ids))
    n_unknown = int((~known).sum())
    report[f"{what}_unknown_products"] = n_unknown
    if n_unknown:
        first = frame.loc[~known, "product_id"].iloc[0]
        warn(f"{path}: {n_unknown} {what} row(s) refer to product ids not in the catalog "
             f"(e.g. {first!r}); skipped")
        frame = frame[known]
    return frame


def load_queries(source: str | Path | pd.DataFrame, mapping: Mapping | str | Path | dict | None = None,
                 default_split: str = "test") -> pd.DataFrame:
    """Queries with ``query_id``, ``query``, ``split`` (+ extra columns kept).

    A missing ``split`` column means every query is ``default_split``; a missing
    ``query_id`` is generated from the row number. No query text may be in two splits.
    """
    section = load_mapping(mapping).queries
    frame, path = _frame_in(source, section)
    _require(frame, ["query"], path, section)
    out = pd.DataFrame({"query_id": _as_str(frame, "query_id") if "query_id" in frame.columns
                        else [f"q{i:06d}" for i in range(len(frame))],
                        "query": _as_str(frame, "query")})
    empty = (out["query"] == "").to_numpy()
    if empty.any():
        raise DataError(f"{path}: column 'query', row {_bad_row(empty) + 1}: empty query")
    out["split"] = _as_str(frame, "split").str.lower() if "split" in frame.columns else default_split
    bad = ~out["split"].isin(SPLITS).to_numpy()
    if bad.any():
        i = _bad_row(bad)
        raise DataError(f"{path}: column 'split', row {i + 1}: unknown split {out['split'].iloc[i]!r} "
                        f"(expected {', '.join(SPLITS)})")
    n_splits = out.groupby("query")["split"].nunique()
    if (n_splits > 1).any():
        q = n_splits[n_splits > 1].index[0]
        rows = np.flatnonzero((out["query"] == q).to_numpy())
        raise DataError(f"{path}: column 'split', row {rows[-1] + 1}: query {q!r} is in more than one split")
    for col in frame.columns:
        if col not in out.columns:
            out[col] = frame[col].to_numpy()
    return out.reset_index(drop=True)


def load_qrels(source: str | Path | pd.DataFrame, mapping: Mapping | str | Path | dict | None = None,
               catalog_ids=None, queries: pd.DataFrame | None = None, report: dict | None = None) -> pd.DataFrame:
    """Graded judgements ``query``, ``product_id``, ``relevance`` (int >= 0).

    String labels are mapped to grades by the mapping's ``labels`` (a table or a preset:
    ``esci`` E/S/C/I -> 3/2/1/0, ``wands`` Exact/Partial/Irrelevant -> 2/1/0); numeric
    ones on another scale by a range preset (``"1-4"``) or ``offset``/``scale``. A lowest
    grade other than 0 is warned about; a repeated (query, product) pair keeps its highest
    grade. A qrels file keyed by ``query_id`` (WANDS) is resolved against ``queries``, and
    refused in one line without them (there would be no query text to train on).
    """
    section = load_mapping(mapping).qrels
    frame, path = _frame_in(source, section)
    report = report if report is not None else {}
    if "query" not in frame.columns and "query_id" in frame.columns and queries is None:
        raise DataError(f"{path}: judgements name queries by 'query_id' only; give the queries file that "
                        "holds each query_id's text (--queries)")
    if "query" not in frame.columns and "query_id" in frame.columns:
        texts = dict(zip(queries["query_id"].astype(str), queries["query"]))
        qid = _as_str(frame, "query_id")
        missing = ~qid.isin(list(texts)).to_numpy()
        if missing.any():
            i = _bad_row(missing)
            raise DataError(f"{path}: column 'query_id', row {i + 1}: query id {qid.iloc[i]!r} not in the queries file")
        frame = frame.assign(query=qid.map(texts).to_numpy())
    _require(frame, QRELS_COLUMNS, path, section)
    out = pd.DataFrame({"query": _as_str(frame, "query"), "product_id": _as_str(frame, "product_id")})
    out["relevance"] = _grades(frame, path, section)
    _warn_without_zero_grade(out["relevance"], path, section)
    out = _merge_duplicate_judgements(out, report)
    out = _drop_unknown(out, catalog_ids, path, "qrels", report)
    report["qrels_rows"] = int(len(out))
    return out.reset_index(drop=True)


def _grades(frame: pd.DataFrame, path: Path, section: SectionMapping) -> np.ndarray:
    """The ``relevance`` column as int64 grades >= 0: looked up in the label table, rescaled
    by the grade scale, or read as integers, as the mapping says."""
    if section.grade_scale is not None:
        return _scaled_grades(frame["relevance"], path, section.grade_scale)
    labels = frame["relevance"]
    if section.labels:
        key = _as_str(frame, "relevance")
        mapped = key.map(lambda v: section.labels.get(v, section.labels.get(v.lower())))
        bad = mapped.isna().to_numpy()
        if bad.any():
            i = _bad_row(bad)
            raise DataError(f"{path}: column 'relevance', row {i + 1}: label {key.iloc[i]!r} is not in the "
                            f"label map ({', '.join(map(str, section.labels))})")
        labels = mapped
    try:
        return _as_int(frame.assign(relevance=labels.to_numpy()), "relevance", path, minimum=0)
    except DataError as exc:
        raise DataError(f"{exc} (string labels need a [qrels] labels map or preset in --mapping)") from None


def _scaled_grades(raw: pd.Series, path: Path, scale: GradeScale) -> np.ndarray:
    """Numeric labels through ``scale``; a non-number, a value off a declared range or a
    negative grade is a row-naming error."""
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        i = _bad_row(bad)
        raise DataError(f"{path}: column 'relevance', row {i + 1}: not a number: {raw.iloc[i]!r}")
    if scale.bounds is not None:
        low, high = scale.bounds
        off = (values < low) | (values > high)
        if off.any():
            i = _bad_row(off)
            raise DataError(f"{path}: column 'relevance', row {i + 1}: {raw.iloc[i]!r} is outside the "
                            f"labels range {low}-{high}")
    grades = scale.grades(values)
    if (grades < 0).any():
        i = _bad_row(grades < 0)
        raise DataError(f"{path}: column 'relevance', row {i + 1}: {raw.iloc[i]!r} gives grade {grades[i]} "
                        f"(below 0) with scale = {scale.scale:g}, offset = {scale.offset:g}")
    return grades


def _warn_without_zero_grade(grades: pd.Series, path: Path, section: SectionMapping) -> None:
    """Grades start at 0 = irrelevant; a file whose lowest grade is higher most likely uses a
    scale starting at 1, which read as it is turns every irrelevant product into a match."""
    if grades.empty or int(grades.min()) == 0:
        return
    low, high = int(grades.min()), int(grades.max())
    hint = ("check the [qrels] label mapping" if section.labels or section.grade_scale is not None
            else f'if the scale starts at {low}, map it: labels = "{low}-{high}" in [qrels]')
    warn(f"{path}: lowest relevance grade is {low}, not 0 (irrelevant); {hint}")


def _merge_duplicate_judgements(qrels: pd.DataFrame, report: dict) -> pd.DataFrame:
    """One judgement per (query, product): the highest grade, at the pair's first row.

    Pairs repeat when derived ids merge listings with the same text, or when a file repeats
    a row. The highest grade, because the merged product stands for every listing and
    satisfies the query if one of them does; unlike first/last it does not depend on row
    order, and unlike a mean it stays a grade without a rounding rule.
    """
    dup = qrels.duplicated(["query", "product_id"]).to_numpy()
    report["qrels_duplicates_merged"] = int(dup.sum())
    if not dup.any():
        return qrels
    best = qrels.groupby(["query", "product_id"], sort=False)["relevance"].transform("max")
    return qrels.assign(relevance=best.to_numpy())[~dup]


def dataset_paths(data_dir: str | Path | None = None, **explicit: str | Path | None) -> dict[str, Path | None]:
    """The file of each kind (catalog, engagement, queries, qrels) a dataset is read from:
    an explicit file wins over the directory's ``<kind>.<ext>``; a catalog is required.

    Public so that a caller can fingerprint exactly the files :func:`load_dataset` would
    read without loading them."""
    base = Path(data_dir) if data_dir else None
    if base is not None and not base.is_dir():
        raise DataError(f"{base}: data directory not found")
    paths = {name: (Path(explicit[name]) if explicit.get(name) else find_data_file(base, name))
             for name in ("catalog", "engagement", "queries", "qrels")}
    if paths["catalog"] is None:
        where = f"in {base}" if base is not None else "(pass --catalog or a data directory)"
        raise DataError(f"no catalog file found {where}")
    return paths


def load_dataset(data_dir: str | Path | None = None, *, catalog: str | Path | None = None,
                 engagement: str | Path | None = None, queries: str | Path | None = None,
                 qrels: str | Path | None = None, mapping: Mapping | str | Path | dict | None = None) -> Dataset:
    """Load and validate a dataset directory (``catalog``/``engagement``/``queries``/``qrels``
    as .parquet/.csv/.tsv/.jsonl) and/or explicit files (which win over the directory).

    A catalog is required; the other parts are optional. Engagement and qrels rows for
    unknown products are skipped with a warning.
    """
    paths = dataset_paths(data_dir, catalog=catalog, engagement=engagement, queries=queries, qrels=qrels)
    schema = load_mapping(mapping)
    report: dict[str, Any] = {}
    cat = load_catalog(paths["catalog"], schema, report=report)
    ids = set(cat["product_id"])
    report["catalog_rows"] = int(len(cat))
    qs = load_queries(paths["queries"], schema) if paths["queries"] else None
    if qs is not None:
        report["queries_rows"] = int(len(qs))
    eng = load_engagement(paths["engagement"], schema, catalog_ids=ids, report=report) if paths["engagement"] else None
    qr = load_qrels(paths["qrels"], schema, catalog_ids=ids, queries=qs, report=report) if paths["qrels"] else None
    report["files"] = {k: str(v) for k, v in paths.items() if v is not None}
    return Dataset(catalog=cat, engagement=eng, queries=qs, qrels=qr, report=report)


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Counts and rates that tell whether a loaded dataset is usable for training and
    evaluation: rows per part, skipped unknown products, funnel rates, grade histogram,
    split sizes and the vocabulary-mismatch share."""
    stats: dict[str, Any] = {"products": int(len(ds.catalog)),
                             "categories": int(ds.catalog["category"].replace("", np.nan).nunique())}
    if "catalog_rows_merged" in ds.report:
        stats["catalog_rows_merged"] = int(ds.report["catalog_rows_merged"])
    if ds.queries is not None:
        stats["queries"] = int(len(ds.queries))
        for split in SPLITS:
            stats[f"queries_{split}"] = int((ds.queries["split"] == split).sum())
    if ds.engagement is not None:
        eng = ds.engagement
        imp = max(1, int(eng["impressions"].sum()))
        stats.update({"engagement_rows": int(len(eng)), "impressions": int(eng["impressions"].sum()),
                      "click_rate": float(eng["clicks"].sum() / imp),
                      "add_to_cart_rate": float(eng["add_to_carts"].sum() / imp),
                      "purchase_rate": float(eng["purchases"].sum() / imp),
                      "engagement_unknown_products": int(ds.report.get("engagement_unknown_products", 0))})
    if ds.qrels is not None:
        stats["qrels_rows"] = int(len(ds.qrels))
        stats["qrels_queries"] = int(ds.qrels["query"].nunique())
        for grade, count in ds.qrels["relevance"].value_counts().sort_index().items():
            stats[f"grade_{int(grade)}"] = int(count)
        stats["qrels_unknown_products"] = int(ds.report.get("qrels_unknown_products", 0))
        stats["qrels_duplicates_merged"] = int(ds.report.get("qrels_duplicates_merged", 0))
        qs = ds.queries if ds.queries is not None else pd.DataFrame({"query": ds.qrels["query"].unique()})
        mismatch = vocabulary_mismatch_queries(qs, ds.qrels, ds.catalog)
        stats["mismatch_queries"] = len(mismatch)
        stats["mismatch_share"] = len(mismatch) / max(1, len(qs))
    return stats


def validate_dataset(data_dir: str | Path | None = None, **files: Any) -> dict[str, Any]:
    """`pipeline validate`: load (raising on the first contract violation) and summarise."""
    ds = load_dataset(data_dir, **files)
    return {"files": ds.report.get("files", {}), **dataset_stats(ds)}
