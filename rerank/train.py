"""Multi-task reranker training on transformers' ``Trainer``.

Why a Trainer subclass rather than a loop: seeding (``seed`` + ``data_seed``), the shuffled
sampler, LR schedule with warm-up, gradient clipping, progress bar and logging are all the
Trainer's, well tested. We only add what is specific to us:

* :class:`RerankTrainer.compute_loss` — the weighted multi-task loss (:mod:`rerank.losses`),
  pointwise, listwise or both, keeping running per-task losses that are shown in the
  progress bar's log lines;
* :meth:`RerankTrainer.get_train_dataloader` — batches of whole query groups
  (:mod:`rerank.batching`) instead of shuffled rows, so a listwise loss sees each query's
  full list; seeded by ``data_seed`` like the Trainer's own sampler;
* :meth:`RerankTrainer.evaluate` — our ranking evaluator (:mod:`rerank.evaluation`) instead
  of a loss over an eval set, run once per epoch;
* :class:`KeepBestCallback` — remembers the weights of the best epoch (by the evaluator's
  primary metric) in memory and restores them at the end, so no checkpoints hit the disk.

Encoder and heads are fine-tuned end to end, with a higher learning rate for the freshly
initialised heads (they start from random, the encoder does not).
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from pipeline.core.artifacts import fingerprint_frame, scratch_directory, writes_output
from pipeline.data import Dataset
from pipeline.core.errors import DataError
from pipeline.core.runtime import DEFAULT_SEED, configure_training_threads, seed_everything, trainer_progress
from pipeline.core.text import PRODUCT_TEXT_FIELDS
from rerank import DEFAULT_MAX_LENGTH
from rerank.batching import GroupBatchSampler
from rerank.data import build_eval_pairs, build_examples
from rerank.evaluation import EngagementEvaluator
from rerank.heads import TASKS
from rerank.losses import OBJECTIVES, MultiTaskLoss
from rerank.model import HeadConfig, MultiTaskCrossEncoder
from rerank.pal import PositionTower


class TrainModule(nn.Module):
    """Model + loss (+ PAL's position tower) in one module, so the optimiser also sees the
    learned loss weights and the tower, while only ``model`` is saved."""

    def __init__(self, model: MultiTaskCrossEncoder, loss: MultiTaskLoss,
                 position_tower: PositionTower | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.position_tower = position_tower

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:  # Trainer never calls it; compute_loss does
        return self.model(**batch)


class _PairCollator:
    """Tokenises (query, text) pairs per batch: dynamic padding; labels, weights, query
    groups (and, when the rows have them, priors, positions and teacher targets) as tensors."""

    def __init__(self, model: MultiTaskCrossEncoder) -> None:
        self.model = model

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.model.tokenize([r["query"] for r in rows], [r["text"] for r in rows]))
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.float32)
        batch["weights"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
        batch["groups"] = torch.tensor([r["group"] for r in rows], dtype=torch.long)
        if "prior" in rows[0]:
            batch["prior"] = torch.tensor([r["prior"] for r in rows], dtype=torch.float32)
        if "position" in rows[0]:
            batch["positions"] = torch.tensor([r["position"] for r in rows], dtype=torch.float32)
        if "teacher" in rows[0]:
            batch["teacher"] = torch.tensor([r["teacher"] for r in rows], dtype=torch.float32)
        return batch


class RerankTrainer(Trainer):
    """``Trainer`` with the multi-task loss, query-group batches and the ranking evaluator."""

    def __init__(self, *args: Any, evaluator: EngagementEvaluator, tasks: Sequence[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        self.tasks = tuple(tasks)
        self._running = np.zeros(len(self.tasks))
        self._running_n = 0

    def get_train_dataloader(self) -> DataLoader:
        """Whole query groups per batch (about ``per_device_train_batch_size`` rows each).

        Built like the Trainer's own loader (collator, workers, ``accelerator.prepare``), but
        with a batch sampler: the base class only hands its own samplers over as batch
        samplers, and a row sampler would cut query lists apart.
        """
        dataset = self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        sampler = GroupBatchSampler.for_rows([row["group"] for row in dataset], self.args.per_device_train_batch_size,
                                             seed=seed)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        module = model.module if hasattr(model, "module") else model
        labels = inputs.pop("labels")
        weights = inputs.pop("weights")
        groups = inputs.pop("groups", None)
        prior = inputs.pop("prior", None)
        positions = inputs.pop("positions", None)
        teacher = inputs.pop("teacher", None)  # a teacher's log-probabilities (distillation, rerank.distill)
        logp = module.model(**inputs)
        log_exam = (module.position_tower(positions)
                    if module.position_tower is not None and positions is not None else None)
        total, per_task = module.loss(logp, labels, weights, groups, prior, log_exam,
                                      **({"teacher": teacher} if teacher is not None else {}))
        self._running += per_task.cpu().numpy()
        self._running_n += 1
        return (total, logp) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the running per-task losses since the last log line (shown by the progress bar)."""
        if "loss" in logs and self._running_n:
            for task, value in zip(self.tasks, self._running / self._running_n):
                logs[f"loss_{task}"] = round(float(value), 4)
            self._running[:] = 0.0
            self._running_n = 0
        super().log(logs, start_time)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Per-task NDCG@10 / AUC on the validation pairs (not a loss over an eval set)."""
        module = self.model.module if hasattr(self.model, "module") else self.model
        result = self.evaluator(module.model)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in result.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class KeepBestCallback(TrainerCallback):
    """Keep an in-memory copy of the weights with the best primary validation metric."""

    def __init__(self, metric: str = "eval_primary") -> None:
        self.metric = metric
        self.best: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: float | None = None
        self.history: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):  # noqa: ANN001
        value = (metrics or {}).get(self.metric)
        self.history.append({"epoch": round(float(state.epoch or 0.0), 3), **(metrics or {})})
        if value is None or np.isnan(value) or model is None:
            return
        if self.best is None or value > self.best:
            self.best, self.best_epoch = float(value), float(state.epoch or 0.0)
            self.best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.best_state is not None and model is not None:
            model.load_state_dict(self.best_state)

    def validation_history(self) -> list[dict[str, float]]:
        """Every evaluation's metrics, named without the Trainer's ``eval_`` prefix."""
        return [{k.removeprefix("eval_"): v for k, v in h.items()} for h in self.history]

    def best_metrics(self) -> dict[str, float]:
        """The kept epoch's metrics (the last evaluation's when no epoch was kept)."""
        history = self.validation_history()
        return next((h for h in history if h.get("epoch") == round(self.best_epoch or -1, 3)),
                    history[-1] if history else {})


def require_training_data(dataset: Dataset, command: str = "train-reranker") -> None:
    """Refuse, in one line naming ``command``, a dataset a reranker cannot be trained on: the
    labels come from the engagement log and the train/valid queries from the split column."""
    if dataset.engagement is None:
        raise DataError(f"{command} needs an engagement log (engagement.parquet or --engagement)")
    if dataset.queries is None:
        raise DataError(f"{command} needs a queries table with a split column (queries.parquet or --queries)")


DEBIAS_MODES = ("none", "ipw", "pal")
#: How a report names the starting encoder when none was given (the bundled MiniLM).
BUNDLED_ENCODER = "bundled all-MiniLM-L6-v2"


def _examination(propensities: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """Position -> examination probability, from clipped inverse-propensity weights."""
    from rerank.propensity import ipw_weights

    theta = np.asarray(propensities, dtype=np.float64)
    return lambda positions: 1.0 / ipw_weights(positions, theta)


def pick_queries(queries: list[str], limit: int | None, seed: int) -> list[str]:
    """A seeded subsample of ``limit`` queries, in their original order (all if no limit)."""
    if limit is None or limit >= len(queries):
        return list(queries)
    rng = np.random.default_rng(seed)
    return [queries[i] for i in sorted(rng.choice(len(queries), size=limit, replace=False))]


class TrainingLists(NamedTuple):
    """What a trainer learns from and validates on (:func:`training_lists`)."""

    examples: Any
    valid_pairs: Any
    train_queries: int
    valid_queries: int


def training_lists(dataset: Dataset, *, max_queries: int | None, max_valid_queries: int | None, seed: int,
                   candidates: Mapping[str, Sequence[str]] | None, text_fields: Sequence[str],
                   **example_options: Any) -> TrainingLists:
    """The query-grouped training examples and the validation pairs, drawn the one way every
    trainer (the reranker, its distilled student) draws them: a seeded subsample of train and
    valid queries, lists from :func:`rerank.data.build_examples` (``example_options``:
    negatives, label mode, tasks, shown-row cap, examination), pairs from
    :func:`rerank.data.build_eval_pairs`. Missing train or valid queries are one-line errors.
    The query counts go into the trained model's report."""
    train_q = pick_queries(dataset.split_queries("train"), max_queries, seed)
    valid_q = pick_queries(dataset.split_queries("valid"), max_valid_queries, seed)
    if not train_q:
        raise DataError("queries: no rows with split == 'train'")
    examples = build_examples(dataset.engagement, dataset.catalog, train_q, candidates=candidates, seed=seed,
                              text_fields=text_fields, **example_options)
    valid_pairs = build_eval_pairs(dataset.engagement, dataset.catalog, valid_q, candidates=candidates,
                                   text_fields=text_fields)
    if valid_pairs.empty:
        raise DataError("queries: no validation pairs (no split == 'valid' queries with engagement)")
    return TrainingLists(examples, valid_pairs, len(train_q), len(valid_q))


