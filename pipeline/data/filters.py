"""Catalog filters: ``category=Sofas``, ``price<=500``, ``brand in Acme,Nordic``.

A filter names a catalog column, an operator (:data:`OPERATORS`) and a value. The value is
typed by the column's Arrow type (the Parquet schema), so ``price<=abc`` is refused with
one line instead of comparing text with numbers, and ``price<=500`` compares numbers, not
strings. Rows whose value is missing never match. Several filters all have to hold (AND).

Why here, in the data layer: the CLI, the library searcher and batch scoring all accept
filters, and the stages must not own catalog semantics.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import DataError

#: Operators, longest first so ``<=`` is not read as ``<`` followed by ``=``.
OPERATORS = ("<=", ">=", "!=", "==", "=", "<", ">", "in")
#: Several filters in one string (the query log's ``filter`` column) are separated by this.
FILTER_SEPARATOR = ";"
_PATTERN = re.compile(r"^\s*(?P<column>[^\s<>=!]+?)\s*(?:(?P<op><=|>=|!=|==|=|<|>)|\s(?P<in>in)\s)\s*(?P<value>.*?)\s*$")
_COMPARE = {"=": "equal", "==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
            ">": "greater", ">=": "greater_equal"}


@dataclass(frozen=True)
class Filter:
    """One parsed condition; ``values`` holds one value, or the list of an ``in``."""

    column: str
    op: str
    values: tuple[str, ...]
    spec: str


def parse_filter(spec: str) -> Filter:
    """Parse ``column<op>value`` (``column in a,b,c``); one-line DataError when malformed."""
    match = _PATTERN.match(str(spec))
    if not match or not match.group("value"):
        raise DataError(f"filter {spec!r}: expected COLUMN OP VALUE with OP one of "
                        f"{', '.join(o for o in OPERATORS if o != '==')} (e.g. 'price<=500', 'category in Sofas,Chairs')")
    op = match.group("op") or "in"
    value = match.group("value")
    if op == "in":
        values = tuple(v.strip() for v in value.strip("()[]").split(",") if v.strip())
        if not values:
            raise DataError(f"filter {spec!r}: 'in' needs a comma-separated list of values")
    else:
        values = (value.strip("'\""),)
    return Filter(match.group("column"), "=" if op == "==" else op, values, str(spec).strip())


def parse_filters(specs: Sequence[str] | str | None) -> tuple[Filter, ...]:
    """Parse several filters (a list, or one string with :data:`FILTER_SEPARATOR` between them)."""
    if specs is None:
        return ()
    if isinstance(specs, str):
        specs = specs.split(FILTER_SEPARATOR)
    return tuple(parse_filter(s) for s in specs if str(s).strip())


def _typed(f: Filter, field: Any) -> list[Any]:
    """The filter's values cast to the column's Arrow type (one-line DataError if they do not fit)."""
    import pyarrow as pa

    out = []
    for value in f.values:
        try:
            out.append(pa.scalar(value, pa.string()).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"filter {f.spec!r}: {value!r} is not a valid value for column {f.column!r} "
                            f"(type {field.type})") from None
    return out


def filter_mask(filters: Sequence[Filter], table: Any) -> np.ndarray:
    """Boolean mask over ``table``'s rows (a pyarrow Table of catalog columns) where every filter holds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = np.ones(table.num_rows, dtype=bool)
    for f in filters:
        if f.column not in table.schema.names:
            raise DataError(f"filter {f.spec!r}: the catalog has no column {f.column!r} "
                            f"(columns: {', '.join(table.schema.names)})")
        field = table.schema.field(f.column)
        column = table.column(f.column)
        values = _typed(f, field)
        try:
            if f.op == "in":
                hit = pc.is_in(column, value_set=pa.array([v.as_py() for v in values], type=field.type))
            else:
                hit = getattr(pc, _COMPARE[f.op])(column, values[0])
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise DataError(f"filter {f.spec!r}: operator {f.op!r} does not apply to column {f.column!r} "
                            f"(type {field.type})") from None
        mask &= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    return mask
