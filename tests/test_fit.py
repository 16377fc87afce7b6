"""`pipeline fit`: derived splits, resumable steps, the run lock, the data step on public dataset
shapes, and a whole `pipeline fit --budget quick` subprocess on each shape (ESCI, WANDS, Home
Depot, and a judged-pairs CSV.gz without product ids) (issue 19)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.artifacts import build_manifest, read_manifest, write_manifest
from pipeline.core.errors import DataError
from pipeline.data import SPLIT_SHARES, derive_queries, load_dataset, split_of
from pipeline.core.locks import LockedError, lock_path
from pipeline.fit import run_fit
from pipeline.fit_data import prepare_dataset, source_inputs
from pipeline.fit_state import STATE_FILE, FitSteps, code_version

REPO = Path(__file__).resolve().parents[1]

# --- a judged-pairs shop: (query, title, description, grade 1-4), no product ids ------------------

COLOURS = ("red", "blue", "green", "grey", "black")
TYPES = {  # product type -> (category, material, synonym a shopper types)
    "sofa": ("furniture", "velvet", "couch"), "armchair": ("furniture", "leather", "reading chair"),
    "desk lamp": ("lighting", "brass", "table light"), "floor lamp": ("lighting", "steel", "standing light"),
    "rug": ("decor", "wool", "carpet"), "curtain": ("decor", "linen", "drapes"),
    "running shoe": ("shoes", "mesh", "trainers"), "rain jacket": ("clothing", "nylon", "waterproof coat"),
}


QUERIES = ([(c, t, f"{c} {t}") for t in TYPES for c in COLOURS[:4]]
           + [(None, t, synonym) for t, (_, _, synonym) in TYPES.items()])   # (colour, type, text)


def shop_titles(variants: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(colour, type, title) of every product: each type in each colour, once per variant name."""
    return [(c, t, f"{c.title()} {m} {t.title()} {n}".rstrip()) for t, (_, m, _) in TYPES.items()
            for c in COLOURS for n in variants]


def judgements(titles: list[tuple[str, str, str]]) -> list[tuple[int, int, int]]:
    """(query index, title index, grade 0-3) of a judged pool: each query's own product type in
    full plus every fourth other product. 3 = the type in the asked colour, 2 = another colour,
    1 = another type of the same category, 0 = unrelated; every dataset shape renders these."""
    pool = []
    for qi, (q_colour, q_type, _) in enumerate(QUERIES):
        for ti, (colour, ptype, _) in enumerate(titles):
            if (ti + qi) % 4 and ptype != q_type:
                continue
            same_cat = TYPES[ptype][0] == TYPES[q_type][0]
            grade = (3 if ptype == q_type and colour == (q_colour or colour) else 2 if ptype == q_type
                     else 1 if same_cat else 0)
            pool.append((qi, ti, grade))
    return pool


def judged_pairs_csv() -> str:
    """~150 distinct titles and ~40 queries; every title appears twice across the file with other
    case and spacing (one product each), and grades are 1 (irrelevant) to 4 (exact)."""
    rows = ["query,product_title,product_description,median_relevance"]
    titles = shop_titles(("Classic", "Deluxe", "Compact", "Plus"))[:150]
    for qi, ti, grade in judgements(titles):
        colour, ptype, title = titles[ti]
        shown = title.lower() if (ti + qi) % 2 else f" {title}  "
        rows.append(f"{QUERIES[qi][2]},{shown},{TYPES[ptype][1]} {ptype} in {colour},{grade + 1}")
    return "\n".join(rows) + "\n"


EXAMPLES = REPO / "docs" / "examples"
#: The documented recipe (docs/own-data.md), read from the file the docs point to.
MAPPING = (EXAMPLES / "judgments.toml").read_text(encoding="utf-8")