def example_rows(examples: Any, tasks: Sequence[str]) -> list[dict[str, Any]]:
    """The trainer's rows (query, text, per-task labels, weight, group) from
    :func:`rerank.data.build_examples`' frame; callers add their own extra fields per row."""
    label_cols = [f"y_{t}" for t in tasks]
    return [{"query": q, "text": t, "labels": list(map(float, y)), "weight": float(w), "group": int(g)}
            for q, t, y, w, g in zip(examples["query"], examples["text"], examples[label_cols].to_numpy(),
                                     examples["weight"], examples["group"])]


def fit_module(module: TrainModule, train_rows: list[dict[str, Any]], valid_pairs: Any,
               out_dir: str | os.PathLike[str], *, seed: int, epochs: int, batch_size: int, learning_rate: float,
               head_learning_rate: float, eval_batch_size: int = 128,
               progress: bool = True) -> tuple[RerankTrainer, KeepBestCallback, float]:
    """Train ``module`` (model + loss) with :class:`RerankTrainer`: whole-query batches,
    validation each epoch, best epoch restored. Returns the trainer, the keep-best callback
    and the training seconds.

    Why one function for every training run (engagement training, distillation): the
    optimiser groups, schedule, seeding and keep-best rule are part of what makes two runs
    comparable, so they are written once. The encoder gets ``learning_rate``; the heads, the
    loss's own parameters and any position tower get ``head_learning_rate``.
    """
    model, loss, tower = module.model, module.loss, module.position_tower
    head_params = list(model.head.parameters()) + list(loss.parameters())
    head_params += list(tower.parameters()) if tower is not None else []
    optimizer = torch.optim.AdamW([
        {"params": list(model.encoder.parameters()), "lr": learning_rate},
        {"params": head_params, "lr": head_learning_rate},
    ], weight_decay=0.01)
    steps_per_epoch = len(GroupBatchSampler.for_rows([r["group"] for r in train_rows], batch_size))
    keep_best = KeepBestCallback()
    started = time.time()
    with scratch_directory(out_dir) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp), per_device_train_batch_size=batch_size, num_train_epochs=epochs,
            learning_rate=learning_rate, warmup_steps=0.1, lr_scheduler_type="linear",
            logging_strategy="steps", logging_steps=max(1, steps_per_epoch // 5),
            eval_strategy="epoch", save_strategy="no", report_to="none",
            seed=seed, data_seed=seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress,
            remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
            max_grad_norm=1.0,
        )
        trainer = RerankTrainer(model=module, args=args, train_dataset=train_rows,
                                eval_dataset=valid_pairs.to_dict("records"),  # read by the evaluator
                                data_collator=_PairCollator(model), optimizers=(optimizer, None),
                                callbacks=[keep_best], evaluator=EngagementEvaluator(valid_pairs, batch_size=eval_batch_size),
                                tasks=list(model.tasks))
        trainer_progress(trainer, progress)
        trainer.train()
    return trainer, keep_best, time.time() - started


