"""The bad-input corpus: every way a user can feed the CLI something wrong, one row each.

Each row is a command line, a maker that writes its bad input, and what the user must see:
the exit code and a fragment of the one ``error:`` line (for exit 0 rows, a fragment of a
note on stderr). Every row runs as a subprocess and must also show no traceback and leave
its input files byte for byte as they were.

Rows marked ``demo`` run against the quick demo's trained artefacts (shared, read-only; a
row that needs a broken artefact builds it in its own folder, sharing the big unchanged
files through symlinks). The others need only the tiny generated world and no model.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

Maker = Callable[[Path, Path], dict[str, str]]


@dataclass(frozen=True)
class Case:
    """One row: ``args`` are formatted with ``tmp``, ``world`` and whatever the maker returns."""

    name: str
    args: tuple[str, ...]
    make: Maker = field(default=lambda tmp, world: {})
    code: int = 2
    message: str = ""
    world: str = "tiny"  # "tiny": the generated sample world, no models; "demo": trained artefacts
    config: str | None = None  # pipeline.toml text, if the row is about the config file
    check: Callable[[Path], None] | None = None  # more to assert on the row's folder afterwards
    absent: str | None = None  # must not appear on stderr (library noise)


# ----------------------------------------------------------------------------- input makers
def _write(name: str, data: bytes | str) -> Maker:
    """A maker writing one file into the row's folder."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        path = tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return {"file": str(path)}
    return make


def _catalog(edit: Callable[[pd.DataFrame], pd.DataFrame], name: str = "catalog.csv") -> Maker:
    """The world's catalog, edited, as CSV / Parquet / JSONL by ``name``'s suffix."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        frame = edit(pd.read_parquet(_data(world) / "catalog.parquet"))
        return {"file": _save(frame, tmp / name)}
    return make


def _engagement(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Maker:
    def make(tmp: Path, world: Path) -> dict[str, str]:
        frame = edit(pd.read_parquet(_data(world) / "engagement.parquet"))
        return {"file": _save(frame, tmp / "engagement.csv"), "catalog": str(_data(world) / "catalog.parquet")}
    return make


def _table(name: str, columns: dict[str, list]) -> Maker:
    """A small Parquet/CSV/JSONL file from columns (arrow types kept, e.g. binary)."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        path = tmp / name
        if name.endswith(".parquet"):
            pq.write_table(pa.table(columns), path)
        else:
            _save(pd.DataFrame(columns), path)
        return {"file": str(path)}
    return make


def _save(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def _judged_pairs(grade: str, qrels_mapping: str) -> Maker:
    """A gzip CSV of (query, title, grade) rows without ids, read as catalog and qrels."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        path = tmp / "judgments.csv.gz"
        path.write_bytes(gzip.compress(f"query,title,grade\nsofa,Red Sofa,4\nsofa,Oak Lamp,{grade}\n".encode()))
        (tmp / "map.toml").write_text(f'[catalog]\nid_from = "title"\n[qrels]\n{qrels_mapping}\n'
                                      '[qrels.columns]\ngrade = "relevance"\n')
        return {"file": str(path), "mapping": str(tmp / "map.toml")}
    return make


_JUDGED = ("validate", "--catalog", "{file}", "--qrels", "{file}", "--mapping", "{mapping}")


def _data(world: Path) -> Path:
    return world / "data" / "sample" if (world / "data" / "sample").is_dir() else world


def _truncated_parquet(tmp: Path, world: Path) -> dict[str, str]:
    raw = (_data(world) / "catalog.parquet").read_bytes()
    (tmp / "catalog.parquet").write_bytes(raw[: len(raw) // 2])
    return {"file": str(tmp / "catalog.parquet")}


def _directory(tmp: Path, world: Path) -> dict[str, str]:
    (tmp / "catalog.parquet").mkdir()
    return {"file": str(tmp / "catalog.parquet")}


def _queries_log(name: str = "log.parquet") -> Maker:
    return _table(name, {"query": ["sofa", "lamp"]})


def _same_file_other_path(tmp: Path, world: Path) -> dict[str, str]:
    _queries_log()(tmp, world)
    (tmp / "sub").mkdir()
    return {"file": str(tmp / "log.parquet"), "alias": str(tmp / "sub" / ".." / "log.parquet")}


def _hard_link(tmp: Path, world: Path) -> dict[str, str]:
    _queries_log()(tmp, world)
    os.link(tmp / "log.parquet", tmp / "link.parquet")
    return {"file": str(tmp / "log.parquet"), "alias": str(tmp / "link.parquet")}


_HELD: list[int] = []


def _held_lock(target: str) -> Maker:
    """Hold the lock of ``tmp/target`` in this test process while the row runs (a live holder)."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        from pipeline.core.locks import lock_path

        out = tmp / target
        out.parent.mkdir(parents=True, exist_ok=True)
        _queries_log()(tmp, world)
        fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(os.getpid()).encode())
        _HELD.append(fd)
        return {"file": str(tmp / "log.parquet"), "out": str(out)}
    return make