def _write_shop(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "judgments.csv.gz"
    data.write_bytes(gzip.compress(judged_pairs_csv().encode()))
    mapping = tmp_path / "judgments.toml"
    mapping.write_text(MAPPING)
    return data, mapping


def _cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


#: The CLI subprocesses' environment: this checkout's code, no model hub.
CLI_ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _cli(*args: str | Path, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli_command(*args), capture_output=True, text=True, cwd=cwd, env=CLI_ENV, timeout=timeout)


# --- derived splits --------------------------------------------------------------------------------

def test_split_is_per_query_seeded_and_blind_to_case_and_spacing() -> None:
    assert split_of("Red Sofa", 13) == split_of("  red   sofa ", 13)
    texts = [f"query {i}" for i in range(3000)]
    first = derive_queries(texts, 13)
    grown = derive_queries([*texts, *(f"new {i}" for i in range(500))], 13).set_index("query")
    # adding queries moves no existing query, and the ids are the same too
    assert (grown.loc[first["query"], "split"].to_numpy() == first["split"].to_numpy()).all()
    assert (grown.loc[first["query"], "query_id"].to_numpy() == first["query_id"].to_numpy()).all()
    shares = first["split"].value_counts(normalize=True)
    for name, share in SPLIT_SHARES:
        assert abs(shares[name] - share) < 0.03, (name, shares[name])
    assert "unseen" not in set(first["split"])
    assert (derive_queries(texts, 14)["split"] != first.sort_values("query")["split"]).any()


def test_too_few_queries_to_split_is_a_one_line_error() -> None:
    with pytest.raises(DataError, match="no 'valid' query|no 'test' query|no 'train' query"):
        derive_queries(["couch", "lamp"], 13)


# --- resumable steps -------------------------------------------------------------------------------

def _artefact(path: Path) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    write_manifest(path, build_manifest("test"))
    return {"built": True}


def _pipeline(root: Path, data: str, calls: list[str], resume: bool = True, code: str | None = None,
              say=lambda _: None) -> FitSteps:
    """Two chained steps, the second fingerprinting the first's output id, as fit's steps do."""
    steps = FitSteps(root, resume=resume, say=say, code=code)
    steps.run("a", {"data": data}, root / "a", lambda: calls.append("a") or _artefact(root / "a"))
    steps.run("b", {"a": steps.output("a")}, root / "b", lambda: calls.append("b") or _artefact(root / "b"))
    return steps


def test_finished_steps_are_skipped_and_a_changed_one_redoes_what_follows(tmp_path) -> None:
    calls: list[str] = []
    _pipeline(tmp_path, "v1", calls)
    steps = _pipeline(tmp_path, "v1", calls)
    assert calls == ["a", "b"] and [r["status"] for r in steps.report] == ["skipped", "skipped"]
    _pipeline(tmp_path, "v2", calls)                 # new data: both redone
    assert calls == ["a", "b", "a", "b"]
    _artefact(tmp_path / "b")                        # b's output replaced behind fit's back: b alone redone
    _pipeline(tmp_path, "v2", calls)
    assert calls[4:] == ["b"]
    _pipeline(tmp_path, "v2", calls, resume=False)   # --no-resume redoes everything
    assert calls[5:] == ["a", "b"]


def test_steps_done_by_another_shoprank_version_are_redone(tmp_path) -> None:
    calls: list[str] = []
    _pipeline(tmp_path, "v1", calls)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert {record["shoprank"] for record in state["steps"].values()} == {code_version()}
    said: list[str] = []
    _pipeline(tmp_path, "v1", calls, code="99.0", say=said.append)   # an upgrade: same inputs, redone
    assert calls == ["a", "b", "a", "b"]
    assert said[0] == f"a: done by shoprank {code_version()}, now 99.0: redone"
    _pipeline(tmp_path, "v1", calls, code="99.0")                    # and then trusted again
    assert calls[4:] == []
    state = json.loads((tmp_path / STATE_FILE).read_text())
    del state["steps"]["a"]["shoprank"]                              # a state file from before versions
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    _pipeline(tmp_path, "v1", calls, code="99.0")
    assert calls[4:] == ["a", "b"]


def test_a_crashed_step_is_redone_and_a_broken_state_file_trusts_nothing(tmp_path) -> None:
    calls: list[str] = []
    steps = FitSteps(tmp_path, say=lambda _: None)
    steps.run("a", {"data": 1}, tmp_path / "a", lambda: _artefact(tmp_path / "a"))

    def crash() -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        FitSteps(tmp_path, say=lambda _: None).run("b", {}, tmp_path / "b", crash)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert set(state["steps"]) == {"a"}
    (tmp_path / STATE_FILE).write_text("{not json")
    FitSteps(tmp_path, say=lambda _: None).run("a", {"data": 1}, tmp_path / "a", lambda: calls.append("a"))
    assert calls == ["a"]


# --- the data step -------------------------------------------------------------------------------

def test_judged_pairs_become_a_canonical_dataset(tmp_path) -> None:
    data, mapping = _write_shop(tmp_path)
    files = {"catalog": data, "engagement": None, "queries": None, "qrels": data}
    summary = prepare_dataset(files, mapping, tmp_path / "run/data/sample", seed=13)
    ds = load_dataset(tmp_path / "run/data/sample")
    assert ds.catalog["product_id"].is_unique and len(ds.catalog) == 150
    assert summary["catalog_rows_merged"] > 0
    assert sorted(ds.qrels["relevance"].unique()) == [0, 1, 2, 3]
    assert {"train", "valid", "test"} <= set(ds.queries["split"])
    assert ds.engagement is not None and (tmp_path / "run/data/sample/positions.parquet").is_file()
    assert len(summary["derived"]) == 2
    assert read_manifest(tmp_path / "run/data/sample", "dataset")["derived"] == summary["derived"]
    # the fingerprint is the content, not the path: a moved copy is the same data
    moved = tmp_path / "copy.csv.gz"
    moved.write_bytes(data.read_bytes())
    assert source_inputs({**files, "catalog": moved, "qrels": moved}, mapping, 13) == source_inputs(files, mapping, 13)


#: Public dataset shapes, each fitted through its documented mapping docs/examples/<shape>.toml.
SHAPES = ("esci", "wands", "homedepot")
#: The grades each shape's labels become: ESCI's four labels, WANDS' three, Home Depot's 1-3 means.
SHAPE_GRADES = {"esci": [0, 1, 2, 3], "wands": [0, 1, 2], "homedepot": [0, 1, 2]}
#: Home Depot relevance as raters' means, two spellings per judged grade; "1-3" rounds both
#: onto one grade (3 and 2.67 -> 2, 2.33 and 2 -> 1, 1.67 -> 1, 1.33 and 1 -> 0).
HOMEDEPOT_MEANS = {3: ("3", "2.67"), 2: ("2.33", "2"), 1: ("1.67", "2"), 0: ("1", "1.33")}


def _public_shape(tmp_path: Path, shape: str) -> dict[str, Path]:
    """Small hand-written files in the shape of a public dataset (docs/own-data.md): one product
    per colour and type, the judged pool of :func:`judgements` in the dataset's own columns,
    ids and labels. Returns the file of each part, as `pipeline fit` takes them."""
    titles = shop_titles(("",))
    pool = judgements(titles)
    if shape == "esci":        # Parquet; ASINs; E/S/C/I; bullet points as one newline-separated string
        asins = [f"B0{i:08d}" for i in range(len(titles))]
        pd.DataFrame({"product_id": asins, "product_title": [t for _, _, t in titles],
                      "product_description": [f"A {c} {t} for every day" for c, t, _ in titles],
                      "product_bullet_point": [f"{TYPES[t][1]}\nmachine washable" for _, t, _ in titles],
                      "product_brand": ["Solvik", "Orbis"] * (len(titles) // 2), "product_locale": "us",
                      }).to_parquet(tmp_path / "products.parquet")
        pd.DataFrame({"example_id": range(len(pool)), "query": [QUERIES[qi][2] for qi, _, _ in pool],
                      "query_id": [qi for qi, _, _ in pool], "product_id": [asins[ti] for _, ti, _ in pool],
                      "product_locale": "us", "esci_label": ["ICSE"[g] for _, _, g in pool], "split": "train",
                      }).to_parquet(tmp_path / "examples.parquet")
        return {"catalog": tmp_path / "products.parquet", "qrels": tmp_path / "examples.parquet"}
    if shape == "wands":       # tab-separated .csv files; labels keyed by query_id; "k:v|k:v" features
        tsv = {"sep": "\t", "index": False}
        pd.DataFrame({"product_id": range(len(titles)), "product_name": [t.lower() for _, _, t in titles],
                      "product_class": [t.title() + "s" for _, t, _ in titles],
                      "category hierarchy": [f"{TYPES[t][0].title()} / {t.title()}s" for _, t, _ in titles],
                      "product_description": [f"a {c} {t}" for c, t, _ in titles],
                      "product_features": [f"color:{c}|material:{TYPES[t][1]}" for c, t, _ in titles],
                      "rating_count": 3, "average_rating": 4.5, "review_count": 2,
                      }).to_csv(tmp_path / "product.csv", **tsv)
        pd.DataFrame({"query_id": range(len(QUERIES)), "query": [q for _, _, q in QUERIES],
                      "query_class": [t.title() + "s" for _, t, _ in QUERIES]}).to_csv(tmp_path / "query.csv", **tsv)
        pd.DataFrame({"id": range(len(pool)), "query_id": [qi for qi, _, _ in pool],
                      "product_id": [ti for _, ti, _ in pool],
                      "label": [("Irrelevant", "Partial", "Partial", "Exact")[g] for _, _, g in pool],
                      }).to_csv(tmp_path / "label.csv", **tsv)
        return {"catalog": tmp_path / "product.csv", "queries": tmp_path / "query.csv", "qrels": tmp_path / "label.csv"}
    assert shape == "homedepot"  # one CSV, catalog and qrels; product_uid repeated per query; mean grades
    rows = ["id,product_uid,product_title,search_term,relevance"]
    rows += [f"{n + 1},{100001 + ti},\"{titles[ti][2]}\",{QUERIES[qi][2]},{HOMEDEPOT_MEANS[g][(qi + ti) % 2]}"
             for n, (qi, ti, g) in enumerate(pool)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return {"catalog": tmp_path / "train.csv", "qrels": tmp_path / "train.csv"}


def _check_public_shape(ds, shape: str) -> None:
    """What loading a shape must give: every product once, every query by its text, the grades
    its labels map to (:data:`SHAPE_GRADES`)."""
    assert ds.catalog["product_id"].is_unique and len(ds.catalog) == len(COLOURS) * len(TYPES)
    assert set(ds.qrels["query"]) == {q for _, _, q in QUERIES}      # WANDS: ids replaced by texts
    assert sorted(ds.qrels["relevance"].unique()) == SHAPE_GRADES[shape]


@pytest.mark.parametrize("shape", SHAPES)
def test_public_dataset_shapes_load_through_the_data_step(tmp_path, shape) -> None:
    sources = _public_shape(tmp_path, shape)
    files = {"catalog": None, "engagement": None, "queries": None, "qrels": None, **sources}
    summary = prepare_dataset(files, EXAMPLES / f"{shape}.toml", tmp_path / "out", seed=13)
    _check_public_shape(load_dataset(tmp_path / "out"), shape)
    assert summary["engagement_rows"] > 0
    assert summary["queries_train"] and summary["queries_valid"] and summary["queries_test"]
    if shape == "homedepot":    # one catalog row per judgement, merged per product_uid
        assert summary["catalog_rows_merged"] == len(judgements(shop_titles(("",)))) - len(COLOURS) * len(TYPES)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path) -> None:
    data, mapping = _write_shop(tmp_path)
    run = tmp_path / "run"
    for args, needle in (((  "--catalog", tmp_path / "missing.csv"), "missing.csv"),
                         (("--catalog", data, "--qrels", data, "--mapping", mapping, "--budget", "huge"), "budget"),
                         (("--catalog", data, "--qrels", data), "product_id")):
        result = _cli("fit", "--out", run, *args, cwd=tmp_path, timeout=120)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert len(errors) == 1 and needle in errors[0], result.stderr
        assert not run.exists()


def test_a_fit_into_a_run_directory_another_process_holds_is_refused_at_once(tmp_path, lock_holder) -> None:
    data, mapping = _write_shop(tmp_path)
    run = tmp_path / "run"
    holder = lock_holder(run)               # what a running `pipeline fit --out run` holds
    started = time.perf_counter()
    with pytest.raises(LockedError) as err:
        run_fit(out=run, catalog=data, qrels=data, mapping=mapping, budget="quick", say=lambda _: None)
    assert f"fit run {run} is in use by process {holder.pid}" in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - started < 5 and not run.exists()


# --- end to end ----------------------------------------------------------------------------------

def _fit_args(sources: dict[str, Path], mapping: Path, run: Path) -> list[str | Path]:
    return ["fit", *(arg for kind, path in sources.items() for arg in (f"--{kind}", path)), "--mapping", mapping,
            "--budget", "quick", "--out", run, "--no-progress", "--json"]


def _check_fitted_run(run: Path, report: dict) -> None:
    """A whole fit: every step done, and the run directory holds a catalog, a retriever, an
    index, a reranker (each with its ONNX export) and the evaluation table on test."""
    assert [s["status"] for s in report["steps"]] == ["done"] * 7, report["steps"]
    assert (run / "data/sample/catalog.parquet").is_file()
    for rel in ("models/retriever", "indexes/default", "models/reranker", "models/retriever/onnx",
                "models/reranker/onnx"):
        assert read_manifest(run / rel)["id"], rel
    table = json.loads((run / "runs/evaluation.json").read_text())
    assert table == report["evaluation"] and table["split"] == "test"
    assert {"bm25", "dense-fine-tuned", "two-stage"} <= {row["system"] for row in table["rows"]}
    assert all(0.0 <= row["nDCG@10"] <= 1.0 for row in table["rows"] if row["subset"] == "all"), table["rows"]


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_fit_each_public_dataset_shape_end_to_end(tmp_path, shape) -> None:
    run = tmp_path / "run"
    result = _cli(*_fit_args(_public_shape(tmp_path, shape), EXAMPLES / f"{shape}.toml", run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_fitted_run(run, json.loads(result.stdout))
    _check_public_shape(load_dataset(run / "data/sample"), shape)


@pytest.mark.slow
def test_fit_judged_pairs_to_a_working_search_then_resume_skips_everything(tmp_path) -> None:
    data, mapping = _write_shop(tmp_path)
    run = tmp_path / "run"
    args = _fit_args({"catalog": data, "qrels": data}, mapping, run)
    first = subprocess.Popen(_cli_command(*args), cwd=tmp_path, env=CLI_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    # a second fit into the same run while the first holds it (its pid is in the lock) is refused at once
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline:
        if lock_path(run).is_file() and lock_path(run).read_text().strip() == str(first.pid):
            break
        time.sleep(0.1)
    started = time.perf_counter()
    second = _cli(*args, cwd=tmp_path, timeout=120)
    refused_in = time.perf_counter() - started
    stdout, stderr = first.communicate(timeout=900)
    assert first.returncode == 0, stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert len(errors) == 1 and f"in use by process {first.pid}" in errors[0], second.stderr
    assert refused_in < 30 and not second.stdout

    report = json.loads(stdout)
    _check_fitted_run(run, report)
    ds = load_dataset(run / "data/sample")
    assert ds.catalog["product_id"].is_unique and len(ds.catalog) == 150
    assert sorted(ds.qrels["relevance"].unique()) == [0, 1, 2, 3]

    found = _cli("search", "--index", run / "indexes/default", "--reranker", run / "models/reranker",
                 report["try"], "--json", cwd=tmp_path, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    hits = json.loads(found.stdout)["results"][0]["hits"]
    assert hits and {"p_click", "p_purchase", "score"} <= set(hits[0])

    started = time.perf_counter()
    again = _cli(*args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [s["status"] for s in json.loads(again.stdout)["steps"]] == ["skipped"] * 7
    assert json.loads(again.stdout)["evaluation"] == report["evaluation"]
    assert time.perf_counter() - started < 60
