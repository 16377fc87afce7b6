"""Loaders, schema mapping (ESCI / WANDS shapes), event aggregation and helpers."""
from __future__ import annotations

import json
import tomllib

import pandas as pd
import pytest

from pipeline.data import (load_catalog, load_dataset, load_engagement, load_qrels, product_text,
                           qrels_dict, vocabulary_mismatch_queries)
from pipeline.core.errors import DataError
from pipeline.data.mapping import load_mapping

WANDS_PRODUCTS = (
    "product_id\tproduct_name\tproduct_class\tproduct_features\tbrand_name\n"
    "101\tsolid wood coffee table\tCoffee Tables\tcolor:walnut|material:oak\tHalcyon\n"
    "102\tvelvet accent chair\tAccent Chairs\tcolor:green|material:velvet\tOrbis\n"
    "103\tlinen sofa\tSofas\tcolor:grey|seats:3\tHalcyon\n"
)
WANDS_QUERIES = "query_id\tquery\n0\tliving room chair\n1\tgrey couch\n"
WANDS_LABELS = "id\tquery_id\tproduct_id\tlabel\n1\t0\t102\tExact\n2\t0\t101\tIrrelevant\n3\t1\t103\tPartial\n4\t1\t999\tExact\n"
WANDS_MAPPING = """
[catalog]
attributes = ["product_features"]
[catalog.columns]
product_name = "title"
product_class = "category"
brand_name = "brand"
[qrels]
labels = "wands"
[qrels.columns]
label = "relevance"
"""

WANDS_MAPPING_DICT = tomllib.loads(WANDS_MAPPING)


def test_wands_like_tsv_loads_through_mapping(tmp_path, capsys) -> None:
    (tmp_path / "catalog.tsv").write_text(WANDS_PRODUCTS)
    (tmp_path / "queries.tsv").write_text(WANDS_QUERIES)
    (tmp_path / "qrels.tsv").write_text(WANDS_LABELS)
    (tmp_path / "map.toml").write_text(WANDS_MAPPING)
    ds = load_dataset(tmp_path, mapping=tmp_path / "map.toml")
    assert ds.catalog["product_id"].tolist() == ["101", "102", "103"]
    assert ds.catalog.loc[0, "title"] == "solid wood coffee table"
    assert ds.catalog.loc[0, "attributes"] == "color: walnut; material: oak"
    assert product_text(ds.catalog)[2] == "linen sofa | Halcyon | Sofas | color: grey; seats: 3"
    # query_id-keyed labels resolved to query text; string labels mapped; unknown id skipped
    assert qrels_dict(ds.qrels) == {"living room chair": {"102": 2, "101": 0}, "grey couch": {"103": 1}}
    assert ds.report["qrels_unknown_products"] == 1
    assert "999" in capsys.readouterr().err
    assert ds.queries["split"].eq("test").all()


def test_labels_keyed_by_query_id_need_the_queries_file(tmp_path) -> None:
    from pipeline.world.simulate import engagement_from_labels

    for name, text in (("catalog.tsv", WANDS_PRODUCTS), ("queries.tsv", WANDS_QUERIES), ("qrels.tsv", WANDS_LABELS)):
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as err:       # no query text to train on: refused, naming the fix
        load_dataset(catalog=tmp_path / "catalog.tsv", qrels=tmp_path / "qrels.tsv", mapping=WANDS_MAPPING_DICT)
    assert "name queries by 'query_id' only" in str(err.value) and "--queries" in str(err.value)
    assert "\n" not in str(err.value)
    # simulate-engagement takes the queries file too, and its engagement is keyed by query text
    stats = engagement_from_labels(tmp_path / "qrels.tsv", tmp_path / "catalog.tsv", tmp_path / "eng.parquet",
                                   mapping=WANDS_MAPPING_DICT, queries=tmp_path / "queries.tsv")
    assert stats["queries"] == 2
    assert set(pd.read_parquet(tmp_path / "eng.parquet")["query"]) == {"living room chair", "grey couch"}


def test_esci_like_labels_and_list_attributes(tmp_path) -> None:
    catalog = pd.DataFrame({
        "asin": ["B01", "B02", "B03"],
        "product_title": ["Trail Runner 2", "Road Shoe", "Cotton Socks"],
        "product_brand": ["Velocita", None, "Solvik"],
        "product_color": ["red", "blue", None],
        "product_bullet_point": [["breathable", "light"], [], ["6 pairs"]],
    })
    catalog.to_parquet(tmp_path / "products.parquet")
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"query": "kicks", "asin": "B01", "esci_label": "E"},
        {"query": "kicks", "asin": "B02", "esci_label": "S"},
        {"query": "kicks", "asin": "B03", "esci_label": "C"},
        {"query": "sandals", "asin": "B02", "esci_label": "I"},
    ]) + "\n")
    mapping = {"catalog": {"columns": {"asin": "product_id", "product_title": "title", "product_brand": "brand"},
                           "attributes": ["product_color", "product_bullet_point"]},
               "qrels": {"labels": "esci", "columns": {"asin": "product_id", "esci_label": "relevance"}}}
    cat = load_catalog(tmp_path / "products.parquet", mapping)
    assert cat["attributes"].tolist() == ["product_color: red; product_bullet_point: breathable, light",
                                          "product_color: blue", "product_bullet_point: 6 pairs"]
    assert cat["brand"].tolist() == ["Velocita", "", "Solvik"]
    qr = load_qrels(tmp_path / "labels.jsonl", mapping)
    assert qr["relevance"].tolist() == [3, 2, 1, 0]


