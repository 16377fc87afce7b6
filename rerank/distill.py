"""A distilled student reranker: a shallower copy of a trained teacher, trained to imitate it.

Why a student: the cross-encoder's cost grows with its depth and with the number of
candidates, and most of those candidates only need a coarse order (the cascade in
:mod:`pipeline.search` lets the student order all of them and the teacher only the top).

**Initialisation.** The student is the teacher's own encoder with fewer layers: its
embeddings, plus ``layers`` of its transformer layers, chosen ``spread`` (default: evenly
spaced, always the first and the *last*; for 2 of 6 layers 0 and 5, for 3 of 6 layers 0, 2
and 5, as DistilBERT's every-other-layer and the "shrink and fine-tune" students) or
``first`` (the bottom ``layers``). Why spread: the heads are copied from the teacher
(identical shapes: the width is unchanged), and they read the pair-pooled *last* hidden
states; keeping the teacher's last layer on top of the stack gives them the representation
they were trained on, while the first layers alone end in an intermediate representation the
heads have never seen. The teacher itself usually starts from the fine-tuned retriever, so
the student inherits the retriever's vocabulary knowledge the same way.

**Training data.** Exactly the lists the teacher trains on (:func:`rerank.data.build_examples`:
each training query's shown products plus sampled retriever candidates), with the teacher's
settings for them (from its manifest) unless overridden; every row is labelled by the
teacher's per-task log-probabilities, and the engagement labels stay for the weighted
engagement term (:class:`rerank.losses.DistillationLoss`). Batches, schedule, validation and
keep-best are the teacher's training loop (:func:`rerank.train.fit_module`).

The result is saved like any reranker (:meth:`MultiTaskCrossEncoder.save`, loaded by the same
loader), with the manifest naming its teacher (id and path).
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import fingerprint_frame, read_manifest, writes_output
from pipeline.core.errors import ArtifactError
from pipeline.core.runtime import DEFAULT_SEED, configure_training_threads, seed_everything
from pipeline.core.text import recorded_text_fields
from pipeline.data import Dataset

LAYER_CHOICES = ("spread", "first")


def student_layers(teacher_layers: int, layers: int, choice: str = "spread") -> list[int]:
    """The teacher layer indices a student of ``layers`` layers is built from (see module doc)."""
    if choice not in LAYER_CHOICES:
        raise ValueError(f"unknown layer choice {choice!r}; choose one of {', '.join(LAYER_CHOICES)}")
    if not 1 <= layers <= teacher_layers - 1:
        raise ValueError(f"--layers {layers} is out of range: the teacher has {teacher_layers} layers, "
                         f"so a student has 1..{teacher_layers - 1}")
    if choice == "first":
        return list(range(layers))
    if layers == 1:
        return [teacher_layers - 1]
    return [int(round(i * (teacher_layers - 1) / (layers - 1))) for i in range(layers)]


def teacher_depth(teacher_dir: str | os.PathLike[str]) -> int:
    """The teacher's encoder depth, read from its files before any weights load (so a bad
    ``--layers`` fails fast); a folder that is not a reranker is a one-line error."""
    from rerank.model import ENCODER_DIR, KIND

    path = Path(teacher_dir)
    if not (path / "manifest.json").is_file():
        raise ArtifactError(f"{path}: no trained reranker here (no manifest.json); train one with "
                            "`pipeline train-reranker`")
    read_manifest(path, kind=KIND)
    try:
        config = json.loads((path / ENCODER_DIR / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path / ENCODER_DIR / 'config.json'}: unreadable encoder config "
                            f"({str(exc).splitlines()[0] or type(exc).__name__})") from None


def build_student(teacher: Any, layers: int, choice: str = "spread") -> Any:
    """A student :class:`~rerank.model.MultiTaskCrossEncoder`: the teacher's embeddings and
    chosen layers, the teacher's tokenizer and head configuration, and every head tensor
    whose shape matches copied from the teacher's heads."""
    from rerank.model import HeadConfig, MultiTaskCrossEncoder

    keep = student_layers(int(teacher.encoder.config.num_hidden_layers), layers, choice)
    config = copy.deepcopy(teacher.encoder.config)
    config.num_hidden_layers = len(keep)
    encoder = type(teacher.encoder)(config, add_pooling_layer=False)
    source = teacher.encoder.state_dict()
    state = {}
    for key in encoder.state_dict():
        if key.startswith("encoder.layer."):
            index, rest = key[len("encoder.layer."):].split(".", 1)
            key_in_teacher = f"encoder.layer.{keep[int(index)]}.{rest}"
        else:
            key_in_teacher = key
        state[key] = source[key_in_teacher].detach().clone()
    encoder.load_state_dict(state, strict=True)
    student = MultiTaskCrossEncoder(encoder, teacher.tokenizer, HeadConfig(**asdict(teacher.config)))
    own, theirs = student.head.state_dict(), teacher.head.state_dict()
    student.head.load_state_dict({k: theirs[k].detach().clone() if k in theirs and theirs[k].shape == v.shape else v
                                  for k, v in own.items()})
    student.student_layers = keep
    return student


