"""`pipeline sample-data | simulate-engagement | validate` as a user runs them: subprocesses,
exit codes, one-line errors without tracebacks."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
GOOD_CATALOG = "product_id,title,price\nP1,Red Sofa,10\nP2,Blue Lamp,5\n"
GOOD_ENGAGEMENT = "query,product_id,impressions,clicks,add_to_carts,purchases\nsofa,P1,10,3,1,0\nlamp,P2,4,1,1,1\n"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_sample_data_is_reproducible_and_in_range(tmp_path) -> None:
    """Acceptance: default-size world, seed 1, twice -> byte-identical Parquet; the command
    reports the mismatch share and funnel rates within the issue's ranges; it validates."""
    outs = []
    for name in ("one", "two"):
        result = run_cli("sample-data", "--out", tmp_path / name, "--seed", "1", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outs.append(json.loads(result.stdout))
    for f in ("catalog.parquet", "engagement.parquet", "queries.parquet", "qrels.parquet"):
        a, b = ((tmp_path / d / f).read_bytes() for d in ("one", "two"))
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), f
    stats = outs[0]
    assert stats["products"] == 5000 and stats["queries"] == 1000 and stats["categories"] >= 20
    assert stats["mismatch_share"] >= 1 / 4
    assert 0.05 <= stats["click_rate"] <= 0.15
    assert 0.005 <= stats["purchase_rate"] <= 0.03
    # the sample world v2 ranges: constraints in most queries, tens of exact products, look-alikes in BM25's top 10
    assert stats["constraints_1_share"] + stats["constraints_2plus_share"] >= 0.6
    assert stats["constraints_2plus_share"] >= 0.15
    assert stats["exact_per_query_median"] <= 40
    assert stats["bm25_top10_lookalike_share"] >= 0.1
    assert stats["purchase_rate"] < stats["add_to_cart_rate"] < stats["click_rate"]
    table = run_cli("sample-data", "--out", tmp_path / "small", "--products", "200", "--queries", "30", cwd=tmp_path)
    assert table.returncode == 0 and "mismatch_share" in table.stdout and "purchase_rate" in table.stdout
    valid = run_cli("validate", tmp_path / "one", "--json", cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert json.loads(valid.stdout)["mismatch_share"] == pytest.approx(stats["mismatch_share"])


def test_simulate_engagement_from_labels(tmp_path, tiny_data_dir) -> None:
    labels = pd.read_parquet(tiny_data_dir / "qrels.parquet")
    esci = labels.assign(esci_label=labels["relevance"].map({3: "E", 2: "S", 1: "C", 0: "I"})).drop(columns="relevance")
    esci.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "m.toml").write_text('[qrels]\nlabels = "esci"\n[qrels.columns]\nesci_label = "relevance"\n')
    out = tmp_path / "eng.parquet"
    result = run_cli("simulate-engagement", "--qrels", tmp_path / "labels.csv", "--catalog",
                     tiny_data_dir / "catalog.parquet", "--out", out, "--mapping", tmp_path / "m.toml",
                     "--seed", "4", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert 0.03 <= stats["click_rate"] <= 0.15 and stats["purchase_rate"] < stats["click_rate"]
    valid = run_cli("validate", "--catalog", tiny_data_dir / "catalog.parquet", "--engagement", out, cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr


def _validate_file(tmp_path: Path, kind: str, name: str, content: bytes | str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    args = ["validate", "--catalog", path] if kind == "catalog" else ["validate", "--catalog", tmp_path / "cat.csv", f"--{kind}", path]
    (tmp_path / "cat.csv").write_text(GOOD_CATALOG)
    return run_cli(*args, cwd=tmp_path)


@pytest.mark.parametrize("kind,name,content,needles", [
    ("catalog", "c.csv", "product_id,price\nP1,3\n", ["c.csv", "missing required column 'title'"]),
    ("catalog", "c.csv", "product_id,title\nP1,Sofa\nP2,Lamp\nP1,Chair\n",
     ["c.csv", "column 'product_id', row 3", "duplicate product_id 'P1'"]),
    ("catalog", "c.tsv", "product_id\ttitle\nP1\tSofa\nP2\t\n", ["c.tsv", "column 'title', row 2", "empty title"]),
    ("engagement", "e.csv", "query,product_id,impressions,clicks,add_to_carts,purchases\nsofa,P1,5,2,1,0\nlamp,P2,3,4,0,0\n",
     ["e.csv", "column 'clicks', row 2", "funnel violation", "clicks (4) > impressions (3)"]),
    ("engagement", "e.csv", "query,product_id,impressions,clicks,add_to_carts,purchases\nsofa,P1,5,2,1,-1\n",
     ["e.csv", "column 'purchases', row 1", "negative count -1"]),
    ("catalog", "c.csv", b"product_id,title,brand\nP1,Sofa,Acme\nP2,Chaise,Cr\xe8me\n",
     ["c.csv", "column 'brand', row 2", "not valid UTF-8"]),
    ("catalog", "c.csv", 'product_id,title\nP1,Sofa\nP2,"Lamp with a long\n', ["c.csv", "unreadable or truncated CSV"]),
    ("qrels", "q.jsonl", '{"query": "sofa", "product_id": "P1", "relevance": 3}\n{"query": "lamp", "prod',
     ["q.jsonl", "line 2", "invalid JSON"]),
    ("qrels", "q.csv", "query,product_id,relevance\nsofa,P1,Exact\n", ["q.csv", "column 'relevance', row 1", "Exact"]),
])
def test_validation_errors_are_one_line(tmp_path, kind, name, content, needles) -> None:
    assert_one_line_error(_validate_file(tmp_path, kind, name, content), *needles)


def test_truncated_parquet_is_one_line_error(tmp_path, tiny_data_dir) -> None:
    data = (tiny_data_dir / "catalog.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    result = run_cli("validate", "--catalog", tmp_path / "cut.parquet", cwd=tmp_path)
    assert_one_line_error(result, "cut.parquet", "unreadable or truncated Parquet")
    missing = run_cli("validate", tmp_path / "nowhere", cwd=tmp_path)
    assert_one_line_error(missing, "nowhere")


def test_unknown_products_in_engagement_are_skipped_with_a_warning(tmp_path) -> None:
    (tmp_path / "cat.csv").write_text(GOOD_CATALOG)
    (tmp_path / "e.csv").write_text(GOOD_ENGAGEMENT + "sofa,GHOST,3,1,0,0\nlamp,GHOST2,2,0,0,0\n")
    result = run_cli("validate", "--catalog", tmp_path / "cat.csv", "--engagement", tmp_path / "e.csv", "--json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 engagement row(s)" in warnings[0] and "GHOST" in warnings[0]
    stats = json.loads(result.stdout)
    assert stats["engagement_rows"] == 2 and stats["engagement_unknown_products"] == 2


def test_estimate_propensity_from_the_sample_worlds_position_log(tmp_path, tiny_data_dir) -> None:
    result = run_cli("estimate-propensity", "--log", tiny_data_dir / "positions.parquet", "--against-simulator",
                     "--max-position", "10", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    theta = [row["propensity"] for row in report["positions"]]
    assert report["input"] == "per_position" and theta[0] == 1.0 and len(theta) == 10
    assert theta[-1] < theta[0] and all(0 <= row["relative_error"] < 1 for row in report["positions"])
    bad = run_cli("estimate-propensity", "--log", tiny_data_dir / "catalog.parquet", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
