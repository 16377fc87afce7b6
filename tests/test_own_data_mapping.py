"""Your own judged-pairs file through the mapping alone: one gzip CSV of (query, title, grade)
rows with no product ids and a 1-4 scale, read as both catalog and qrels; Home Depot's rater
means through its documented mapping; and the documented mappings are the example files the
tests load (issue 19)."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.data import (derive_product_id, load_catalog, load_dataset, load_mapping, load_qrels, parse_mapping,
                           qrels_dict)

REPO = Path(__file__).resolve().parents[1]

#: "Velvet Sofa 3-Seat" is judged under two queries, spelt with other case and spacing the
#: second time; ("lamp", "Oak Desk Lamp") is judged twice, 4 then 3.
JUDGMENTS = (
    "query,product_title,product_description,median_relevance\n"
    "red sofa,Velvet Sofa  3-Seat,Soft velvet,4\n"
    "couch, velvet sofa 3-seat ,Another listing,3\n"
    "red sofa,Oak Desk Lamp,Brass lamp,1\n"
    "couch,Oak Desk Lamp,Brass lamp,1\n"
    "lamp,Oak Desk Lamp,Brass lamp,4\n"
    "lamp,Oak Desk Lamp,Brass lamp,3\n"
    "lamp,Linen Curtain,,2\n"
)
EXAMPLES = REPO / "docs" / "examples"
#: The documented recipe (docs/own-data.md), read from the file the docs point to.
MAPPING = (EXAMPLES / "judgments.toml").read_text(encoding="utf-8")
#: Pinned: a derived id must not change between runs or releases, or saved indexes and
#: models stop matching the catalog they were built from.
SOFA_ID = "pe9a003058667def2"


def _write(tmp_path: Path, mapping: str = MAPPING, rows: str = JUDGMENTS) -> tuple[Path, Path]:
    data = tmp_path / "judgments.csv.gz"
    data.write_bytes(gzip.compress(rows.encode()))
    toml = tmp_path / "map.toml"
    toml.write_text(mapping)
    return data, toml


def _load(data: Path, toml: Path):
    return load_dataset(catalog=data, qrels=data, mapping=toml)


def test_one_judged_pairs_file_is_catalog_and_qrels(tmp_path, capsys) -> None:
    data, toml = _write(tmp_path)
    ds = _load(data, toml)
    sofa, lamp, curtain = (derive_product_id([t]) for t in ("Velvet Sofa 3-Seat", "Oak Desk Lamp", "Linen Curtain"))
    # one product per normalised title, the first row's text kept
    assert ds.catalog["product_id"].tolist() == [sofa, lamp, curtain]
    assert ds.catalog["title"].tolist() == ["Velvet Sofa  3-Seat", "Oak Desk Lamp", "Linen Curtain"]
    assert ds.catalog["description"].tolist()[0] == "Soft velvet"
    assert ds.report["catalog_rows_merged"] == 4
    # grades 1-4 -> 0-3; the sofa's one id joins both queries; the repeated pair keeps its max
    assert qrels_dict(ds.qrels) == {"red sofa": {sofa: 3, lamp: 0}, "couch": {sofa: 2, lamp: 0},
                                    "lamp": {lamp: 3, curtain: 1}}
    assert ds.report["qrels_duplicates_merged"] == 1 and ds.report["qrels_unknown_products"] == 0
    assert "warning" not in capsys.readouterr().err
    # merging is id_from's: a file's own duplicate ids stay an error
    (tmp_path / "c.csv").write_text("product_id,title\nP1,Sofa\nP1,Lamp\n")
    with pytest.raises(DataError, match="duplicate product_id 'P1'"):
        load_catalog(tmp_path / "c.csv")


def test_derived_ids_are_stable_across_runs(tmp_path) -> None:
    data, toml = _write(tmp_path)
    first, second = _load(data, toml), _load(data, toml)
    assert first.catalog["product_id"].tolist() == second.catalog["product_id"].tolist()
    assert first.catalog["product_id"].iloc[0] == SOFA_ID
    assert derive_product_id(["  VELVET sofa\t3-seat"]) == SOFA_ID
    # fields are kept apart: moving a word between columns is another product
    assert derive_product_id(["a b", "c"]) != derive_product_id(["a", "b c"])


def test_numeric_scales_offset_and_scale(tmp_path) -> None:
    rows = "query,product_id,grade\nsofa,P1,1\nsofa,P2,2.33\nsofa,P3,2.67\nsofa,P4,3\n"
    (tmp_path / "q.csv").write_text(rows)
    shifted = {"qrels": {"offset": -1, "columns": {"grade": "relevance"}}}
    spread = {"qrels": {"offset": -1.5, "scale": 1.5, "columns": {"grade": "relevance"}}}
    assert load_qrels(tmp_path / "q.csv", shifted)["relevance"].tolist() == [0, 1, 2, 2]
    assert load_qrels(tmp_path / "q.csv", spread)["relevance"].tolist() == [0, 2, 3, 3]


def test_home_depot_rater_means_round_onto_three_grades(tmp_path) -> None:
    """docs/examples/homedepot.toml: relevance is a mean of 1-3 ratings; "1-3" shifts it to 0..2
    and rounds halves up, and a product_uid judged under several queries is one product."""
    means = ["1", "1.25", "1.33", "1.5", "1.67", "2", "2.33", "2.5", "2.67", "2.75", "3"]
    rows = ["id,product_uid,product_title,search_term,relevance"]
    rows += [f"{i},{100001 + i % 3},Title {i % 3},query {i},{mean}" for i, mean in enumerate(means)]
    data = tmp_path / "train.csv"
    data.write_text("\n".join(rows) + "\n")
    ds = load_dataset(catalog=data, qrels=data, mapping=EXAMPLES / "homedepot.toml")
    assert ds.qrels["relevance"].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert ds.catalog["title"].tolist() == ["Title 0", "Title 1", "Title 2"]
    assert ds.catalog["product_uid"].tolist() == ["100001", "100002", "100003"]
    assert ds.catalog["product_id"].tolist() == [derive_product_id([uid]) for uid in ("100001", "100002", "100003")]
    data.write_text("\n".join([*rows, "99,100001,Title 0,query 99,3.5"]) + "\n")
    with pytest.raises(DataError, match="row 12: '3.5' is outside the labels range 1-3"):
        load_dataset(catalog=data, qrels=data, mapping=EXAMPLES / "homedepot.toml")


def _documented_mappings() -> dict[str, str]:
    """The TOML blocks of docs/own-data.md that name their example file on their first line."""
    text = (REPO / "docs" / "own-data.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n# (\S+\.toml)\n(.*?)```", text, flags=re.S)
    return {name: body for name, body in blocks}


def test_documented_mappings_are_the_example_files() -> None:
    documented = _documented_mappings()
    assert set(documented) == {p.name for p in EXAMPLES.glob("*.toml")}
    for name, body in documented.items():
        assert parse_mapping(tomllib.loads(body)) == load_mapping(EXAMPLES / name), name


def test_a_one_to_four_file_without_the_preset_loads_but_warns(tmp_path, capsys) -> None:
    data, toml = _write(tmp_path, MAPPING.replace('labels = "1-4"\n', ""))
    ds = _load(data, toml)
    assert sorted(ds.qrels["relevance"].unique()) == [1, 2, 3, 4]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert "lowest relevance grade is 1, not 0" in warnings[0] and 'labels = "1-4"' in warnings[0]


@pytest.mark.parametrize("qrels_section, needle", [
    ('labels = "4-1"', "must go from low to high"),
    ('labels = "1-4"\noffset = -1', "already sets the scale"),
    ('offset = "one"', "offset must be a number"),
    ("scale = -1", "scale must be a positive number"),
    ("scale = true", "scale must be a number"),
    ('offset = 1\n[qrels.labels]\nbad = 0', "use one"),
    ('labels = "likert"', "unknown labels preset 'likert'"),
    ("id_from = []", "id_from is empty"),
    ("id_from = 3", "id_from must be a column name or a list"),
    ('id_from = ["product_title", "product_description"]', "would never match"),
    ('idfrom = ["product_title"]', "unknown key 'idfrom'"),
    ('events = "click"', "[qrels.events] must map"),
    ('format = "xlsx"', "unknown format 'xlsx'"),
])
def test_bad_mapping_values_are_one_line_errors(tmp_path, qrels_section, needle) -> None:
    (tmp_path / "m.toml").write_text(f'[catalog]\nid_from = ["product_title"]\n[qrels]\n{qrels_section}\n')
    with pytest.raises(DataError) as err:
        load_mapping(tmp_path / "m.toml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_id_from_in_a_section_without_product_ids_is_refused() -> None:
    with pytest.raises(DataError, match=r"\[queries\] id_from applies to \[catalog\], \[engagement\], \[qrels\] only"):
        load_mapping({"queries": {"id_from": "query"}})


@pytest.mark.parametrize("rows, mapping, needle", [
    (JUDGMENTS.replace("lamp,Linen Curtain,,2", "lamp,Linen Curtain,,5"), MAPPING,
     "row 7: '5' is outside the labels range 1-4"),
    (JUDGMENTS.replace("lamp,Linen Curtain,,2", "lamp,Linen Curtain,,n/a"), MAPPING, "row 7: not a number: 'n/a'"),
    (JUDGMENTS, MAPPING.replace('id_from = ["product_title"]\nlabels', 'id_from = ["title"]\nlabels'),
     "missing column 'title' listed in the mapping's id_from"),
    (JUDGMENTS, MAPPING.replace('product_description = "description"',
                                'product_description = "description"\nquery = "product_id"'),
     "derives 'product_id', but the file has a 'query' column for it too"),
    (JUDGMENTS.replace("lamp,Linen Curtain,,2", "lamp, ,,2"), MAPPING, "row 7: 'product_title' empty"),
])
def test_bad_judged_pairs_files_are_one_line_errors(tmp_path, rows, mapping, needle) -> None:
    data, toml = _write(tmp_path, mapping, rows)
    with pytest.raises(DataError) as err:
        _load(data, toml)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_validate_reads_the_judged_pairs_file(tmp_path) -> None:
    data, toml = _write(tmp_path)
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--catalog", str(data), "--qrels",
                             str(data), "--mapping", str(toml), "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stderr and "Traceback" not in result.stderr
    stats = json.loads(result.stdout)
    assert stats["products"] == 3 and stats["catalog_rows_merged"] == 4
    assert stats["qrels_rows"] == 6 and stats["qrels_duplicates_merged"] == 1
    assert (stats["grade_0"], stats["grade_1"], stats["grade_2"], stats["grade_3"]) == (2, 1, 1, 2)