def query_agreement(queries: Sequence[str], student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean over queries (with at least 3 candidates) of the Spearman correlation between two
    score arrays aligned with ``queries``: how far the student orders each list like the teacher.
    0 is chance, 1 the teacher's order."""
    from scipy.stats import spearmanr

    from rerank.fusion import rows_by_query

    values = []
    for idx in rows_by_query(queries).values():
        if len(idx) >= 3 and np.std(student[idx]) > 0 and np.std(teacher[idx]) > 0:
            values.append(float(spearmanr(student[idx], teacher[idx]).statistic))
    return float(np.mean(values)) if values else float("nan")


def _setting(value: Any, teacher_report: Mapping[str, Any], key: str, default: Any) -> Any:
    """An explicit setting, else the teacher's (so the student trains on the teacher's lists)."""
    if value is not None:
        return value
    recorded = teacher_report.get(key)
    return default if recorded is None else recorded


@writes_output("out_dir", "model folder")
def distill_reranker(dataset: Dataset, teacher_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                     layers: int = 2, layer_choice: str = "spread",
                     candidates: Mapping[str, Sequence[str]] | None = None, seed: int = DEFAULT_SEED,
                     epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-4,
                     head_learning_rate: float = 5e-4, negatives: int | None = None,
                     max_queries: int | None = None, max_valid_queries: int | None = None,
                     max_shown_per_query: int | None = None, list_weight: float = 1.0, mse_weight: float = 1.0,
                     engagement_weight: float = 0.5, temperature: float = 1.0, eval_batch_size: int = 128,
                     progress: bool = True) -> dict[str, Any]:
    """Distil the reranker at ``teacher_dir`` into a ``layers``-layer student saved at ``out_dir``.

    ``candidates``: retriever top-N per train/valid query (as for the teacher; None = catalog
    negatives). ``negatives``, ``max_queries``, ``max_shown_per_query``: None = the teacher's
    own training settings (its manifest report). ``list_weight``, ``mse_weight``,
    ``engagement_weight``, ``temperature``: :class:`rerank.losses.DistillationLoss`. The head
    learning rate is lower than a fresh model's because the heads start from the teacher's.
    Returns a report (``model`` = the student in memory; ``agreement`` = mean per-query
    Spearman correlation of student and teacher fused scores on the validation pairs).
    """
    import torch

    from rerank.fusion import fuse
    from rerank.losses import DistillationLoss
    from rerank.model import MultiTaskCrossEncoder
    from rerank.train import TrainModule, example_rows, fit_module, require_training_data, training_lists

    require_training_data(dataset, "distill-reranker")
    if Path(out_dir).resolve() == Path(teacher_dir).resolve():
        raise ValueError(f"--out {out_dir} is the teacher's folder; write the student elsewhere")
    depth = teacher_depth(teacher_dir)
    student_layers(depth, layers, layer_choice)  # refuse a bad layer count before loading weights
    teacher = MultiTaskCrossEncoder.load(teacher_dir)
    manifest = teacher.manifest
    report_in = manifest.get("report") or {}
    tasks = list(teacher.tasks)
    text_fields = recorded_text_fields(manifest)
    settings = {"negatives": _setting(negatives, report_in, "negatives", 4),
                "max_queries": _setting(max_queries, report_in, "train_queries", None),
                "max_shown_per_query": _setting(max_shown_per_query, report_in, "max_shown_per_query", None),
                "label_mode": report_in.get("label_mode") or "rate"}
    examples, valid_pairs, n_train, n_valid = training_lists(
        dataset, max_queries=settings["max_queries"], max_valid_queries=max_valid_queries, seed=seed,
        candidates=candidates, text_fields=text_fields, negatives=settings["negatives"],
        label_mode=settings["label_mode"], tasks=tasks, max_shown_per_query=settings["max_shown_per_query"])

    seed_everything(seed)
    threads = configure_training_threads()
    torch.manual_seed(seed)
    queries, texts = examples["query"].tolist(), examples["text"].tolist()
    teacher_logp = np.log(np.clip(teacher.predict(queries, texts, batch_size=eval_batch_size), 1e-30, 1.0))
    valid_teacher = fuse(teacher.predict(valid_pairs["query"].tolist(), valid_pairs["text"].tolist(),
                                         batch_size=eval_batch_size), tasks)
    student = build_student(teacher, layers, layer_choice)
    keep = student.student_layers
    del teacher
    rows = example_rows(examples, tasks)
    for row, target in zip(rows, teacher_logp):
        row["teacher"] = [float(v) for v in target]
    loss = DistillationLoss(tasks, list_weight=list_weight, mse_weight=mse_weight,
                            engagement_weight=engagement_weight, temperature=temperature)
    trainer, keep_best, seconds = fit_module(
        TrainModule(student, loss), rows, valid_pairs, out_dir, seed=seed, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, head_learning_rate=head_learning_rate, eval_batch_size=eval_batch_size,
        progress=progress)
    student.eval()
    student_valid = fuse(student.predict(valid_pairs["query"].tolist(), valid_pairs["text"].tolist(),
                                         batch_size=eval_batch_size), tasks)
    history, best = keep_best.validation_history(), keep_best.best_metrics()
    teacher_ref = {"id": manifest.get("id"), "path": str(teacher_dir)}
    base = (manifest.get("inputs") or {}).get("base_encoder") or {}
    student.base_encoder = {**base, "distilled_from": teacher_ref, "layers": keep}
    label_cols = [f"y_{t}" for t in tasks]
    data_fp = fingerprint_frame(examples.assign(**{f"teacher_{t}": teacher_logp[:, i] for i, t in enumerate(tasks)}),
                                ["query", "product_id", "source", *label_cols, "weight",
                                 *[f"teacher_{t}" for t in tasks]])
    report: dict[str, Any] = {
        "out_dir": str(out_dir), "teacher": teacher_ref, "tasks": tasks, "layers": layers,
        "layer_choice": layer_choice, "teacher_layers_used": keep, "teacher_depth": depth,
        "loss_weights": {"list": list_weight, "mse": mse_weight, "engagement": engagement_weight,
                         "temperature": temperature},
        **settings, "seed": seed, "threads": threads, "epochs": epochs, "best_epoch": keep_best.best_epoch,
        "train_queries": n_train, "valid_queries": n_valid, "train_examples": len(examples),
        "valid_pairs": len(valid_pairs), "steps": trainer.state.global_step, "train_seconds": round(seconds, 1),
        "agreement": round(query_agreement(valid_pairs["query"].tolist(), student_valid, valid_teacher), 4),
        "validation": best, "history": history,
    }
    saved = student.save(out_dir, seed=seed, data_fingerprint=data_fp, text_fields=text_fields, teacher=teacher_ref,
                         report={k: v for k, v in report.items() if k != "history"})
    report["manifest_id"] = saved["id"]
    report["model"] = student
    return report


__all__ = ["LAYER_CHOICES", "build_student", "distill_reranker", "query_agreement", "student_layers",
           "teacher_depth"]