def _index_copy(edit: Callable[[Path, dict], object] | None = None) -> Maker:
    """A copy of the demo index (small) with its manifest (the dict ``edit`` receives) or its
    files edited."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        index = tmp / "index"
        shutil.copytree(world / "indexes" / "default", index)
        manifest = json.loads((index / "manifest.json").read_text())
        if edit is not None:
            edit(index, manifest)
        if manifest:
            (index / "manifest.json").write_text(json.dumps(manifest))
        return {"index": str(index)}
    return make


def _unreadable_manifest(index: Path, manifest: dict) -> None:
    manifest.clear()
    (index / "manifest.json").write_text("{")


def _scored_query_is(text: str) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        assert set(pq.read_table(work / "out.parquet").column("query").to_pylist()) == {text}
    return check


def _flip_byte(path: Path, at: int = -100) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _shadow(src: Path, dst: Path) -> None:
    """``dst`` mirrors ``src`` through symlinks (the big weights are not copied)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)


def _model_copy(which: str, broken: Callable[[Path], None]) -> Maker:
    """A symlinked mirror of a demo model with one file replaced or removed by ``broken``;
    for the retriever, also an index copy that points at it."""
    def make(tmp: Path, world: Path) -> dict[str, str]:
        model = tmp / which
        _shadow(world / "models" / which, model)
        broken(model)
        out = {"model": str(model)}
        if which == "retriever":
            out.update(_index_copy(lambda index, m: m.update(model_path=str(model)))(tmp, world))
        return out
    return make


def _replace(relative: str, data: bytes | None) -> Callable[[Path], None]:
    def broken(model: Path) -> None:
        (model / relative).unlink()
        if data is not None:
            (model / relative).write_bytes(data)
    return broken


def _changed_catalog(tmp: Path, world: Path) -> dict[str, str]:
    """The demo catalog with one indexed product's title rewritten (a stale index)."""
    frame = pd.read_parquet(world / "data" / "sample" / "catalog.parquet")
    frame.loc[0, "title"] = "Completely Different Hiking Boots"
    frame.to_parquet(tmp / "catalog.parquet", index=False)
    return {"file": str(tmp / "catalog.parquet")}


def _index_recording(tmp: Path, world: Path) -> dict[str, str]:
    """An index copy whose recorded catalog is a changed one (the catalog was regenerated)."""
    catalog = _changed_catalog(tmp, world)["file"]
    return {**_index_copy(lambda index, m: m["inputs"].update(catalog=catalog))(tmp, world), "file": catalog}


def _empty_reranker_dir(tmp: Path, world: Path) -> dict[str, str]:
    (tmp / "models" / "reranker").mkdir(parents=True)
    return {}


