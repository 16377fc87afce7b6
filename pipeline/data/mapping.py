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
    labels = "esci"                             # preset (esci | wands) or a table:
    # [qrels.labels]  Exact = 2  Partial = 1  Irrelevant = 0
    [qrels.columns]
    esci_label = "relevance"

    [engagement.events]                         # event-level logs: raw value -> event
    view = "impression"
    atc = "add_to_cart"

Why TOML: it is already our config format (``pipeline.toml``), readable, and the standard
library parses it.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.tasks import EVENTS

LABEL_PRESETS: dict[str, dict[str, int]] = {
    # Amazon ESCI: Exact / Substitute / Complement / Irrelevant
    "esci": {"E": 3, "S": 2, "C": 1, "I": 0, "exact": 3, "substitute": 2, "complement": 1, "irrelevant": 0},
    # Wayfair WANDS: Exact / Partial / Irrelevant
    "wands": {"Exact": 2, "Partial": 1, "Irrelevant": 0, "exact": 2, "partial": 1, "irrelevant": 0},
}
SECTIONS = ("catalog", "engagement", "queries", "qrels")
_KEYS = {"columns", "attributes", "labels", "events", "format"}


@dataclass
class SectionMapping:
    """How to turn one raw file into its canonical columns."""

    columns: dict[str, str] = field(default_factory=dict)      # source -> canonical
    attributes: list[str] = field(default_factory=list)        # source columns joined into `attributes`
    labels: dict[str, int] = field(default_factory=dict)       # string label -> grade
    events: dict[str, str] = field(default_factory=dict)       # raw event value -> canonical event
    format: str | None = None

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


def _section(name: str, raw: Any, where: str) -> SectionMapping:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: [{name}] must be a table")
    unknown = set(raw) - _KEYS
    if unknown:
        raise DataError(f"{where}: [{name}] unknown key {sorted(unknown)[0]!r} (expected {', '.join(sorted(_KEYS))})")
    labels = raw.get("labels", {})
    if isinstance(labels, str):
        if labels.lower() not in LABEL_PRESETS:
            raise DataError(f"{where}: [{name}] unknown labels preset {labels!r} (use {', '.join(LABEL_PRESETS)})")
        labels = LABEL_PRESETS[labels.lower()]
    if not isinstance(labels, dict) or not all(isinstance(v, int) and v >= 0 for v in labels.values()):
        raise DataError(f"{where}: [{name}.labels] must map label strings to non-negative integers")
    columns = raw.get("columns", {})
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise DataError(f"{where}: [{name}.columns] must map source column names to canonical names")
    attributes = raw.get("attributes", [])
    if isinstance(attributes, str):
        attributes = [attributes]
    events = raw.get("events", {})
    bad = [v for v in events.values() if v not in EVENTS]
    if bad:
        raise DataError(f"{where}: [{name}.events] unknown event {bad[0]!r} (expected {', '.join(EVENTS)})")
    return SectionMapping(columns=dict(columns), attributes=list(attributes), labels=dict(labels),
                          events={str(k).lower(): v for k, v in events.items()}, format=raw.get("format"))


def parse_mapping(data: dict[str, Any], where: str = "mapping") -> Mapping:
    """Build a :class:`Mapping` from a parsed TOML/dict, validating section and key names."""
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise DataError(f"{where}: unknown section [{sorted(unknown)[0]}] (expected {', '.join(SECTIONS)})")
    return Mapping(**{name: _section(name, data[name], where) for name in SECTIONS if name in data})


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
