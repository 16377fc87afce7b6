"""Schema mapping: read public datasets (Amazon ESCI, Wayfair WANDS, Home Depot, your own
logs) whose column names and labels differ from our contracts, without code changes.

A TOML file (``--mapping FILE``) with one optional section per file kind::

    [catalog]
    format = "tsv"                              # override the suffix-based guess
    attributes = ["product_color", "product_features"]   # joined into `attributes`
    [catalog.columns]                           # source name -> canonical name
    product_uid = "product_id"
    product_title = "title"

    [qrels]
    labels = "esci"                             # preset (esci | wands | "1-4" range) or a table:
    # [qrels.labels]  Exact = 2  Partial = 1  Irrelevant = 0
    [qrels.columns]
    esci_label = "relevance"

    [engagement.events]                         # event-level logs: raw value -> event
    view = "impression"
    atc = "add_to_cart"

Numeric grades on another scale (``[qrels]`` only; one of these, not with a labels table):

* ``labels = "1-4"``: a range preset ``"LOW-HIGH"`` maps LOW..HIGH to 0..HIGH-LOW, and a
  value outside the range is an error (a typo, not a grade);
* ``offset = -1`` and/or ``scale = 1.5``: grade = value * scale + offset, for scales a range
  cannot express (averaged ratings such as 2.33).

A numeric transform rounds to the nearest grade (halves up), so averaged ratings land on
one. Grades start at 0 = irrelevant; a qrels file whose lowest grade is not 0 loads with a
one-line warning, because a 1-4 scale read as it is makes "irrelevant" a grade-1 match.

Files without product ids (judged (query, title) pairs): ``id_from`` in ``[catalog]``,
``[qrels]`` or ``[engagement]`` names source columns (as in the file, before any rename)
whose text becomes ``product_id`` (:func:`derive_product_id`: case, whitespace and Unicode
forms normalised, then hashed), so the same title judged under two queries is one product.
Each section lists the columns holding the same fields in the same order, so the ids join
(a different number of columns is refused). Catalog rows sharing an id are merged, the
first row in the file wins; qrels rows sharing (query, product_id) keep their highest grade
(any qrels file: one judgement per pair). One file can be both parts::

    # pipeline validate --catalog judgments.csv.gz --qrels judgments.csv.gz --mapping m.toml
    [catalog]
    id_from = ["product_title"]
    [catalog.columns]
    product_title = "title"
    [qrels]
    id_from = ["product_title"]
    labels = "1-4"
    [qrels.columns]
    grade = "relevance"

Why TOML: it is already our config format (``pipeline.toml``), readable, and the standard
library parses it.
"""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.tasks import EVENTS
from pipeline.core.text import identity_key
from pipeline.data.io import FORMATS

LABEL_PRESETS: dict[str, dict[str, int]] = {
    # Amazon ESCI: Exact / Substitute / Complement / Irrelevant
    "esci": {"E": 3, "S": 2, "C": 1, "I": 0, "exact": 3, "substitute": 2, "complement": 1, "irrelevant": 0},
    # Wayfair WANDS: Exact / Partial / Irrelevant
    "wands": {"Exact": 2, "Partial": 1, "Irrelevant": 0, "exact": 2, "partial": 1, "irrelevant": 0},
}
SECTIONS = ("catalog", "engagement", "queries", "qrels")
_KEYS = {"columns", "attributes", "labels", "events", "format", "id_from", "offset", "scale"}
#: Keys that mean something in some sections only: elsewhere they would be silently ignored.
_ONLY_IN = {"id_from": ("catalog", "engagement", "qrels"), "offset": ("qrels",), "scale": ("qrels",)}
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
#: Joins the normalised id_from fields; whitespace, so normalisation removes it from every field
#: and ("a b", "c") can never hash like ("a", "b c").
_FIELD_SEP = "\x1f"


def derive_product_id(fields: Sequence[str]) -> str:
    """A stable ``product_id`` from a product's text fields (``id_from``).

    Unicode compatibility forms (NFKC), case and whitespace are normalised first, because
    the same title is typed with different spacing and capitals across judgement rows and
    must still be one product. 64 bits of BLAKE2b: collisions stay improbable at
    millions of products, and the id is the same on every machine and run.
    """
    key = _FIELD_SEP.join(identity_key(f) for f in fields)
    return "p" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class GradeScale:
    """Numeric labels to grades: ``round(value * scale + offset)``, halves rounded up.

    ``bounds`` (from a ``"LOW-HIGH"`` labels preset) are the raw values allowed, so a value
    off the declared scale is reported instead of becoming a grade nobody meant.
    """

    offset: float = 0.0
    scale: float = 1.0
    bounds: tuple[int, int] | None = None

    def grades(self, values: np.ndarray) -> np.ndarray:
        """Grades of finite raw ``values`` (int64; range and sign are checked by the loader)."""
        return np.floor(values * self.scale + self.offset + 0.5).astype(np.int64)