# ----------------------------------------------------------------------------- the corpus
DEMO = "demo"
SEARCH_DEMO = ("--index", "{world}/indexes/default", "--reranker", "{world}/models/reranker")
CASES: list[Case] = [
    # --- data files: `validate` (no models) -----------------------------------------------
    Case("catalog file missing", ("validate", "--catalog", "{tmp}/nope.parquet"), message="file not found"),
    Case("estimate-propensity unknown method", ("estimate-propensity", "--log", "{world}/positions.parquet",
                                                 "--method", "bogus"),
         message="propensity method must be 'conditional' or 'em'"),
    Case("estimate-propensity conditional on mean positions", ("estimate-propensity", "--log",
                                                               "{world}/engagement.parquet", "--method", "conditional"),
         message="needs a per-position log"),
    Case("index fit-hybrid without an index", ("index", "fit-hybrid", "--data", "{world}", "--index", "{tmp}/nope"),
         message="index directory does not exist"),
    Case("catalog zero-byte csv", ("validate", "--catalog", "{file}"), _write("catalog.csv", b""), message="empty file"),
    Case("catalog zero-byte parquet", ("validate", "--catalog", "{file}"), _write("catalog.parquet", b""),
         message="unreadable or truncated Parquet"),
    Case("catalog truncated parquet", ("validate", "--catalog", "{file}"), _truncated_parquet,
         message="unreadable or truncated Parquet"),
    Case("catalog is a directory", ("validate", "--catalog", "{file}"), _directory, message="is a directory"),
    Case("catalog unknown suffix", ("validate", "--catalog", "{file}"), _write("catalog.xlsx", "x"),
         message="unknown file type"),
    Case("catalog without product_id", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: f.drop(columns=["product_id"])), message="missing required column 'product_id'"),
    Case("catalog without title", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: f.drop(columns=["title"])), message="missing required column 'title'"),
    Case("catalog duplicate ids", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: pd.concat([f, f.head(1)])), message="duplicate product_id"),
    Case("catalog empty title", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: f.assign(title=[""] + f["title"].tolist()[1:])), message="row 1: empty title"),
    Case("catalog blank product_id", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: f.assign(product_id=["  "] + f["product_id"].tolist()[1:])), message="empty product_id"),
    Case("catalog negative price", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: f.assign(price=[-1.0] + f["price"].tolist()[1:])), message="column 'price', row 1"),
    Case("catalog text price", ("validate", "--catalog", "{file}"),
         _catalog(lambda f: f.assign(price=["cheap"] + f["price"].tolist()[1:])), message="column 'price'"),
    Case("catalog csv invalid utf-8", ("validate", "--catalog", "{file}"),
         _write("catalog.csv", b"product_id,title\np1,caf\xe9 chair\n"), message="not valid UTF-8"),
    Case("catalog jsonl invalid utf-8", ("validate", "--catalog", "{file}"),
         _write("catalog.jsonl", b'{"product_id": "p1", "title": "\xff"}\n'), message="line 1: not valid UTF-8"),
    Case("catalog jsonl truncated", ("validate", "--catalog", "{file}"),
         _write("catalog.jsonl", '{"product_id": "p1", "title": "chair"}\n{"product_id": "p2", "ti'),
         message="line 2: invalid JSON"),
    Case("catalog jsonl not objects", ("validate", "--catalog", "{file}"), _write("catalog.jsonl", "[1, 2]\n"),
         message="expected a JSON object"),
    Case("catalog csv ragged row", ("validate", "--catalog", "{file}"),
         _write("catalog.csv", "product_id,title\np1,chair\np2,table,extra,fields\n"),
         message="unreadable or truncated CSV"),
    Case("engagement funnel violation", ("validate", "--catalog", "{catalog}", "--engagement", "{file}"),
         _engagement(lambda f: f.assign(clicks=f["impressions"] + 1)), message="funnel violation"),
    Case("engagement negative count", ("validate", "--catalog", "{catalog}", "--engagement", "{file}"),
         _engagement(lambda f: f.assign(impressions=[-3] + f["impressions"].tolist()[1:])),
         message="row 1: negative count"),
    Case("engagement non-integer count", ("validate", "--catalog", "{catalog}", "--engagement", "{file}"),
         _engagement(lambda f: f.assign(clicks=["many"] + f["clicks"].tolist()[1:])), message="not an integer"),
    Case("engagement missing column", ("validate", "--catalog", "{catalog}", "--engagement", "{file}"),
         _engagement(lambda f: f.drop(columns=["clicks"])), message="missing required column 'clicks'"),
    Case("engagement unknown event", ("validate", "--catalog", "{catalog}", "--engagement", "{file}"),
         _engagement(lambda f: pd.DataFrame({"query": ["sofa"], "product_id": [f["product_id"].iloc[0]],
                                             "event": ["wishlist"]})), message="unknown event"),
    Case("queries empty query", ("validate", "--catalog", "{world}/catalog.parquet", "--queries", "{file}"),
         _table("queries.csv", {"query": ["sofa", ""], "split": ["test", "test"]}), message="row 2: empty query"),
    Case("queries unknown split", ("validate", "--catalog", "{world}/catalog.parquet", "--queries", "{file}"),
         _table("queries.csv", {"query": ["sofa"], "split": ["holdout"]}), message="unknown split"),
    Case("queries in two splits", ("validate", "--catalog", "{world}/catalog.parquet", "--queries", "{file}"),
         _table("queries.csv", {"query": ["sofa", "sofa"], "split": ["train", "test"]}),
         message="more than one split"),
    Case("qrels string labels without a map", ("validate", "--catalog", "{world}/catalog.parquet", "--qrels", "{file}"),
         _table("qrels.csv", {"query": ["sofa"], "product_id": ["P000001"], "relevance": ["Exact"]}),
         message="labels map or preset"),
    Case("qrels negative grade", ("validate", "--catalog", "{world}/catalog.parquet", "--qrels", "{file}"),
         _table("qrels.csv", {"query": ["sofa"], "product_id": ["P000001"], "relevance": [-1]}),
         message="column 'relevance'"),
    Case("data directory missing", ("validate", "{tmp}/no-such-dir"), message="data directory not found"),
    Case("data directory without catalog", ("validate", "{tmp}"), message="no catalog file found"),
    Case("mapping file missing", ("validate", "{world}", "--mapping", "{tmp}/mapping.toml"),
         message="mapping file not found"),
    Case("mapping grade off the labels range", _JUDGED, _judged_pairs("5", 'id_from = "title"\nlabels = "1-4"'),
         message="'5' is outside the labels range 1-4"),
    Case("mapping offset not a number", _JUDGED, _judged_pairs("1", 'id_from = "title"\noffset = "-1"'),
         message="offset must be a number"),
    Case("mapping id_from column missing", _JUDGED, _judged_pairs("1", 'id_from = "product_title"\nlabels = "1-4"'),
         message="missing column 'product_title' listed in the mapping's id_from"),
    Case("qrels 1-4 scale without a preset", _JUDGED, _judged_pairs("1", 'id_from = "title"'), code=0,
         message='lowest relevance grade is 1, not 0'),
    # --- pipeline.toml (item 8) -------------------------------------------------------------
    Case("config unknown table (item 8)", ("config", "show"), config="[serach]\nk = 3\n", message="did you mean [search]"),
    Case("config unknown key (item 8)", ("config", "show"), config="[search]\ncandidate = 30\n",
         message="did you mean 'candidates'"),
    Case("config unknown nested table (item 8)", ("validate", "{world}"), config="[index.ad]\njson_out = true\n",
         message="did you mean [index.add]"),
    Case("config keys by flag name reach the command", ("build-index",), config="[build-index]\nef-search = 16\n",
         message="--ef-search does not apply to a flat index"),
    Case("config invalid toml", ("config", "show"), config="[search\n", message="invalid TOML"),
    # --- queries: `search` (refused before any model is loaded) ------------------------------
    Case("search empty query", ("search", ""), message="query is empty"),
    Case("search whitespace query", ("search", "  \t "), message="query is empty"),
    Case("search invalid utf-8 argument (item 1)", ("search", "\udcff\udcfe sofa"), message="not valid UTF-8"),
    Case("search without a query", ("search",), message="no query given"),
    Case("serve with an empty admin token", ("serve", "--admin-token", ""), message="--admin-token is empty"),
    Case("serve with an unknown backend", ("serve", "--backend", "gpu"), message="unknown backend 'gpu'"),
    Case("serve on a port out of range", ("serve", "--port", "70000"), message="--port must lie in 0..65535"),
    Case("serve without an index stops with the reason", ("serve", "--index", "{tmp}/nope", "--port", "0"),
         message="models failed to load:"),
    Case("search queries file invalid utf-8", ("search", "--queries-file", "{file}"),
         _write("queries.txt", b"sofa\n\xff\xfe lamp\n"), message="cannot read queries file"),
    Case("search queries file blank", ("search", "--queries-file", "{file}"), _write("queries.txt", "\n  \n"),
         message="no queries in the file"),
    Case("search without an index", ("search", "sofa"), message="no index here"),
    Case("search unknown backend", ("search", "sofa", "--backend", "gpu"), message="unknown backend"),
    Case("search bad weights", ("search", "sofa", "--weights", "click=lots"), message="--weights"),
    # --- build-index options (item 3: refused before encoding) -------------------------------
    Case("build-index nprobe on flat (item 3)", ("build-index", "--catalog", "{world}/catalog.parquet", "--nprobe", "4"),
         message="--nprobe does not apply to a flat index"),
    Case("build-index ef-search on flat (item 3)", ("build-index", "--catalog", "{world}/catalog.parquet", "--ef-search", "16"),
         message="--ef-search does not apply to a flat index"),
    Case("build-index nprobe on hnsw (item 3)", ("build-index", "--index-type", "hnsw", "--nprobe", "4"),
         message="--nprobe does not apply to a hnsw index"),
    Case("build-index nprobe zero (item 3)", ("build-index", "--index-type", "ivfpq", "--nprobe", "0"),
         message="--nprobe must be an integer >= 1"),
    Case("build-index negative ef-search (item 3)", ("build-index", "--index-type", "hnsw", "--ef-search", "-1"),
         message="--ef-search must be an integer >= 1"),
    Case("build-index unknown index type", ("build-index", "--index-type", "annoy"), message="unknown index type"),
    Case("build-index unknown engine", ("build-index", "--engine", "spark"), message="--engine must be"),
    Case("build-index duplicate ids", ("build-index", "--catalog", "{file}"),
         _catalog(lambda f: pd.concat([f, f.head(1)])), message="duplicate product_id"),
    Case("index remove from no index", ("index", "remove", "P1", "--index", "{tmp}/indexes/none"),
         message="index directory does not exist"),
    Case("index info on a non-index", ("index", "info", "--index", "{tmp}"), message="no manifest.json"),
    # --- score-logs input and output (no models needed to refuse these) ----------------------
    Case("score-logs input missing", ("score-logs", "--input", "{tmp}/log.parquet", "--output", "{tmp}/out.parquet"),
         message="query log not found"),
    Case("score-logs zero-byte input", ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet"),
         _write("log.parquet", b""), message="not a readable Parquet file"),
    Case("score-logs input without query column",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet"),
         _table("log.csv", {"text": ["sofa"]}), message="missing required column 'query'"),
    Case("score-logs output is the input (item 9)", ("score-logs", "--input", "{file}", "--output", "{file}"),
         _queries_log(), message="the output is the input log itself"),
    Case("score-logs output is the input by another path (item 9)",
         ("score-logs", "--input", "{file}", "--output", "{alias}"), _same_file_other_path,
         message="the output is the input log itself"),
    Case("score-logs output is a hard link to the input (item 9)",
         ("score-logs", "--input", "{file}", "--output", "{alias}"), _hard_link,
         message="the output is the input log itself"),
    Case("score-logs on Ray: output is the input (item 9)",
         ("score-logs", "--engine", "ray", "--input", "{file}", "--output", "{alias}"), _same_file_other_path,
         message="the output is the input log itself"),
    Case("score-logs output is a directory", ("score-logs", "--input", "{file}", "--output", "{tmp}"),
         _queries_log(), message="output path is a directory"),
    Case("score-logs output folder missing",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/no/out.parquet"), _queries_log(),
         message="output directory does not exist"),
    Case("score-logs read-only output", ("score-logs", "--input", "{file}", "--output", "/proc/scored.parquet"),
         _queries_log(), message="not writable"),
    Case("score-logs unknown engine", ("score-logs", "--input", "{file}", "--output", "{tmp}/o.parquet",
                                       "--engine", "spark"), _queries_log(), message="--engine must be"),
    Case("score-logs unknown retrieval mode", ("score-logs", "--input", "{file}", "--output", "{tmp}/o.parquet",
                                               "--retrieval", "sparse"), _queries_log(),
         message="unknown retrieval mode 'sparse'"),
    Case("score-logs on Ray: unknown retrieval mode, before Ray starts",
         ("score-logs", "--engine", "ray", "--input", "{file}", "--output", "{tmp}/o.parquet", "--retrieval", "bm25"),
         _queries_log(), message="unknown retrieval mode 'bm25'"),
    Case("score-logs output locked by a live job (item 10)",
         ("score-logs", "--input", "{file}", "--output", "{out}"), _held_lock("out.parquet"),
         message=f"is in use by process {os.getpid()}"),
    Case("build-index output locked by a live job (item 10)",
         ("build-index", "--catalog", "{world}/catalog.parquet", "--out", "{out}"), _held_lock("indexes/new"),
         message="is in use by process"),
    Case("train-retriever output locked by a live job (item 10)",
         ("train-retriever", "--data", "{world}", "--out", "{out}"), _held_lock("models/retriever"),
         message="is in use by process"),
    Case("index add locked by a live job (item 10)",
         ("index", "add", "--catalog", "{world}/catalog.parquet", "--index", "{out}"),
         _held_lock("indexes/default"), message="is in use by process"),

    # --- with the demo's trained artefacts ----------------------------------------------------
    Case("score-logs jsonl invalid utf-8 (item 2)",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet", *SEARCH_DEMO),
         _write("log.jsonl", b'{"query": "sofa"}\n{"query": "\xff\xfe sofa"}\n'),
         message="column 'query', row 2: not valid UTF-8", world=DEMO),
    Case("score-logs binary query invalid utf-8 (item 6)",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet", *SEARCH_DEMO),
         _table("log.parquet", {"query": pa.array([b"sofa", b"\xff lamp"], pa.binary())}),
         message="row 2: not valid UTF-8", world=DEMO),
    Case("search catalog with an empty title (item 7)", ("search", "sofa", "--catalog", "{file}", *SEARCH_DEMO),
         _catalog(lambda f: f.assign(title=[""] + f["title"].tolist()[1:]), "catalog.parquet"),
         message="column 'title', row 1: empty title", world=DEMO),
    Case("search with a changed catalog (item 4)", ("search", "sofa", "--catalog", "{file}", *SEARCH_DEMO),
         _changed_catalog, message="does not match index", world=DEMO),
    Case("search with the recorded catalog changed (item 4)",
         ("search", "sofa", "--index", "{index}", "--reranker", "{world}/models/reranker"), _index_recording,
         message="pass the catalog it was built from", world=DEMO),
    Case("evaluate with a changed catalog (item 4)",
         ("evaluate", "--data", "{world}/data/sample", "--catalog", "{file}", "--systems", "dense-fine-tuned",
          "--index", "{world}/indexes/default"), _changed_catalog, message="does not match index", world=DEMO),
    Case("explicit reranker without manifest (item 5)",
         ("search", "sofa", "--index", "{world}/indexes/default", "--reranker", "models/reranker"),
         _empty_reranker_dir, message="no trained reranker here", world=DEMO),
    Case("default reranker absent: retrieval order with a note (item 5)",
         ("search", "sofa", "--index", "{world}/indexes/default"), code=0,
         message="note: no trained reranker at models/reranker", world=DEMO),
    Case("reranker export without manifest: a note (item 5)",
         ("search", "sofa", "--index", "{world}/indexes/default", "--reranker", "{model}"),
         _model_copy("reranker", _replace("onnx/manifest.json", None)), code=0,
         message="running the slower PyTorch models", world=DEMO),
    Case("index manifest search_params do not fit (item 3)", ("search", "sofa", "--index", "{index}"),
         _index_copy(lambda index, m: m.update(search_params={"nprobe": 4})),
         message="search_params do not fit the index", world=DEMO),
    Case("tampered index file", ("search", "sofa", "--index", "{index}"),
         _index_copy(lambda index, m: _flip_byte(index / "index.faiss")), message="corrupt index file", world=DEMO),
    Case("truncated index file", ("index", "info", "--index", "{index}"),
         _index_copy(lambda index, m: (index / "index.faiss").write_bytes((index / "index.faiss").read_bytes()[:999])),
         message="corrupt index file", world=DEMO),
    Case("truncated ids file", ("index", "info", "--index", "{index}"),
         _index_copy(lambda index, m: (index / "ids.npy").write_bytes(b"\x93NUMPY")),
         message="unreadable ids.npy", world=DEMO),
    Case("index manifest not JSON", ("index", "info", "--index", "{index}"),
         _index_copy(_unreadable_manifest), message="unreadable manifest", world=DEMO),
    Case("index of another model (torch)", ("search", "sofa", "--index", "{index}", "--backend", "torch"),
         _index_copy(lambda index, m: m.update(model_id="0" * 64)), message="built with model", world=DEMO),
    Case("index of another model (onnx)", ("search", "sofa", "--index", "{index}"),
         _index_copy(lambda index, m: m.update(model_id="0" * 64)), message="model_id", world=DEMO),
    Case("tampered reranker graph", ("search", "sofa", "--index", "{world}/indexes/default", "--reranker", "{model}"),
         _model_copy("reranker", _replace("onnx/model_int8.onnx", b"not a graph")), message="checksum", world=DEMO),
    Case("tampered retriever graph", ("search", "sofa", "--index", "{index}", "--reranker", "{world}/models/reranker"),
         _model_copy("retriever", _replace("onnx/model.onnx", b"not a graph")), message="checksum", world=DEMO),
    Case("ten-thousand-character query is answered with a note",
         ("search", "comfy couch " * 834, "--k", "2", *SEARCH_DEMO), code=0,
         message="note: query longer than 512 characters", world=DEMO),
    Case("score-logs binary query decoded (item 6)",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet", "--no-progress", *SEARCH_DEMO),
         _table("log.parquet", {"query": pa.array([b"sofa"], pa.binary())}), code=0, world=DEMO,
         check=_scored_query_is("sofa")),
    Case("score-logs skip note counts rows from 1",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet", "--no-progress", *SEARCH_DEMO),
         _table("log.csv", {"query": ["sofa", " ", "lamp"]}), code=0,
         message="skipped 1 row(s) with empty query (first: row 2)", world=DEMO),
    # --- distilled students and the reranker cascade --------------------------------------
    Case("distill-reranker without a teacher", ("distill-reranker", "--data", "{world}", "--teacher", "{tmp}/nope",
                                                "--out", "{tmp}/small"), message="no trained reranker here"),
    Case("distill-reranker with as many layers as the teacher",
         ("distill-reranker", "--data", "{world}/data/sample", "--teacher", "{world}/models/reranker", "--layers", "6",
          "--out", "{tmp}/small"), message="--layers 6 is out of range", world=DEMO),
    Case("distill-reranker with zero layers",
         ("distill-reranker", "--data", "{world}/data/sample", "--teacher", "{world}/models/reranker", "--layers", "0",
          "--out", "{tmp}/small"), message="a student has 1..5", world=DEMO),
    Case("distill-reranker from a teacher with a corrupt manifest",
         ("distill-reranker", "--data", "{world}/data/sample", "--teacher", "{model}", "--out", "{tmp}/small"),
         _model_copy("reranker", _replace("manifest.json", b"{")), message="unreadable manifest", world=DEMO),
    Case("distill-reranker over its own teacher",
         ("distill-reranker", "--data", "{world}/data/sample", "--teacher", "{model}", "--out", "{model}"),
         _model_copy("reranker", lambda model: None), message="is the teacher's folder", world=DEMO),
    Case("search with a malformed cascade", ("search", "sofa", "--student", "{tmp}/small", "--rerank-cascade",
                                             "small:100,full:x"), message="--rerank-cascade 'small:100,full:x'"),
    Case("search with a cascade but no student", ("search", "sofa", "--rerank-cascade", "small:100,full:20"),
         message="--student and --rerank-cascade go together"),
    Case("score-logs with a cascade without its small stage",
         ("score-logs", "--input", "{file}", "--output", "{tmp}/out.parquet", "--student", "{tmp}/small",
          "--rerank-cascade", "full:20"), _queries_log(), message="the small (student) stage is missing"),
    Case("serve with a malformed cascade", ("serve", "--student", "{tmp}/small", "--rerank-cascade", "small"),
         message="is not small:N or full:M"),
    Case("search with a missing student",
         ("search", "sofa", *SEARCH_DEMO, "--student", "{tmp}/small", "--rerank-cascade", "small:30,full:5"),
         message="no trained reranker here", world=DEMO),
    Case("torch search shows no library progress bars",
         ("search", "sofa", "--backend", "torch", "--k", "2", *SEARCH_DEMO), code=0, world=DEMO,
         absent="Loading weights"),
]


