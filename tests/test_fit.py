"""`pipeline fit`: derived splits, resumable steps, the data step on public dataset shapes, and
one end-to-end run on a judged-pairs CSV.gz without product ids (issue 19)."""
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
from pipeline.core.locks import LockedError
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


def judged_pairs_csv() -> str:
    """~150 distinct titles and ~40 queries; every title appears twice across the file with other
    case and spacing (one product each), and grades are 1 (irrelevant) to 4 (exact)."""
    rows = ["query,product_title,product_description,median_relevance"]
    titles = [(c, t, f"{c.title()} {m} {t.title()} {n}") for t, (_, m, _) in TYPES.items()
              for c in COLOURS for n in ("Classic", "Deluxe", "Compact", "Plus")][:150]
    queries = [(c, t, f"{c} {t}") for t in TYPES for c in COLOURS[:4]] + [(None, t, s) for t, (_, _, s) in TYPES.items()]
    for qi, (q_colour, q_type, query) in enumerate(queries):
        for ti, (colour, ptype, title) in enumerate(titles):
            if (ti + qi) % 4 and ptype != q_type:
                continue                      # a judged pool: the type's products plus a sample of others
            same_cat = TYPES[ptype][0] == TYPES[q_type][0]
            grade = 4 if ptype == q_type and colour == (q_colour or colour) else 3 if ptype == q_type else 2 if same_cat else 1
            shown = title.lower() if (ti + qi) % 2 else f" {title}  "
            rows.append(f"{query},{shown},{TYPES[ptype][1]} {ptype} in {colour},{grade}")
    return "\n".join(rows) + "\n"


#: The documented recipe (docs/own-data.md), read from the file the docs point to.
MAPPING = (Path(__file__).resolve().parents[1] / "docs" / "examples" / "judgments.toml").read_text(encoding="utf-8")


def _write_shop(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "judgments.csv.gz"
    data.write_bytes(gzip.compress(judged_pairs_csv().encode()))
    mapping = tmp_path / "judgments.toml"
    mapping.write_text(MAPPING)
    return data, mapping


def _cli(*args: str | Path, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


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


def _public_shape(tmp_path: Path, shape: str) -> tuple[dict, str]:
    """A few rows in the shape of a public dataset and its mapping (docs/own-data.md)."""
    products = [(f"B{i:03d}", f"{c} {t} {i}", t) for i, (c, t) in
                enumerate((c, t) for c in COLOURS for t in TYPES)]
    queries = [f"{c} {t}" for c in COLOURS for t in TYPES]
    if shape == "wands":
        pd.DataFrame({"product_id": [p for p, _, _ in products], "product_name": [n for _, n, _ in products],
                      "product_class": [t for _, _, t in products]}).to_csv(tmp_path / "product.csv", sep="\t", index=False)
        pd.DataFrame({"query": [q for q in queries for _ in products[:6]],
                      "product_id": [p for _ in queries for p, _, _ in products[:6]],
                      "label": ["Exact", "Partial", "Irrelevant", "Partial", "Irrelevant", "Exact"] * len(queries)}
                     ).to_csv(tmp_path / "label.csv", sep="\t", index=False)
        mapping = ('[catalog]\nformat = "tsv"\n[catalog.columns]\nproduct_name = "title"\nproduct_class = "category"\n'
                   '[qrels]\nformat = "tsv"\nlabels = "wands"\n[qrels.columns]\nlabel = "relevance"\n')
        return {"catalog": tmp_path / "product.csv", "qrels": tmp_path / "label.csv"}, mapping
    pd.DataFrame({"product_id": [p for p, _, _ in products], "product_title": [n for _, n, _ in products],
                  "product_bullet_point": [f"{t}\nmachine washable" for _, _, t in products]}
                 ).to_parquet(tmp_path / "products.parquet")
    pd.DataFrame({"query": [q for q in queries for _ in products[:4]],
                  "product_id": [p for _ in queries for p, _, _ in products[:4]],
                  "esci_label": ["E", "S", "C", "I"] * len(queries)}).to_parquet(tmp_path / "examples.parquet")
    mapping = ('[catalog]\nattributes = ["product_bullet_point"]\n[catalog.columns]\nproduct_title = "title"\n'
               '[qrels]\nlabels = "esci"\n[qrels.columns]\nesci_label = "relevance"\n')
    return {"catalog": tmp_path / "products.parquet", "qrels": tmp_path / "examples.parquet"}, mapping


@pytest.mark.parametrize("shape", ["wands", "esci"])
def test_public_dataset_shapes_load_through_the_data_step(tmp_path, shape) -> None:
    sources, mapping = _public_shape(tmp_path, shape)
    toml = tmp_path / "map.toml"
    toml.write_text(mapping)
    files = {"catalog": sources["catalog"], "engagement": None, "queries": None, "qrels": sources["qrels"]}
    summary = prepare_dataset(files, toml, tmp_path / "out", seed=13)
    assert summary["products"] == len(COLOURS) * len(TYPES) and summary["engagement_rows"] > 0
    assert summary["queries_train"] and summary["queries_valid"] and summary["queries_test"]


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

@pytest.mark.slow
def test_fit_judged_pairs_to_a_working_search_then_resume_skips_everything(tmp_path) -> None:
    data, mapping = _write_shop(tmp_path)
    run = tmp_path / "run"
    args = ("fit", "--catalog", data, "--qrels", data, "--mapping", mapping, "--budget", "quick",
            "--out", run, "--no-progress", "--json")
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [s["status"] for s in report["steps"]] == ["done"] * 7
    ds = load_dataset(run / "data/sample")
    assert ds.catalog["product_id"].is_unique and len(ds.catalog) == 150
    assert sorted(ds.qrels["relevance"].unique()) == [0, 1, 2, 3]
    for rel in ("models/retriever", "models/reranker", "indexes/default", "models/retriever/onnx",
                "models/reranker/onnx"):
        assert read_manifest(run / rel)["id"], rel
    systems = {row["system"] for row in report["evaluation"]["rows"]}
    assert {"bm25", "dense-fine-tuned", "two-stage"} <= systems and report["evaluation"]["split"] == "test"

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