@dataclass
class SectionMapping:
    """How to turn one raw file into its canonical columns."""

    columns: dict[str, str] = field(default_factory=dict)      # source -> canonical
    attributes: list[str] = field(default_factory=list)        # source columns joined into `attributes`
    labels: dict[str, int] = field(default_factory=dict)       # string label -> grade
    events: dict[str, str] = field(default_factory=dict)       # raw event value -> canonical event
    format: str | None = None
    id_from: list[str] = field(default_factory=list)           # source columns hashed into product_id
    grade_scale: GradeScale | None = None                      # numeric labels -> grades

    def source_name(self, canonical: str) -> str:
        """The raw column that feeds ``canonical`` (itself when not renamed)."""
        for src, dst in self.columns.items():
            if dst == canonical:
                return src
        return canonical

    def apply(self, frame: pd.DataFrame, path: Path) -> pd.DataFrame:
        """Join attribute columns, then rename; a missing mapped column is a one-line error."""
        if self.attributes:
            for col in self.attributes:
                if col not in frame.columns:
                    raise DataError(f"{path}: missing column {col!r} listed in the mapping's attributes")
            joined = [_join_attributes(row, self.attributes) for row in frame[self.attributes].itertuples(index=False)]
            if "attributes" in frame.columns and "attributes" not in self.attributes:
                base = frame["attributes"].fillna("").astype(str)
                joined = ["; ".join(p for p in (b.strip(), j) if p) for b, j in zip(base, joined)]
            frame = frame.drop(columns=[c for c in self.attributes if c != "attributes"]).assign(attributes=joined)
        if self.columns:
            frame = frame.rename(columns=self.columns)
        return frame


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def _join_attributes(row: tuple, columns: list[str]) -> str:
    """One ``"key: value; ..."`` string from list-like, dict-like or plain attribute fields."""
    parts: list[str] = []
    for name, value in zip(columns, row):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(("[", "{")):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    pass
        if isinstance(value, dict):
            parts += [f"{k}: {_format_value(v)}" for k, v in value.items() if _format_value(v)]
        elif isinstance(value, str) and "|" in value and ":" in value:   # WANDS "k:v|k:v"
            for pair in value.split("|"):
                key, _, val = pair.partition(":")
                if key.strip() and val.strip():
                    parts.append(f"{key.strip()}: {val.strip()}")
        else:
            text = _format_value(value)
            if text:
                parts.append(f"{name}: {text}")
    return "; ".join(parts)


@dataclass
class Mapping:
    """Per-file-kind mappings (empty = the file already uses our column names)."""

    catalog: SectionMapping = field(default_factory=SectionMapping)
    engagement: SectionMapping = field(default_factory=SectionMapping)
    queries: SectionMapping = field(default_factory=SectionMapping)
    qrels: SectionMapping = field(default_factory=SectionMapping)


def _labels(name: str, raw: dict[str, Any], where: str) -> tuple[dict[str, int], GradeScale | None]:
    """The label table (strings -> grades) or the numeric :class:`GradeScale`, never both:
    a label is either a word to look up or a number to rescale."""
    labels = raw.get("labels", {})
    numeric = [k for k in ("offset", "scale") if k in raw]
    match = _RANGE.fullmatch(labels) if isinstance(labels, str) else None
    if match:
        if numeric:
            raise DataError(f"{where}: [{name}] labels = {labels!r} already sets the scale; drop {numeric[0]!r}")
        return {}, _range_scale(name, match, where)
    if isinstance(labels, str):
        if labels.lower() not in LABEL_PRESETS:
            raise DataError(f"{where}: [{name}] unknown labels preset {labels!r} "
                            f"(use {', '.join(LABEL_PRESETS)} or a numeric range such as \"1-4\")")
        labels = LABEL_PRESETS[labels.lower()]
    if not isinstance(labels, dict) or not all(_is_int(v) and v >= 0 for v in labels.values()):
        raise DataError(f"{where}: [{name}.labels] must map label strings to non-negative integers")
    if labels and numeric:
        raise DataError(f"{where}: [{name}] {numeric[0]!r} rescales numeric labels; a labels table maps "
                        "strings: use one")
    if not numeric:
        return dict(labels), None
    offset, scale = _number(name, raw, "offset", 0.0, where), _number(name, raw, "scale", 1.0, where)
    if scale <= 0:
        raise DataError(f"{where}: [{name}] scale must be a positive number (a negative one reverses the grades)")
    return {}, GradeScale(offset=offset, scale=scale)


