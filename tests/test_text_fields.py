"""Configurable product text fields (--text-fields / pipeline.toml ``text_fields``): the text
follows the chosen fields, artefacts record them, consumers read them back, and a pair of
artefacts built on different fields is refused with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.artifacts import build_manifest, fingerprint_frame, write_manifest
from pipeline.core.errors import ArtifactError, DataError, ShoprankError
from pipeline.core.text import PRODUCT_TEXT_FIELDS, parse_text_fields, recorded_text_fields, text_hash
from pipeline.data import load_dataset, product_text

ROOT = Path(__file__).resolve().parents[1]
WITH_DESCRIPTION = ("title", "description")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("SHOPRANK_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def catalog(tiny_data_dir: Path) -> pd.DataFrame:
    return load_dataset(catalog=tiny_data_dir / "catalog.parquet").catalog


@pytest.fixture(scope="module")
def small_catalog(catalog: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 24 products, with a non-canonical column, as a Parquet file (fast to encode)."""
    path = tmp_path_factory.mktemp("small") / "catalog.parquet"
    catalog.head(24).assign(material=[f"oak {i}" for i in range(24)]).to_parquet(path, index=False)
    return path


def test_default_text_is_unchanged(catalog: pd.DataFrame) -> None:
    row = catalog.iloc[0]
    expected = " | ".join(str(row[f]).strip() for f in ("title", "brand", "category", "attributes") if str(row[f]).strip())
    assert product_text(catalog)[0] == expected
    assert product_text(catalog, PRODUCT_TEXT_FIELDS) == product_text(catalog)


def test_description_changes_the_text_when_selected(catalog: pd.DataFrame) -> None:
    texts = product_text(catalog, WITH_DESCRIPTION)
    row = catalog.iloc[0]
    assert row["description"] and texts[0] == f"{row['title']} | {row['description']}"
    assert texts != product_text(catalog)


def test_other_catalog_columns_load_and_can_be_selected(small_catalog: Path) -> None:
    frame = load_dataset(catalog=small_catalog).catalog
    assert product_text(frame, ("title", "material"))[3].endswith("| oak 3")