def test_event_level_log_is_aggregated(tmp_path) -> None:
    events = pd.DataFrame({
        "search_term": ["sofa"] * 6 + ["lamp"] * 2,
        "item": ["P1", "P1", "P1", "P1", "P2", "P2", "P2", "P1"],
        "action": ["view", "view", "click", "atc", "view", "view", "view", "view"],
    })
    events.to_csv(tmp_path / "events.csv", index=False)
    mapping = {"engagement": {"columns": {"search_term": "query", "item": "product_id", "action": "event"},
                              "events": {"view": "impression", "atc": "add_to_cart"}}}
    report: dict = {}
    eng = load_engagement(tmp_path / "events.csv", mapping, report=report)
    got = {(r.query, r.product_id): (r.impressions, r.clicks, r.add_to_carts, r.purchases) for r in eng.itertuples()}
    assert got == {("lamp", "P1"): (1, 0, 0, 0), ("lamp", "P2"): (1, 0, 0, 0),
                   ("sofa", "P1"): (2, 1, 1, 0), ("sofa", "P2"): (2, 0, 0, 0)}
    assert report["engagement_event_rows"] == 8


def test_formats_agree(tmp_path) -> None:
    frame = pd.DataFrame({"product_id": ["a", "b"], "title": ["Red Sofa", "Blue Lamp"], "price": [10.5, 3.0]})
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_csv(tmp_path / "c.tsv", sep="\t", index=False)
    frame.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "c.parquet")
    loaded = [load_catalog(tmp_path / f"c.{ext}") for ext in ("csv", "tsv", "jsonl", "parquet")]
    for other in loaded[1:]:
        pd.testing.assert_frame_equal(loaded[0], other)
    assert loaded[0]["price"].tolist() == [10.5, 3.0]


def test_vocabulary_mismatch_definition() -> None:
    catalog = pd.DataFrame({"product_id": ["s1", "s2", "l1"], "title": ["Grey Sofa", "Linen Sofa", "Desk Lamp"],
                            "brand": ["", "", ""], "category": ["Sofas", "Sofas", "Lamps"], "attributes": ["", "", ""]})
    qrels = pd.DataFrame({"query": ["couch", "couch", "the grey couch", "a couch", "lamp", "reading light"],
                          "product_id": ["s1", "l1", "s2", "l1", "l1", "s1"], "relevance": [3, 0, 2, 1, 3, 0]})
    queries = pd.DataFrame({"query": ["couch", "the grey couch", "lamp", "a couch", "reading light"]})
    # 'couch': no shared word with s1 (l1 is irrelevant); 'the grey couch' vs s2 'linen sofa': none
    # ('the' is a stop word); 'lamp' matches; 'a couch' / 'reading light' have no relevant product.
    assert vocabulary_mismatch_queries(queries, qrels, catalog) == {"couch", "the grey couch"}


def test_bad_mapping_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / "m.toml").write_text("[qrels]\nlabels = 'trec'\n")
    with pytest.raises(DataError, match="unknown labels preset 'trec'"):
        load_mapping(tmp_path / "m.toml")
    with pytest.raises(DataError, match=r"unknown section \[products\]"):
        load_mapping({"products": {}})


def test_engagement_qrels_grade_by_the_deepest_funnel_event() -> None:
    from pipeline.data import engagement_qrels

    eng = pd.DataFrame({"query": ["a", "a", "a", "a", "b"], "product_id": ["1", "2", "3", "4", "1"],
                        "impressions": [5] * 5, "clicks": [1, 1, 1, 0, 1], "add_to_carts": [1, 1, 0, 0, 0],
                        "purchases": [1, 0, 0, 0, 0]})
    assert engagement_qrels(eng, ["a"]) == {"a": {"1": 3, "2": 2, "3": 1, "4": 0}}


@pytest.mark.parametrize("packed", [".gz", ".bz2", ".zst"])
def test_compressed_text_files_load_like_plain_ones(tmp_path, packed) -> None:
    """Public datasets ship as catalog.csv.gz and friends: read them transparently."""
    import pyarrow as pa

    catalog = pd.DataFrame({"product_id": ["a", "b"], "title": ["Grey Sofa", "Red Tent"],
                            "brand": ["x", "y"], "category": ["Sofas", "Tents"]})
    plain = tmp_path / "catalog.csv"
    catalog.to_csv(plain, index=False)
    packed_path = tmp_path / "sub" / f"catalog.csv{packed}"
    packed_path.parent.mkdir()
    with pa.output_stream(str(packed_path), compression={".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}[packed]) as out:
        out.write(plain.read_bytes())
    pd.testing.assert_frame_equal(load_catalog(packed_path), load_catalog(plain))
    assert load_dataset(packed_path.parent).catalog["product_id"].tolist() == ["a", "b"]  # found by name
    broken = tmp_path / f"broken.csv{packed}"
    broken.write_bytes(b"this is not compressed")
    with pytest.raises(DataError, match="not a readable"):
        load_catalog(broken)
