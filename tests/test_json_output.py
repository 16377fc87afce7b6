"""Every command that takes ``--json`` writes exactly one JSON document on stdout and nothing else:
progress bars, log lines and notes belong on stderr, so ``pipeline X --json | jq`` always works.

The commands are found by walking the CLI itself, and the test fails when one of them has no
recipe below: a new ``--json`` command is covered (or explicitly excused) from the start.
Each runs as a real subprocess, because the pollution this guards against (trainer log dicts,
third-party prints) only shows on a real stdout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Commands that need only the tiny sample world. Placeholders: {data} (the world), {tmp}.
LIGHT: dict[str, tuple[str, ...]] = {
    "config show": (),
    "sample-data": ("--out", "{tmp}/world", "--products", "120", "--queries", "20"),
    "simulate-engagement": ("--qrels", "{data}/qrels.parquet", "--catalog", "{data}/catalog.parquet",
                            "--out", "{tmp}/engagement.parquet"),
    "validate": ("{data}",),
    "estimate-propensity": ("--log", "{data}/positions.parquet", "--max-position", "5"),
}

#: Commands that load or train models, run in the quick demo's workdir (its artefacts at the
#: default relative paths) with the smallest budgets they accept. {work}: that workdir; {tmp}:
#: a scratch folder holding a copy of the demo's index and a few extra products.
HEAVY: dict[str, tuple[str, ...]] = {
    "demo": ("--quick", "--workdir", "{work}"),  # run once by conftest's demo_run, which parses its stdout
    "train-retriever": ("--data", "data/sample", "--out", "{tmp}/retriever", "--epochs", "1", "--max-rows", "16",
                        "--batch-size", "8"),
    "train-reranker": ("--data", "data/sample", "--out", "{tmp}/reranker", "--epochs", "1", "--max-queries", "2",
                       "--max-shown", "4", "--negatives", "1", "--batch-size", "16"),
    "distill-reranker": ("--data", "data/sample", "--teacher", "models/reranker", "--layers", "1", "--out",
                         "{tmp}/reranker-small", "--epochs", "1", "--max-queries", "2", "--negatives", "1", "--no-export"),
    "adapt-lm": ("--data", "data/sample", "--out", "{tmp}/domain-bert", "--max-steps", "2", "--batch-size", "8",
                 "--max-length", "32"),
    "compare-rerankers": ("--data", "data/sample", "--out", "{tmp}/compare", "--index", "indexes/default",
                          "--retriever", "models/retriever", "--variants", "mmoe_funnel", "--epochs", "1",
                          "--train-queries", "2", "--valid-queries", "2", "--test-queries", "2", "--max-shown", "2",
                          "--candidates", "5"),
    "build-index": ("--catalog", "data/sample/catalog.parquet", "--out", "{tmp}/built"),
    "index add": ("--catalog", "{tmp}/extra.parquet", "--index", "{tmp}/index"),
    "index remove": ("{first_product}", "--index", "{tmp}/index"),
    "index compact": ("--index", "{tmp}/index"),
    "index info": ("--index", "indexes/default"),
    "index fit-hybrid": ("--data", "data/sample", "--index", "{tmp}/index"),
    "search": ("comfy couch",),
    "score-logs": ("--input", "data/sample/query_log.parquet", "--output", "{tmp}/scored.parquet"),
    "export-onnx": ("--retriever", "{tmp}/models/retriever", "--reranker", "{tmp}/models/reranker"),
    "evaluate": ("--data", "data/sample", "--systems", "bm25,dense-fine-tuned,two-stage", "--candidates", "5"),
}

#: Commands with --json whose JSON output another test already parses, or that cannot run in
#: a test, each with the reason. Keep it short.
CANNOT_RUN: dict[str, str] = {
    "fit": "tests/test_fit.py runs `pipeline fit --json` end to end and json.loads its stdout; a second fit here "
           "would add minutes of training for the same check",
}


def json_commands() -> set[str]:
    """Every command of the CLI (subcommands as "group command") that has a --json option."""
    import typer.main

    from pipeline.cli import app

    found: set[str] = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        if any("--json" in getattr(param, "opts", ()) for param in command.params):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), ())
    return found


def run_json(command: str, args: tuple[str, ...], cwd: Path, **places: Any) -> Any:
    """Run `pipeline <command> <args> --json`; return the parsed stdout, which must be one JSON
    document and nothing else (json.loads refuses anything before or after it)."""
    argv = [sys.executable, "-m", "pipeline", *command.split(), *(a.format(**places) for a in args), "--json"]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return parse_result(proc)


def parse_result(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON document ({exc}):\n{proc.stdout[:2000]}")


def test_every_json_command_has_a_recipe() -> None:
    """A command with --json and no recipe here fails: add it to LIGHT or HEAVY (or, with a
    reason, CANNOT_RUN)."""
    covered = set(LIGHT) | set(HEAVY) | set(CANNOT_RUN)
    assert json_commands() == covered
    assert not (set(LIGHT) & set(HEAVY)) and not (set(CANNOT_RUN) & (set(LIGHT) | set(HEAVY)))


@pytest.mark.parametrize("command", sorted(LIGHT))
def test_light_command_prints_only_json(command: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    run_json(command, LIGHT[command], tmp_path, data=tiny_data_dir, tmp=tmp_path)


@pytest.fixture(scope="module")
def demo_workdir(demo_run: tuple[Path, dict]) -> Path:
    """The session's quick demo (tests/conftest.py ``demo_run``: `pipeline demo --quick --json`,
    whose stdout the fixture parses as one JSON document): its trained models, index, data
    and query log are what every other heavy command runs on."""
    return demo_run[0]


def _scratch(args: tuple[str, ...], work: Path, tmp: Path) -> str:
    """Copies of the demo's index and models for the commands that change them (as their
    arguments ask), a few extra products to add; returns a product id to remove."""
    wanted = " ".join(args)
    if "{tmp}/index" in wanted:
        shutil.copytree(work / "indexes/default", tmp / "index")
    if "{tmp}/models" in wanted:
        for name in ("retriever", "reranker"):
            shutil.copytree(work / "models" / name, tmp / "models" / name, ignore=shutil.ignore_patterns("onnx"))
    catalog = pd.read_parquet(work / "data/sample/catalog.parquet")
    catalog.head(3).assign(product_id=lambda f: f["product_id"] + "-new").to_parquet(tmp / "extra.parquet")
    return str(catalog["product_id"].iloc[0])


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(HEAVY))
def test_heavy_command_prints_only_json(command: str, demo_workdir: Path, tmp_path: Path) -> None:
    work = demo_workdir
    if command == "demo":
        return  # the demo_run fixture ran it with --json and parsed its stdout
    first_product = _scratch(HEAVY[command], work, tmp_path)
    run_json(command, HEAVY[command], work, tmp=tmp_path, work=work, first_product=first_product)