def test_missing_column_is_a_one_line_data_error(catalog: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="'colour'") as err:
        product_text(catalog, ("title", "colour"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["", "title,,brand", "title,title"])
def test_malformed_field_lists_are_refused(spec: str) -> None:
    with pytest.raises(ShoprankError):
        parse_text_fields(spec)
    assert parse_text_fields(" title , description ") == WITH_DESCRIPTION
    assert parse_text_fields(None) == PRODUCT_TEXT_FIELDS


def test_artefacts_without_the_key_mean_the_default_fields() -> None:
    from pipeline.search import searcher_text_fields

    assert recorded_text_fields({}) == PRODUCT_TEXT_FIELDS
    assert searcher_text_fields({}, {}, "idx", "rr") == PRODUCT_TEXT_FIELDS
    assert searcher_text_fields({"text_fields": list(WITH_DESCRIPTION)}, None, "idx") == WITH_DESCRIPTION
    with pytest.raises(ArtifactError, match="title,description"):
        searcher_text_fields({}, {"text_fields": list(WITH_DESCRIPTION)}, "idx", "rr")


def test_index_records_fields_and_hashes_follow_them(catalog: pd.DataFrame, tmp_path: Path) -> None:
    """The fingerprint and per-product hashes are of the chosen fields; the default build is
    unchanged (same fingerprint columns as before the fields were configurable)."""
    from retrieval.encoders import load_encoder
    from retrieval.index import TEXT_HASHES_FILE, Retriever, build_index

    small = catalog.head(12)
    encoder = load_encoder(None, "torch")
    default = build_index(small, encoder, tmp_path / "default", show_progress=False)
    chosen = build_index(small, encoder, tmp_path / "desc", show_progress=False, text_fields=WITH_DESCRIPTION)
    assert default["text_fields"] == list(PRODUCT_TEXT_FIELDS) and chosen["text_fields"] == list(WITH_DESCRIPTION)
    assert default["catalog_fingerprint"] == fingerprint_frame(small, ["product_id", *PRODUCT_TEXT_FIELDS])
    assert chosen["catalog_fingerprint"] == fingerprint_frame(small, ["product_id", *WITH_DESCRIPTION])
    hashes = np.load(tmp_path / "desc" / TEXT_HASHES_FILE)
    assert hashes.tolist() == [text_hash(t) for t in product_text(small, WITH_DESCRIPTION)]
    assert Retriever.load(tmp_path / "desc", encoder).text_fields == WITH_DESCRIPTION


def _fake_pair(root: Path, catalog_path: Path, reranker_fields: tuple[str, ...] | None) -> tuple[Path, Path]:
    """An index over random vectors with the default fields, and a reranker directory whose
    manifest records ``reranker_fields``: enough for the searcher's pre-load check."""
    from rerank.model import KIND
    from retrieval.index import build_from_vectors

    frame = load_dataset(catalog=catalog_path).catalog
    vecs = np.random.default_rng(0).normal(size=(len(frame), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    build_from_vectors(vecs, frame["product_id"].tolist(), root / "index", text_fields=PRODUCT_TEXT_FIELDS,
                       catalog={"catalog": str(catalog_path.resolve())})
    reranker = root / "reranker"
    reranker.mkdir()
    extra = {"text_fields": list(reranker_fields)} if reranker_fields else {}
    write_manifest(reranker, build_manifest(KIND, tasks=["click"], **extra))
    return root / "index", reranker


def test_search_refuses_an_index_reranker_pair_on_different_fields(small_catalog: Path, tmp_path: Path) -> None:
    index, reranker = _fake_pair(tmp_path, small_catalog, WITH_DESCRIPTION)
    proc = _run("search", "oak table", "--index", str(index), "--reranker", str(reranker), cwd=tmp_path)
    _one_line_error(proc, "title,description", "title,brand,category,attributes", str(reranker))


def test_unknown_field_is_a_one_line_cli_error(small_catalog: Path, tmp_path: Path) -> None:
    proc = _run("build-index", "--catalog", str(small_catalog), "--text-fields", "title,colour",
                "--out", "idx", cwd=tmp_path)
    _one_line_error(proc, "'colour'")
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow  # encodes a catalog with the real model to build an index
def test_pipeline_toml_text_fields_is_honoured(small_catalog: Path, tmp_path: Path) -> None:
    """A top-level ``text_fields`` sets every command's --text-fields; a command table wins."""
    (tmp_path / "pipeline.toml").write_text('text_fields = ["title", "material"]\n\n'
                                            '[train-reranker]\ntext-fields = "title,brand"\n')
    shown = json.loads(_run("config", "show", "--json", cwd=tmp_path).stdout)["effective"]
    assert shown["build-index"]["text-fields"] == {"value": "title,material", "source": "pipeline.toml"}
    assert shown["train-retriever"]["text-fields"]["value"] == "title,material"
    assert shown["train-reranker"]["text-fields"]["value"] == "title,brand"
    proc = _run("build-index", "--catalog", str(small_catalog), "--out", "idx", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["text_fields"] == ["title", "material"]
    (tmp_path / "pipeline.toml").write_text('text_fields = "title,colour"\n')
    _one_line_error(_run("build-index", "--catalog", str(small_catalog), "--out", "idx2", cwd=tmp_path), "'colour'")


@pytest.mark.slow
def test_trained_models_record_fields_and_consumers_follow_them(tiny_data_dir: Path, tmp_path: Path) -> None:
    """train-retriever and train-reranker record the fields; build-index takes the retriever's
    and refuses others; search refuses the reranker against an index on other fields."""
    data = str(tiny_data_dir)
    proc = _run("train-retriever", "--data", data, "--out", "retriever", "--epochs", "1", "--batch-size", "16",
                "--max-rows", "32", "--text-fields", "title,description", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "retriever/manifest.json").read_text())["text_fields"] == list(WITH_DESCRIPTION)
    proc = _run("build-index", "--catalog", f"{data}/catalog.parquet", "--model", "retriever", "--out", "index",
                "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "index/manifest.json").read_text())["text_fields"] == list(WITH_DESCRIPTION)
    _one_line_error(_run("build-index", "--catalog", f"{data}/catalog.parquet", "--model", "retriever",
                         "--text-fields", "title", "--out", "other", cwd=tmp_path), "trained on product text fields")
    proc = _run("train-reranker", "--data", data, "--out", "reranker", "--max-queries", "2", "--max-shown", "4",
                "--negatives", "1", "--epochs", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "reranker/manifest.json").read_text())["text_fields"] == list(PRODUCT_TEXT_FIELDS)
    _one_line_error(_run("search", "oak table", "--index", "index", "--reranker", "reranker", cwd=tmp_path),
                    "title,description", "title,brand,category,attributes")
