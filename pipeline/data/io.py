"""Reading and writing data files in any supported format (Parquet, CSV, TSV, JSONL).

Reading returns the file as it is (strings for text formats); typing and checking the
values is :mod:`pipeline.data.validate`'s job. Errors are one line naming the file and,
where the format allows, the line or column, because that is what lets someone fix a
million-row file.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from pipeline.core.errors import DataError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
#: Whole-file compression of the text formats, read transparently (``catalog.csv.gz``), as
#: public datasets ship them; Parquet compresses inside the file and needs none of this.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def file_kind(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the file name: ``x.csv.gz`` -> ("csv", "gzip")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    return FORMATS.get(inner), compression


def _read_bytes(path: Path, compression: str | None) -> bytes:
    """The file's bytes, decompressed when the name says so (pyarrow's codecs), one-line errors."""
    if compression is None:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    import pyarrow as pa

    try:
        with pa.input_stream(str(path), compression=compression) as stream:
            return stream.read()
    except (pa.ArrowException, OSError) as exc:
        detail = (str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)[:120]
        raise DataError(f"{path}: not a readable {compression} file ({detail})") from None


def _utf8_error(path: Path, raw: bytes, exc: UnicodeDecodeError, sep: str | None) -> DataError:
    """Name line (and column, for delimited text) of the first byte that is not UTF-8."""
    line_start = raw.rfind(b"\n", 0, exc.start) + 1
    line_no = raw.count(b"\n", 0, exc.start) + 1
    where = f"line {line_no}"
    if sep is not None:
        header = raw[: raw.find(b"\n")].decode("utf-8", errors="replace").rstrip("\r").split(sep)
        col = raw[line_start:exc.start].decode("utf-8", errors="replace").count(sep)
        row = line_no - 1
        name = header[col] if col < len(header) else f"#{col + 1}"
        where = f"column {name!r}, row {row}"
    return DataError(f"{path}: {where}: not valid UTF-8 text (byte 0x{raw[exc.start]:02x})")


def read_table(path: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Read one file into a DataFrame of strings/values, with one-line errors.

    Delimited text and JSONL are decoded strictly as UTF-8 first (so a bad byte is reported
    with its line), then parsed with every field as a string; typing happens in validation.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    detected, compression = file_kind(path)
    kind = fmt or detected
    if kind is None:
        raise DataError(f"{path}: unknown file type {''.join(path.suffixes[-2:]) or path.name!r} "
                        "(use .parquet, .csv, .tsv or .jsonl, optionally .gz, .bz2 or .zst)")
    if kind == "parquet" and compression is None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError, ValueError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            detail = text.split(". ")[0].split(": ")[-1][:120]
            raise DataError(f"{path}: unreadable or truncated Parquet file ({detail})") from None
    if kind == "parquet":
        raise DataError(f"{path}: Parquet files are compressed inside; give the .parquet file itself")
    raw = _read_bytes(path, compression)
    sep = {"csv": ",", "tsv": "\t"}.get(kind)
    try:
        text = raw.decode("utf-8-sig") if raw.startswith(b"\xef\xbb\xbf") else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, raw, exc, sep) from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    if kind == "jsonl":
        return _read_jsonl(path, text)
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                           engine="c")
    except (pd.errors.ParserError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[-1][:160]
        raise DataError(f"{path}: unreadable or truncated {kind.upper()} file ({detail})") from None


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_no}: invalid JSON ({exc.msg}; truncated file?)") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object per line")
        records.append(rec)
    return pd.DataFrame.from_records(records)


def load_position_log(path: str | Path) -> pd.DataFrame:
    """A per-position impression log (query, product_id, position, impressions, clicks) with
    its count columns numeric; validation of the values is the estimator's job."""
    frame = read_table(path)
    for col in ("position", "impressions", "clicks"):
        if col in frame.columns:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Deterministic Parquet: no index and no pandas metadata, so the same frame always
    gives the same bytes (the sample world's reproducibility contract)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path, compression="zstd", write_statistics=True)


def find_data_file(base: Path | None, name: str) -> Path | None:
    """``<base>/<name>.<ext>[.gz|.bz2|.zst]`` for the first supported name present (Parquet first)."""
    if base is None:
        return None
    for suffix in (".parquet", ".csv", ".tsv", ".jsonl"):
        for packed in ("", *COMPRESSIONS) if suffix != ".parquet" else ("",):
            if (base / f"{name}{suffix}{packed}").exists():
                return base / f"{name}{suffix}{packed}"
    return None