def _range_scale(name: str, match: re.Match[str], where: str) -> GradeScale:
    """``"LOW-HIGH"`` -> LOW..HIGH mapped to 0..HIGH-LOW, values outside refused."""
    low, high = int(match[1]), int(match[2])
    if low >= high:
        raise DataError(f"{where}: [{name}] labels range {match[0]!r} must go from low to high (e.g. \"1-4\")")
    return GradeScale(offset=float(-low), bounds=(low, high))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, raw: dict[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DataError(f"{where}: [{name}] {key} must be a number, got {value!r}")
    return float(value)


def _names(name: str, raw: dict[str, Any], key: str, where: str) -> list[str]:
    """A column name or a list of them (``attributes``, ``id_from``)."""
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: [{name}] {key} must be a column name or a list of column names")
    return list(value)


def _table(name: str, raw: dict[str, Any], key: str, where: str, what: str) -> dict[str, str]:
    value = raw.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(f"{where}: [{name}.{key}] must map {what}")
    return dict(value)


def _section(name: str, raw: Any, where: str) -> SectionMapping:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: [{name}] must be a table")
    unknown = set(raw) - _KEYS
    if unknown:
        raise DataError(f"{where}: [{name}] unknown key {sorted(unknown)[0]!r} (expected {', '.join(sorted(_KEYS))})")
    for key, sections in _ONLY_IN.items():
        if key in raw and name not in sections:
            raise DataError(f"{where}: [{name}] {key} applies to {', '.join(f'[{s}]' for s in sections)} only")
    labels, grade_scale = _labels(name, raw, where)
    columns = _table(name, raw, "columns", where, "source column names to canonical names")
    events = _table(name, raw, "events", where, "raw event values to events")
    bad = [v for v in events.values() if v not in EVENTS]
    if bad:
        raise DataError(f"{where}: [{name}.events] unknown event {bad[0]!r} (expected {', '.join(EVENTS)})")
    fmt = raw.get("format")
    if fmt is not None and fmt not in set(FORMATS.values()):
        raise DataError(f"{where}: [{name}] unknown format {fmt!r} (use {', '.join(sorted(set(FORMATS.values())))})")
    id_from = _names(name, raw, "id_from", where)
    if "id_from" in raw and not id_from:
        raise DataError(f"{where}: [{name}] id_from is empty: list the column(s) to derive product_id from")
    return SectionMapping(columns=columns, attributes=_names(name, raw, "attributes", where), labels=labels,
                          events={str(k).lower(): v for k, v in events.items()}, format=fmt,
                          id_from=id_from, grade_scale=grade_scale)


def _check_ids_join(mapping: Mapping, where: str) -> None:
    """Sections deriving ids from different numbers of fields could never share an id: every
    judgement would be dropped as an unknown product, so refuse the mapping instead."""
    base = mapping.catalog.id_from
    for name in ("qrels", "engagement"):
        other = getattr(mapping, name).id_from
        if base and other and len(base) != len(other):
            raise DataError(f"{where}: [{name}] id_from lists {len(other)} column(s) but [catalog] id_from "
                            f"lists {len(base)}: the derived ids would never match")


def parse_mapping(data: dict[str, Any], where: str = "mapping") -> Mapping:
    """Build a :class:`Mapping` from a parsed TOML/dict, validating section and key names."""
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise DataError(f"{where}: unknown section [{sorted(unknown)[0]}] (expected {', '.join(SECTIONS)})")
    mapping = Mapping(**{name: _section(name, data[name], where) for name in SECTIONS if name in data})
    _check_ids_join(mapping, where)
    return mapping


def load_mapping(mapping: Mapping | str | Path | dict | None) -> Mapping:
    """A Mapping from an object, a dict, a TOML file path, or None (identity)."""
    if mapping is None:
        return Mapping()
    if isinstance(mapping, Mapping):
        return mapping
    if isinstance(mapping, dict):
        return parse_mapping(mapping)
    path = Path(mapping)
    if not path.is_file():
        raise DataError(f"{path}: mapping file not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid TOML ({str(exc).splitlines()[0]})") from None
    return parse_mapping(data, str(path))
