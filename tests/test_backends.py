"""What "auto" means for each stage (retrieval.encoders, rerank.loading): ONNX Runtime when the
model has an export, else torch; int8 on ONNX, fp32 on torch; impossible requests refused in
one line. Checked on bare folders (an export is recognised by its manifest), no models loaded."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import ShoprankError
from rerank.loading import choose_backend as reranker_backend
from retrieval.encoders import choose_backend as retriever_backend


@pytest.fixture()
def exported(tmp_path: Path) -> Path:
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "manifest.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("choose", [retriever_backend, reranker_backend])
def test_auto_follows_the_export(choose, exported: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert choose(exported) == ("onnx", "int8")
    assert choose(exported, precision="fp32") == ("onnx", "fp32")
    assert choose(tmp_path_factory.mktemp("bare")) == ("torch", "fp32")
    assert choose(None) == ("torch", "fp32")
    assert choose(exported, backend="torch") == ("torch", "fp32")


def test_torch_int8_is_a_reranker_mode_but_not_a_retriever_one(exported: Path) -> None:
    assert reranker_backend(exported, "torch", "int8") == ("torch", "int8")
    with pytest.raises(ShoprankError, match="--precision int8 needs --backend onnx"):
        retriever_backend(exported, "torch", "int8")


@pytest.mark.parametrize("choose", [retriever_backend, reranker_backend])
@pytest.mark.parametrize("backend, precision, needle", [
    ("gpu", "auto", "unknown backend 'gpu'; --backend must be one of auto, onnx, torch"),
    ("auto", "int4", "unknown precision 'int4'; --precision must be one of auto, fp32, int8"),
])
def test_unknown_choices_are_refused(choose, backend: str, precision: str, needle: str) -> None:
    with pytest.raises(ShoprankError, match=needle):
        choose(None, backend, precision)


def test_search_has_no_int8_flag_any_more() -> None:
    """--precision int8 is the one spelling; the old shorthand is a usage error."""
    out = subprocess.run([sys.executable, "-m", "pipeline", "search", "sofa", "--int8"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "--int8" in out.stderr
