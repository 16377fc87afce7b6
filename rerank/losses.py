"""The multi-task loss: weighted per-task binary cross-entropy on log-probabilities.

Why on log-probabilities rather than logits: with funnel heads the model's output for
purchase is ``log p(click) + log p(cart|click) + log p(purchase|cart)``; there is no single
logit to hand to ``BCEWithLogits``. We compute ``log(1 - p)`` from ``log p`` with the
numerically stable ``log1mexp`` so tiny purchase probabilities never underflow to log(0).

Labels may be soft (engagement *rates*) with per-example weights (impressions): then the
loss is the exact binomial log-likelihood of the observed counts, up to a constant.

The per-task losses are combined either with fixed weights or with learned homoscedastic
uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): ``Σ exp(-s_t)·L_t + s_t`` with a
learned ``s_t`` per task, so tasks on very different loss scales balance themselves.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_LOG_HALF = -math.log(2.0)


def log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(logp))`` for ``logp <= 0``, stable at both ends (Mächler 2012)."""
    x = logp.clamp(max=-1e-7)
    return torch.where(x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def weighted_bce(logp: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean binary cross-entropy given log-probabilities (soft targets allowed)."""
    nll = -(target * logp + (1.0 - target) * log1mexp(logp))
    return (nll * weight).sum() / weight.sum().clamp(min=1e-12)


class MultiTaskLoss(nn.Module):
    """Per-task BCE combined by fixed weights or learned uncertainty weighting.

    ``forward`` returns ``(total, per_task)`` so the trainer can log each task's running loss.
    """

    def __init__(self, tasks: Sequence[str], task_weights: Sequence[float] | None = None,
                 uncertainty: bool = False) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        weights = list(task_weights) if task_weights is not None else [1.0] * len(self.tasks)
        if len(weights) != len(self.tasks):
            raise ValueError(f"{len(weights)} task weights for {len(self.tasks)} tasks")
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32))
        self.uncertainty = uncertainty
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if uncertainty else None

    def forward(self, logp: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_task = torch.stack([weighted_bce(logp[:, t], labels[:, t], weights) for t in range(len(self.tasks))])
        if self.log_vars is not None:
            total = (torch.exp(-self.log_vars) * per_task * self.task_weights + self.log_vars).sum()
        else:
            total = (per_task * self.task_weights).sum()
        return total, per_task.detach()