@writes_output("out_dir", "model folder")
def train_reranker(dataset: Dataset, out_dir: str | os.PathLike[str], *,
                   candidates: Mapping[str, Sequence[str]] | None = None,
                   encoder: str | os.PathLike[str] | None = None,
                   architecture: str = "mmoe", heads: str = "funnel", tasks: Sequence[str] = TASKS,
                   seed: int = DEFAULT_SEED, epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-4,
                   head_learning_rate: float = 1e-3, max_length: int = DEFAULT_MAX_LENGTH, label_mode: str = "rate",
                   negatives: int = 4, task_weights: Sequence[float] | None = None, uncertainty: bool = False,
                   n_experts: int = 4, max_queries: int | None = None, max_valid_queries: int | None = None,
                   max_shown_per_query: int | None = None, eval_batch_size: int = 128,
                   objective: str = "both", rank_weight: float = 1.0, point_weight: float = 1.0,
                   debias: str = "none", propensities: Sequence[float] | None = None,
                   prior: Callable[[Sequence[str], Sequence[str]], np.ndarray] | None = None,
                   prior_weight: float = 0.0, similarity_skip: bool = True, progress: bool = True,
                   text_fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> dict[str, Any]:
    """Train, validate per epoch, keep the best epoch, save to ``out_dir``; return a report.

    ``candidates``: retriever top-N per train/valid query (computed by the caller); sampled
    negatives and extra validation pairs come from them. ``None`` = random catalog negatives.
    ``objective``: ``pointwise`` | ``listwise`` | ``both`` (:class:`rerank.losses.MultiTaskLoss`,
    ``rank_weight`` = λ_rank, ``point_weight`` = λ_point); batches always hold whole queries.
    ``debias``: ``none`` | ``ipw`` (labels per examined impression, with ``propensities`` =
    examination probability per position 1..n, e.g. from :mod:`rerank.propensity`) |
    ``pal`` (a position tower learned jointly and dropped after training, :mod:`rerank.pal`;
    needs the engagement's mean ``position``).
    ``prior`` (queries, product ids) -> the retriever's similarity per pair, distilled with
    weight ``prior_weight`` (:class:`rerank.losses.MultiTaskLoss`); both or neither.
    ``similarity_skip``: add the pair's own similarity to every task logit
    (:class:`rerank.model.MultiTaskCrossEncoder`), so training refines relevance instead of
    replacing it; off only to measure what it buys.
    ``text_fields``: the catalog columns of the product text; recorded in the manifest, so
    every scorer builds the text this model was trained on.
    """
    require_training_data(dataset)
    if debias not in DEBIAS_MODES:
        raise ValueError(f"unknown debias mode {debias!r}; choose one of {', '.join(DEBIAS_MODES)}")
    if debias == "ipw" and propensities is None:
        raise ValueError("debias 'ipw' needs examination propensities per position")
    if debias == "pal" and "position" not in dataset.engagement.columns:
        raise DataError("--debias pal needs a 'position' column (mean shown position) in the engagement log")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if prior_weight and prior is None:
        raise ValueError("prior_weight > 0 needs a prior (the retriever's similarity; train against an index)")
    tasks = list(tasks)
    HeadConfig(tasks=tasks, architecture=architecture, heads=heads, n_experts=n_experts,
               max_length=max_length, similarity_skip=similarity_skip).validate()  # fail before any data or weights are loaded
    examples, valid_pairs, n_train, n_valid = training_lists(
        dataset, max_queries=max_queries, max_valid_queries=max_valid_queries, seed=seed, candidates=candidates,
        text_fields=text_fields, negatives=negatives, label_mode=label_mode, tasks=tasks,
        max_shown_per_query=max_shown_per_query,
        examination=_examination(propensities) if debias == "ipw" else None)

    seed_everything(seed)
    threads = configure_training_threads()
    torch.manual_seed(seed)
    model = MultiTaskCrossEncoder.from_encoder(encoder, tasks=tasks, architecture=architecture, heads=heads,
                                               n_experts=n_experts, max_length=max_length,
                                               similarity_skip=similarity_skip)
    loss = MultiTaskLoss(tasks, task_weights, uncertainty, objective=objective, rank_weight=rank_weight,
                         point_weight=point_weight, prior_weight=prior_weight)
    tower = PositionTower() if debias == "pal" else None
    module = TrainModule(model, loss, tower)
    label_cols = [f"y_{t}" for t in tasks]
    train_rows = example_rows(examples, tasks)
    if tower is not None:
        for row, position in zip(train_rows, examples["position"].to_numpy(dtype=np.float64)):
            row["position"] = float(position)
    if prior_weight:
        scores = np.asarray(prior(examples["query"].tolist(), examples["product_id"].astype(str).tolist()))
        for row, score in zip(train_rows, scores):
            row["prior"] = float(score)
    trainer, keep_best, train_seconds = fit_module(
        module, train_rows, valid_pairs, out_dir, seed=seed, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, head_learning_rate=head_learning_rate, eval_batch_size=eval_batch_size,
        progress=progress)
    model.eval()
    history, best = keep_best.validation_history(), keep_best.best_metrics()
    data_fp = fingerprint_frame(examples, ["query", "product_id", "source"] + label_cols + ["weight"])
    report: dict[str, Any] = {
        "out_dir": str(out_dir), "tasks": tasks, "architecture": architecture, "heads": heads,
        "label_mode": label_mode, "objective": objective, "debias": debias, "similarity_skip": similarity_skip,
        **({"propensities": [round(float(t), 4) for t in propensities]} if debias == "ipw" else {}),
        **({"pal_examination": [round(float(t), 4) for t in tower.curve()]} if tower is not None else {}),
        "loss_weights": {"rank": loss.rank_weight, "point": loss.point_weight, "prior": loss.prior_weight},
        "seed": seed, "threads": threads,
        "max_length": max_length, "negatives": negatives, "max_shown_per_query": max_shown_per_query,
        "epochs": epochs, "best_epoch": keep_best.best_epoch,
        "train_queries": n_train, "valid_queries": n_valid, "train_examples": len(examples),
        "train_skipped_rows": int(((examples["source"] == "shown") & (examples["clicks"] == 0)).sum()),
        "valid_pairs": len(valid_pairs), "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 1), "validation": best, "history": history,
        "encoder": str(encoder) if encoder else BUNDLED_ENCODER,
    }
    if uncertainty:
        report["learned_log_vars"] = [round(float(v), 4) for v in loss.log_vars.detach()]
    extra = {"loss.log_vars": loss.log_vars.detach()} if uncertainty else None
    manifest = model.save(out_dir, seed=seed, data_fingerprint=data_fp, extra_state=extra, text_fields=text_fields,
                          report={k: v for k, v in report.items() if k != "history"})
    report["manifest_id"] = manifest["id"]
    report["model"] = model
    return report


def public_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of a training report (drops the in-memory model)."""
    return {k: v for k, v in report.items() if k != "model"}


__all__ = ["train_reranker", "public_report", "example_rows", "fit_module", "require_training_data", "RerankTrainer",
           "KeepBestCallback", "TrainModule"]
