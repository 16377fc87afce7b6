"""Task heads that sit on the pooled cross-encoder output: MMoE, shared-bottom, single-task.

Why several: the issue asks to *compare* sharing schemes, so each is one small module with
the same contract — ``forward(pooled (B, H)) -> raw logits (B, T)`` — and the choice of how
those raw logits become probabilities (independent vs funnel) lives in :func:`log_probs`,
separately from the sharing scheme.

* **mmoe** (Ma et al., KDD 2018): ``n_experts`` feed-forward experts shared by all tasks,
  one softmax gate per task mixing them, one tower per task. Tasks that disagree (a click
  is cheap, a purchase is not) can lean on different experts instead of fighting over one
  shared layer.
* **shared_bottom**: one shared hidden layer, one tower per task (the classic baseline).
* **single**: one hidden layer, one tower; used with exactly one task.

Funnel heads (the default output mode): ``p(click) = σ(l1)``, ``p(cart) = p(click)·σ(l2)``,
``p(purchase) = p(cart)·σ(l3)``. The model therefore predicts *unconditional* probabilities
that are consistent with the funnel by construction, and each conditional factor is trained
on every impression (its gradient flows through the product), so the sparse purchase head
never sees only the handful of carted examples.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.core.tasks import TASKS  # the heads' output order; re-exported for rerank users

ARCHITECTURES = ("mmoe", "shared_bottom", "single")
HEAD_MODES = ("funnel", "independent")


def _mlp(dim_in: int, dim_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Dropout(dropout))


class _Towers(nn.Module):
    """One small tower per task: hidden -> ReLU -> 1 logit."""

    def __init__(self, dim_in: int, n_tasks: int, tower_dim: int, dropout: float) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(_mlp(dim_in, tower_dim, dropout), nn.Linear(tower_dim, 1)) for _ in range(n_tasks)
        )

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([tower(x) for tower, x in zip(self.towers, inputs)], dim=-1)


class MMoEHead(nn.Module):
    """Multi-gate mixture of experts: shared experts, a softmax gate and a tower per task."""

    def __init__(self, hidden: int, n_tasks: int, n_experts: int = 4, expert_dim: int = 128,
                 tower_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.experts = nn.ModuleList(_mlp(hidden, expert_dim, dropout) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Linear(hidden, n_experts) for _ in range(n_tasks))
        self.towers = _Towers(expert_dim, n_tasks, tower_dim, dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        experts = torch.stack([e(pooled) for e in self.experts], dim=1)  # (B, E, D)
        mixed = [torch.einsum("be,bed->bd", torch.softmax(g(pooled), dim=-1), experts) for g in self.gates]
        return self.towers(mixed)

    def gate_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, T, E) gate distributions — useful to see whether tasks use different experts."""
        return torch.stack([torch.softmax(g(pooled), dim=-1) for g in self.gates], dim=1)


class SharedBottomHead(nn.Module):
    """One shared hidden layer, then a tower per task (also the single-task head when T == 1)."""

    def __init__(self, hidden: int, n_tasks: int, expert_dim: int = 128, tower_dim: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.bottom = _mlp(hidden, expert_dim, dropout)
        self.towers = _Towers(expert_dim, n_tasks, tower_dim, dropout)
        self.n_tasks = n_tasks

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        shared = self.bottom(pooled)
        return self.towers([shared] * self.n_tasks)


def build_head(architecture: str, hidden: int, n_tasks: int, *, n_experts: int = 4,
               expert_dim: int = 128, tower_dim: int = 64, dropout: float = 0.1) -> nn.Module:
    """The head for an architecture name (validated here so every caller gets the same error)."""
    if architecture == "mmoe":
        return MMoEHead(hidden, n_tasks, n_experts, expert_dim, tower_dim, dropout)
    if architecture in ("shared_bottom", "single"):
        if architecture == "single" and n_tasks != 1:
            raise ValueError(f"architecture 'single' needs exactly one task, got {n_tasks}")
        return SharedBottomHead(hidden, n_tasks, expert_dim, tower_dim, dropout)
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


def log_probs(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Raw logits (B, T) -> log-probabilities (B, T), in log space for stability.

    ``funnel``: cumulative sum of log-sigmoids along the task axis (tasks are in funnel
    order), i.e. the product of conditional probabilities. ``independent``: log-sigmoid.
    """
    logp = nn.functional.logsigmoid(logits)
    if mode == "funnel":
        return torch.cumsum(logp, dim=-1)
    if mode == "independent":
        return logp
    raise ValueError(f"unknown heads mode {mode!r}; choose one of {', '.join(HEAD_MODES)}")
