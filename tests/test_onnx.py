"""ONNX Runtime path: exports reproduce the torch models, refuse stale or corrupt files, and a
cold `pipeline search` on exported models never imports torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import ArtifactError

# Trains or loads real models (minutes on 2 cores): `make test` runs it, `make test-fast` skips it.
pytestmark = pytest.mark.slow

QUERIES = ["comfy couch", "running shoes", "lamp for the desk"]


@pytest.fixture(scope="module")
def exported(demo_run: tuple[Path, dict]) -> Path:
    """The quick demo's workdir with both models exported (the demo exports them itself)."""
    from pipeline.export import export_onnx
    from pipeline.core.onnx import has_export

    root, _ = demo_run
    retriever, reranker = root / "models/retriever", root / "models/reranker"
    if not (has_export(retriever) and has_export(reranker)):
        export_onnx(retriever, reranker)
    return root


def _catalog_texts(root: Path, n: int = 40) -> list[str]:
    from pipeline.data import load_dataset, product_text

    return product_text(load_dataset(catalog=root / "data/sample/catalog.parquet").catalog)[:n]


def _retrained_copy(reranker: Path, dest: Path) -> Path:
    """A copy of the reranker whose manifest id changed (as after retraining) but whose ONNX
    export did not: the export is now stale."""
    shutil.copytree(reranker, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["id"] = "retrained000"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_bi_encoder_export_matches_torch(exported: Path) -> None:
    from retrieval.encoder import BiEncoder
    from retrieval.onnx_encoder import OnnxBiEncoder

    texts = _catalog_texts(exported) + QUERIES
    torch_enc = BiEncoder.load(exported / "models/retriever")
    ref = torch_enc.encode_products(texts, show_progress=False)
    fp32 = OnnxBiEncoder.load(exported / "models/retriever", torch_enc.model_id, precision="fp32")
    int8 = OnnxBiEncoder.load(exported / "models/retriever", torch_enc.model_id, precision="int8")
    assert np.allclose(fp32.encode_products(texts, show_progress=False), ref, atol=1e-4)
    cos = (int8.encode_products(texts, show_progress=False) * ref).sum(1)
    assert cos.min() > 0.97, cos.min()


def test_int8_product_vectors_do_not_depend_on_the_progress_bar(exported: Path) -> None:
    """Dynamic int8 scales activations per call, so the batches must not change with the bar
    (they did: a progress bar chunked the catalog, and `make demo` built another index)."""
    from retrieval.encoder import BiEncoder
    from retrieval.onnx_encoder import OnnxBiEncoder

    texts = (_catalog_texts(exported) * 4)[:300]
    int8 = OnnxBiEncoder.load(exported / "models/retriever", BiEncoder.load(exported / "models/retriever").model_id,
                              precision="int8")
    quiet = int8.encode_products(texts, batch_size=8, show_progress=False)
    shown = int8.encode_products(texts, batch_size=8, show_progress=True)
    assert np.array_equal(quiet, shown)


def test_query_cache_returns_same_vectors_and_counts_hits(exported: Path) -> None:
    from retrieval.encoder import BiEncoder
    from retrieval.onnx_encoder import OnnxBiEncoder

    model_id = BiEncoder.load(exported / "models/retriever").model_id
    enc = OnnxBiEncoder.load(exported / "models/retriever", model_id, precision="fp32", cache_size=2)
    first = enc.encode_queries(QUERIES[:2])
    again = enc.encode_queries([QUERIES[1], QUERIES[0], QUERIES[1]])
    assert np.array_equal(again, first[[1, 0, 1]])
    assert enc.cache.stats() == {"size": 2, "hits": 2, "misses": 2}
    enc.encode_queries([QUERIES[2]])  # evicts the least recently used (QUERIES[1])
    assert enc.cache.stats()["size"] == 2 and enc.cache.get(QUERIES[1]) is None


def test_reranker_export_matches_torch(exported: Path) -> None:
    from rerank.model import MultiTaskCrossEncoder
    from rerank.onnx_model import OnnxCrossEncoder

    texts = _catalog_texts(exported)
    queries = [QUERIES[i % 3] for i in range(len(texts))]
    ref = MultiTaskCrossEncoder.load(exported / "models/reranker").predict(queries, texts)
    fp32 = OnnxCrossEncoder.load(exported / "models/reranker", precision="fp32")
    assert fp32.tasks == ("click", "add_to_cart", "purchase")
    assert np.allclose(fp32.predict(queries, texts, batch_size=7), ref, atol=1e-5)
    int8 = OnnxCrossEncoder.load(exported / "models/reranker", precision="int8").predict(queries, texts)
    # int8 is a coarser model, not a copy: the similarity skip puts ten times the pair's cosine
    # into every funnel logit, so per-pair probabilities move by up to a few hundredths. Its
    # ranking quality is what matters and is measured in nDCG@10 (compare-rerankers' int8 check).
    assert np.abs(int8 - ref).max() < 0.1
    assert np.abs(int8 - ref).mean() < 0.03
    # funnel heads survive the export: p(purchase) <= p(cart) <= p(click)
    assert (int8[:, 2] <= int8[:, 1] + 1e-6).all() and (int8[:, 1] <= int8[:, 0] + 1e-6).all()
    # each of the six layers' feed-forward up-projection stays fp32, and only those
    import onnx

    kept = json.loads((exported / "models/reranker/onnx/manifest.json").read_text())["config"]["int8"]["kept_fp32"]
    assert len(kept) == 6 and all("/intermediate/dense/MatMul" in name for name in kept)
    graph = onnx.load(str(exported / "models/reranker/onnx/model_int8.onnx"))
    float_matmuls = {n.name for n in graph.graph.node if n.op_type == "MatMul"}
    assert set(kept) <= float_matmuls


def test_stale_or_corrupt_export_is_refused(exported: Path, tmp_path: Path) -> None:
    from rerank.onnx_model import OnnxCrossEncoder

    stale = _retrained_copy(exported / "models/reranker", tmp_path / "stale")
    with pytest.raises(ArtifactError, match="stale"):
        OnnxCrossEncoder.load(stale)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(exported / "models/reranker", corrupt)
    graph = corrupt / "onnx/model_int8.onnx"
    graph.write_bytes(graph.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        OnnxCrossEncoder.load(corrupt, precision="int8")
    OnnxCrossEncoder.load(corrupt, precision="fp32")  # the untouched graph still loads

    missing = tmp_path / "missing"
    shutil.copytree(exported / "models/reranker", missing, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(ArtifactError, match="export-onnx"):
        OnnxCrossEncoder.load(missing)


def test_onnx_searcher_ranks_like_torch(exported: Path) -> None:
    from pipeline.search import TwoStageSearcher

    kwargs = {"catalog": exported / "data/sample/catalog.parquet"}
    onnx = TwoStageSearcher.load(exported / "indexes/default", exported / "models/reranker", backend="onnx",
                                 precision="fp32", **kwargs)
    torch_ = TwoStageSearcher.load(exported / "indexes/default", exported / "models/reranker", backend="torch", **kwargs)
    assert (onnx.backend, torch_.backend) == ("onnx", "torch")
    assert torch_.precision == "fp32"  # precision "auto" never picks torch's lossy dynamic int8
    for query in QUERIES:
        a, b = onnx.search(query, k=5, candidates=20), torch_.search(query, k=5, candidates=20)
        assert [h.product_id for h in a] == [h.product_id for h in b]
        for x, y in zip(a, b):
            assert x.probs.keys() == y.probs.keys()
            assert np.allclose(list(x.probs.values()), list(y.probs.values()), atol=1e-5)
            assert abs(x.retrieval_score - y.retrieval_score) < 1e-5
        # The served score z-scores each query's candidates, dividing by their spread, which
        # magnifies fp32 kernel differences; the probabilities above are the tight check.
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def test_cold_cli_search_does_not_import_torch(exported: Path) -> None:
    """The whole point of the export: `pipeline search` runs on onnxruntime + tokenizers + faiss;
    and a dense search leaves the index's lexical side (bm25s) unread."""
    code = ("import sys\nfrom pipeline.cli import main\nsys.argv = ['pipeline', 'search', 'comfy couch', '--json']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'pandas', 'bm25s')\n"
            "               if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=exported, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["models"]["backend"] == "onnx-int8" and result["results"][0]["hits"]


def test_catalog_reader_builds_the_training_text(exported: Path) -> None:
    from pipeline.search import CatalogText

    path = exported / "data/sample/catalog.parquet"
    fast = CatalogText.read(path)
    texts = _catalog_texts(exported, n=10_000)
    assert [fast.text(i) for i in range(len(texts))] == texts


def test_build_index_defaults_to_int8_onnx_and_fp32_onnx_matches_torch(exported: Path, tmp_path: Path) -> None:
    from retrieval.index import Retriever

    def build(name: str, *args: str) -> np.ndarray:
        proc = subprocess.run([str(Path(sys.executable).with_name("pipeline")), "build-index", *args,
                               "--out", str(tmp_path / name), "--json"], cwd=exported, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-1000:]
        assert json.loads(proc.stdout)["encoded_with"] == name
        return Retriever.load(tmp_path / name, load_encoder=False).index.reconstruct_n(0, 50)

    torch_vecs = build("torch-fp32", "--backend", "torch")
    assert np.allclose(build("onnx-fp32", "--backend", "onnx", "--precision", "fp32"), torch_vecs, atol=1e-4)
    cos = (build("onnx-int8") * torch_vecs).sum(1)  # the default, since the demo exported the retriever
    assert cos.min() > 0.97, cos.min()
    # Products added later are encoded the way the index was built (int8 graph), not by torch.
    from retrieval.index import add_products

    catalog = pd.read_parquet(exported / "data/sample/catalog.parquet").head(3)
    update = add_products(tmp_path / "onnx-int8", catalog, show_progress=False)["updates"][-1]
    assert update["encoded_with"] == "onnx-int8" and update["replaced"] == 3


@pytest.mark.parametrize("args, needle", [
    (["export-onnx", "--retriever", "no/such/model", "--no-reranker"], "no trained retriever"),
    (["search", "sofa", "--backend", "gpu"], "unknown backend 'gpu'"),
    (["search", "sofa", "--precision", "int4"], "unknown precision 'int4'"),
    (["build-index", "--backend", "torch", "--precision", "int8"], "--precision int8 needs --backend onnx"),
    (["build-index", "--backend", "gpu"], "--backend must be one of auto, onnx, torch"),
])
def test_bad_onnx_arguments_are_one_line_errors(exported: Path, args: list[str], needle: str) -> None:
    from tests.test_cli_search import _assert_one_line_error, _run

    _assert_one_line_error(_run(*args, cwd=exported), needle)


def test_search_with_stale_export_is_one_line_error(exported: Path, tmp_path: Path) -> None:
    from tests.test_cli_search import _assert_one_line_error, _run

    stale = _retrained_copy(exported / "models/reranker", tmp_path / "reranker")
    _assert_one_line_error(_run("search", "sofa", "--backend", "onnx", "--reranker", str(stale), cwd=exported),
                           "re-run `pipeline export-onnx`")