# ----------------------------------------------------------------------------- running a row
def _digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symlinks to shared artefacts skipped)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def demo_world(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The demo workdir, checked unchanged after every row that used it."""
    root, _ = request.getfixturevalue("demo_run")
    before = _digests(root)
    yield root
    assert _digests(root) == before, "a bad-input row changed the shared demo artefacts"


@pytest.fixture
def release_locks() -> Iterator[None]:
    yield
    while _HELD:
        os.close(_HELD.pop())


def _param(case: Case) -> object:
    marks = [pytest.mark.slow] if case.world == DEMO else []
    return pytest.param(case, id=case.name, marks=marks)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest, release_locks: None) -> None:
    world = request.getfixturevalue("demo_world") if case.world == DEMO else request.getfixturevalue("tiny_data_dir")
    work = tmp_path / "work"
    work.mkdir()
    values = {"tmp": str(work), "world": str(world), **case.make(work, world)}
    args = [arg.format(**values) for arg in case.args]
    env = {**os.environ, "SHOPRANK_CONFIG": str(tmp_path / "pipeline.toml")}
    if case.config is not None:
        (tmp_path / "pipeline.toml").write_text(case.config, encoding="utf-8")
    before = _digests(work)
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=work, capture_output=True,
                            env=env, timeout=300)
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    assert result.returncode == case.code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if case.code == 0:
        assert not errors, stderr
        assert case.message in stderr, stderr
    else:
        assert len(errors) == 1, stderr
        assert case.message in errors[0], stderr
    if case.absent is not None:
        assert case.absent not in stderr, stderr
    after = _digests(work)
    assert {k: v for k, v in after.items() if k in before} == before, "an input file was changed"
    if case.check is not None:
        case.check(work)
    leftovers = [k for k in after if k not in before and Path(k).name.startswith(".")]
    assert not leftovers, f"left behind: {leftovers}"
