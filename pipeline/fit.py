"""`pipeline fit`: one command from a labelled or logged dataset to a working search.

Steps, each a real library call and each resumable (:mod:`pipeline.fit_state`): prepare the
data (load through the mapping, validate, simulate engagement from labels when there are no
logs, derive query splits when there are none, write the canonical dataset) -> fine-tune the
retriever -> export it to ONNX -> build the FAISS index with the int8 graph -> train the
multi-task reranker on the retriever's candidates and fit its blend on the valid split ->
evaluate every system on the test split -> export the reranker to ONNX.

Everything lands under the run directory at the demo's default relative paths
(``data/sample``, ``models/retriever``, ``models/reranker``, ``indexes/default``, ``runs/``),
so `pipeline search --index RUN/indexes/default` works on it and a plain `pipeline search`
run inside it does too. :func:`fit_models` is the part the demo shares: `pipeline demo`
is the sample world, these same training steps, and its showcase extras.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from pipeline.config import (DEFAULT_DATA_DIR, DEFAULT_INDEX_DIR, DEFAULT_RERANKER_DIR, DEFAULT_RETRIEVER_DIR,
                             DEFAULT_RUNS_DIR, DEFAULT_SEED)
from pipeline.core.artifacts import atomic_write_text, sha256_file, sha256_text
from pipeline.core.errors import ShoprankError
from pipeline.fit_state import FitSteps

EVALUATION_FILE = "evaluation.json"
#: Stage 2 against stage 1 on queries about product types no training query asked about
#: (the sample world's ``unseen`` split): a reranker that wins on test but loses here has
#: memorised the shop. Evaluated only when the dataset has such queries.
UNSEEN_FILE = "evaluation-unseen.json"
UNSEEN_SYSTEMS = ("dense-fine-tuned", "two-stage")


@dataclass(frozen=True, kw_only=True)
class FitBudget:
    """Training and evaluation budgets: the knobs that decide how long a fit takes."""

    retriever_epochs: int
    retriever_max_rows: int | None
    reranker_epochs: int
    reranker_max_queries: int | None
    reranker_max_shown: int | None
    reranker_negatives: int
    candidates: int
    eval_engagement_pairs: int
    reranker_objective: str = "both"


# Sized on 2 CPU cores, where training dominates: the retriever sees ~3-6 rows/s (hard
# negatives included) and the reranker ~15-30 pairs/s. QUICK keeps a run inside the test
# suite's time; FULL is the demo's default and a sensible first fit of a real shop.
QUICK = FitBudget(retriever_epochs=1, retriever_max_rows=96, reranker_epochs=1, reranker_max_queries=16,
                  reranker_max_shown=4, reranker_negatives=2, candidates=20, eval_engagement_pairs=300)
FULL = FitBudget(retriever_epochs=1, retriever_max_rows=1000, reranker_epochs=2, reranker_max_queries=None,
                 reranker_max_shown=8, reranker_negatives=3, candidates=50, eval_engagement_pairs=2000)
BUDGETS = {"quick": QUICK, "full": FULL}

#: The budget fields each step reads: a step is redone only when one of its own knobs changed.
_STEP_BUDGET = {
    "train retriever": ("retriever_epochs", "retriever_max_rows"),
    "train reranker": ("reranker_epochs", "reranker_max_queries", "reranker_max_shown", "reranker_negatives",
                       "candidates", "reranker_objective"),
    "evaluate": ("candidates", "eval_engagement_pairs"),
}


def training_budget(budget: FitBudget) -> dict[str, Any]:
    """The :class:`FitBudget` fields of ``budget`` (a subclass, e.g. the demo's, adds its own)."""
    return {f.name: getattr(budget, f.name) for f in fields(FitBudget)}


def resolve_budget(budget: str | FitBudget) -> FitBudget:
    """A budget by name (``quick`` / ``full``) or as given; an unknown name is a one-line error."""
    if isinstance(budget, FitBudget):
        return budget
    if budget not in BUDGETS:
        raise ShoprankError(f"unknown budget {budget!r}; --budget must be one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def run_paths(root: Path) -> dict[str, Path]:
    """Where each artefact of a run goes: the project's default relative paths under ``root``."""
    return {"data": root / DEFAULT_DATA_DIR, "retriever": root / DEFAULT_RETRIEVER_DIR,
            "index": root / DEFAULT_INDEX_DIR, "reranker": root / DEFAULT_RERANKER_DIR, "runs": root / DEFAULT_RUNS_DIR}


def dataset_id(data_dir: Path) -> str:
    """Content fingerprint of a canonical dataset directory (its data files, not its notes),
    what the training steps record as their data input."""
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix == ".parquet")
    return sha256_text(*(f"{p.name}:{sha256_file(p)}" for p in files))[:16]


class Fitted:
    """The run's trained retriever, loaded once when a step (or the caller) needs it."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self._retriever: Any = None

    def retriever(self) -> Any:
        """The index with the fine-tuned torch query encoder (what training and examples use)."""
        if self._retriever is None:
            from retrieval.encoders import load_encoder
            from retrieval.index import Retriever

            encoder = load_encoder(self.paths["retriever"], "torch")
            self._retriever = Retriever.load(self.paths["index"], encoder=encoder)
        return self._retriever


def fit_models(root: Path, dataset: Any, budget: FitBudget, *, steps: FitSteps, seed: int = DEFAULT_SEED,
               progress: bool = False) -> tuple[dict[str, Any], Fitted]:
    """Train, index, evaluate and export on a canonical dataset under ``root``; return the
    report (summaries, evaluation) and the loaded artefacts.

    The sequence the demo and `pipeline fit` share. Each step fingerprints the data, its
    budget fields, the seed and the ids of the artefacts it builds on.
    """
    from pipeline.blend import train_reranker_on_index
    from pipeline.evaluate import evaluate
    from pipeline.export import export_onnx
    from retrieval.encoders import load_encoder
    from pipeline.hybrid import fit_index_fusion
    from retrieval.index import build_index
    from retrieval.train import train_retriever

    paths = run_paths(root)
    paths["runs"].mkdir(parents=True, exist_ok=True)
    fitted = Fitted(paths)
    data = dataset_id(paths["data"])

    def inputs(step: str, **upstream: str | None) -> dict[str, Any]:
        knobs = {name: getattr(budget, name) for name in _STEP_BUDGET.get(step, ())}
        return {"data": data, "seed": seed, "budget": knobs, **upstream}

    def fit_retriever() -> dict[str, Any]:
        report = train_retriever(dataset, paths["retriever"], epochs=budget.retriever_epochs,
                                 max_rows=budget.retriever_max_rows, seed=seed, show_progress=progress)
        return {k: report.get(k) for k in ("model_id", "train_rows", "best_epoch", "train_seconds")}

    def index() -> dict[str, Any]:
        # Encoded by the int8 ONNX graph, as `pipeline build-index` does by default: faster than
        # torch fp32 at the same recall (benchmarks/encoding_quality.py).
        encoder = load_encoder(paths["retriever"], "torch")
        onnx_int8 = load_encoder(paths["retriever"], "onnx", "int8", model_id=encoder.model_id)
        report = build_index(dataset.catalog, onnx_int8, paths["index"], index_type="flat", show_progress=progress,
                             catalog_path=dataset.report["files"]["catalog"])
        out = {k: v for k, v in report.items() if isinstance(v, (int, float, str))}
        if dataset.split_queries("valid"):  # the hybrid fusion is chosen on valid, like every other fit
            fusion = fit_index_fusion(paths["index"], dataset, encoder=encoder)
            out["hybrid_fusion"] = f"{fusion['method']}:{fusion['weight']:g}"
        return out

    def fit_reranker() -> dict[str, Any]:
        # trained on the retriever's candidates; the blend with the retrieval score is then
        # fitted on the valid split and saved in the reranker's manifest
        report = train_reranker_on_index(
            dataset, paths["reranker"], retriever=fitted.retriever(), candidates=budget.candidates, seed=seed,
            epochs=budget.reranker_epochs, max_queries=budget.reranker_max_queries,
            max_shown_per_query=budget.reranker_max_shown, negatives=budget.reranker_negatives,
            objective=budget.reranker_objective, progress=progress)
        return {**{k: v for k, v in report.items() if isinstance(v, (int, float, str))}, "fusion": report.get("fusion")}

    def evaluation() -> None:
        report = evaluate(dataset=dataset, split="test", index_dir=paths["index"], reranker=paths["reranker"],
                          run_dir=paths["runs"] / "eval", candidates=budget.candidates, seed=seed,
                          max_engagement_pairs=budget.eval_engagement_pairs)
        # kept in its own file (key order intact) rather than in the state's summary
        atomic_write_text(paths["runs"] / EVALUATION_FILE, json.dumps(report, indent=2, default=str) + "\n")
        if dataset.split_queries("unseen"):
            unseen = evaluate(dataset=dataset, split="unseen", index_dir=paths["index"], reranker=paths["reranker"],
                              systems=UNSEEN_SYSTEMS, candidates=budget.candidates, seed=seed,
                              max_engagement_pairs=budget.eval_engagement_pairs)
            atomic_write_text(paths["runs"] / UNSEEN_FILE, json.dumps(unseen, indent=2, default=str) + "\n")
        else:
            (paths["runs"] / UNSEEN_FILE).unlink(missing_ok=True)

    retriever = steps.run("train retriever", inputs("train retriever"), paths["retriever"], fit_retriever)
    retriever_onnx = steps.run("export retriever (onnx)", {"retriever": steps.output("train retriever")},
                               paths["retriever"] / "onnx", lambda: export_onnx(paths["retriever"], None))
    steps.run("build index", inputs("build index", retriever=steps.output("train retriever"),
                                    onnx=steps.output("export retriever (onnx)")), paths["index"], index)
    reranker = steps.run("train reranker", inputs("train reranker", index=steps.output("build index")),
                         paths["reranker"], fit_reranker)
    steps.run("evaluate", inputs("evaluate", index=steps.output("build index"),
                                 reranker=steps.output("train reranker")), paths["runs"] / EVALUATION_FILE, evaluation)
    reranker_onnx = steps.run("export reranker (onnx)", {"reranker": steps.output("train reranker")},
                              paths["reranker"] / "onnx", lambda: export_onnx(None, paths["reranker"]))
    report = {
        "paths": {name: str(path) for name, path in paths.items()},
        "retriever": retriever, "reranker": {k: v for k, v in (reranker or {}).items() if k != "fusion"},
        "fusion": (reranker or {}).get("fusion"),
        "exports": {**(retriever_onnx or {}), **(reranker_onnx or {})},
        "evaluation": json.loads((paths["runs"] / EVALUATION_FILE).read_text(encoding="utf-8")),
    }
    if (paths["runs"] / UNSEEN_FILE).is_file():
        report["evaluation_unseen"] = json.loads((paths["runs"] / UNSEEN_FILE).read_text(encoding="utf-8"))
    return report, fitted


def _say(message: str) -> None:
    sys.stderr.write(f"[fit] {message}\n")
    sys.stderr.flush()


def run_fit(data: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] = ".", *,
            catalog: str | os.PathLike[str] | None = None, engagement: str | os.PathLike[str] | None = None,
            queries: str | os.PathLike[str] | None = None, qrels: str | os.PathLike[str] | None = None,
            mapping: str | os.PathLike[str] | None = None, budget: str | FitBudget = "full",
            seed: int = DEFAULT_SEED, progress: bool = False, resume: bool = True,
            say: Callable[[str], None] = _say) -> dict[str, Any]:
    """Fit the whole pipeline on a dataset (a directory and/or explicit files, read through
    ``mapping``) into the run directory ``out``; return the report.

    The data is validated before anything is written under ``out``. With ``resume`` (the
    default) a step whose inputs and output are unchanged since the last run is skipped.
    The run directory is locked for the whole fit: two fits into one directory would train
    over each other's models and records, so the second is refused in one line at once.
    """
    from pipeline.core.artifacts import claim_output
    from pipeline.data import dataset_paths, load_dataset
    from pipeline.fit_data import prepare_dataset, source_inputs

    chosen = resolve_budget(budget)
    started = time.perf_counter()
    files = dataset_paths(data, catalog=catalog, engagement=engagement, queries=queries, qrels=qrels)
    root = Path(out)
    paths = run_paths(root)
    # absolute: `--out .` names the current directory, whose lock goes beside it like any other's
    with claim_output(root.absolute(), f"fit run {root}"):
        steps = FitSteps(root, resume=resume, say=say)
        data_summary = steps.run("prepare data", source_inputs(files, mapping, seed), paths["data"],
                                 lambda: prepare_dataset(files, mapping, paths["data"], seed=seed))
        dataset = load_dataset(paths["data"])
        report, _ = fit_models(root, dataset, chosen, steps=steps, seed=seed, progress=progress)
    return {"out": str(root), "budget": budget if isinstance(budget, str) else "custom",
            "budget_fields": training_budget(chosen), "seed": seed, "data": data_summary, **report,
            "steps": steps.report, "seconds": round(time.perf_counter() - started, 1),
            "try": dataset.split_queries("test")[0]}


__all__ = ["BUDGETS", "EVALUATION_FILE", "FULL", "QUICK", "FitBudget", "Fitted", "dataset_id", "fit_models",
           "resolve_budget", "run_fit", "run_paths", "training_budget"]
