"""The CLI's shell: fast --help, no heavy imports at import time, one-line errors."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_import_is_light() -> None:
    code = ("import sys, pipeline.cli; heavy = [m for m in ('torch', 'transformers', 'faiss', "
            "'sentence_transformers', 'pandas', 'onnxruntime') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command_fast() -> None:
    start = time.perf_counter()
    result = _run("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    from pipeline.cli import app
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert name in result.stdout
        assert (command.help or command.short_help or "").strip(), f"{name} has no help text"
    # Generous bound (process start included): the point is "no torch at import".
    assert elapsed < 3.0


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_broken_config_file_is_one_line(tmp_path) -> None:
    (tmp_path / "pipeline.toml").write_text("[search\nk = ", encoding="utf-8")
    result = _run("config", "show", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: pipeline.toml: invalid TOML")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_config_file_overrides_defaults(tmp_path) -> None:
    (tmp_path / "pipeline.toml").write_text('[config]\n', encoding="utf-8")
    result = _run("config", "show", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"config_file": "pipeline.toml"' in result.stdout


@pytest.mark.parametrize("text", ["ok"])
def test_atomic_directory_keeps_previous_on_failure(tmp_path, text: str) -> None:
    from pipeline.core.artifacts import atomic_directory

    target = tmp_path / "art"
    with atomic_directory(target) as tmp:
        (tmp / "f.txt").write_text(text)
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "f.txt").write_text("half-written")
            raise RuntimeError("killed")
    assert (target / "f.txt").read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_manifest_roundtrip_and_mismatch(tmp_path) -> None:
    from pipeline.core.artifacts import build_manifest, read_manifest, require_compatible, write_manifest
    from pipeline.core.errors import ArtifactError

    write_manifest(tmp_path, build_manifest("index", dim=384, model_id="abc"))
    manifest = read_manifest(tmp_path, kind="index")
    require_compatible("index", {"dim": 384}, manifest)
    with pytest.raises(ArtifactError, match="dim mismatch"):
        require_compatible("index", {"dim": 768}, manifest)
    with pytest.raises(ArtifactError, match="expected a model"):
        read_manifest(tmp_path, kind="model")


def test_config_show_and_file_use_flag_names(tmp_path) -> None:
    """pipeline.toml keys and `config show` use the names on the command line (index-type,
    json), not Python parameter names; the Python spelling is still accepted."""
    import json

    (tmp_path / "pipeline.toml").write_text('[build-index]\nindex-type = "hnsw"\n[index.add]\njson_out = true\n',
                                            encoding="utf-8")
    result = _run("config", "show", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)["effective"]
    assert effective["build-index"]["index-type"] == {"value": "hnsw", "source": "pipeline.toml"}
    assert effective["index add"]["json"] == {"value": True, "source": "pipeline.toml"}
    assert "json_out" not in effective["search"] and "json" in effective["search"]
