"""The multi-task loss: per task, a pointwise binary cross-entropy and/or a listwise softmax
cross-entropy over each query's list, both on log-probabilities.

Why on log-probabilities rather than logits: with funnel heads the model's output for
purchase is ``log p(click) + log p(cart|click) + log p(purchase|cart)``; there is no single
logit to hand to ``BCEWithLogits``. We compute ``log(1 - p)`` from ``log p`` with the
numerically stable ``log1mexp`` so tiny purchase probabilities never underflow to log(0).

Labels may be soft (engagement *rates*) with per-example weights (impressions): then the
loss is the exact binomial log-likelihood of the observed counts, up to a constant.

Why a listwise term: the pointwise likelihood is minimised by predicting each query's base
rate, and on engagement logs that is most of what it can explain, so a model trained on it
alone barely orders the products *within* a query, which is the reranker's whole job. The
listwise term (ListNet, Cao et al. ICML 2007, as in sentence-transformers' ``ListNetLoss``)
compares the products of one query directly. The pointwise term stays next to it so the
probabilities remain calibrated: ``loss_t = λ_rank·listwise_t + λ_point·pointwise_t``.

Why an optional prior term: a cross-encoder started from bi-encoder weights reads the pair
jointly, which at first orders a query's candidates worse than the retriever it reranks, and
noisy engagement on a few hundred queries is slow to teach it back. The prior term (ListNet
towards ``softmax(prior / τ)``, the retriever's similarity over the same list; weight
``prior_weight``) distils the retriever's order into every task on every candidate, labelled
or not, and keeps the model close to what the retriever knew on queries unlike the training
ones; the engagement terms then move it where the logs disagree.

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


OBJECTIVES = ("pointwise", "listwise", "both")


def listwise_softmax_ce(scores: torch.Tensor, gains: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """ListNet loss: mean over query groups of the cross-entropy between the softmax of the
    scores within the group and the target distribution ``gains / sum(gains)``.

    ``scores`` (n,) are log-probabilities, so the softmax is ``p_i / Σ_j p_j``: the model's
    share of the group's engagement, matched against the observed share. Groups whose gains
    are all zero say nothing about order for this task and are skipped (a batch with none
    gives a zero that still carries the graph). Unlike sentence-transformers, whose target is
    ``softmax(labels)``, the target here is the normalised gain: engagement rates lie in
    [0, 1], where a softmax would be nearly uniform and hide the order.
    """
    _, local = torch.unique(groups, return_inverse=True)
    n_groups = int(local.max()) + 1 if len(local) else 0
    sizes = torch.bincount(local, minlength=n_groups)
    slot = torch.zeros_like(local)
    order = torch.argsort(local, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot[order] = torch.arange(len(local), device=local.device) - starts.repeat_interleave(sizes)
    width = int(sizes.max()) if n_groups else 0
    score_mat = torch.full((n_groups, width), -1e16, dtype=scores.dtype, device=scores.device)
    gain_mat = torch.zeros((n_groups, width), dtype=scores.dtype, device=scores.device)
    score_mat[local, slot] = scores
    gain_mat[local, slot] = gains.to(scores.dtype).clamp(min=0.0)
    total = gain_mat.sum(1)
    has_positive = total > 0
    if not bool(has_positive.any()):
        return scores.sum() * 0.0
    target = gain_mat[has_positive] / total[has_positive, None]
    log_softmax = torch.log_softmax(score_mat[has_positive], dim=1)
    return -(target * log_softmax).sum(1).mean()


class MultiTaskLoss(nn.Module):
    """Per-task pointwise BCE and/or listwise ListNet, combined across tasks by fixed weights
    or learned uncertainty weighting.

    ``objective``: ``"pointwise"`` (BCE only, ``groups`` unused), ``"listwise"`` (ListNet
    only) or ``"both"`` (``rank_weight·listwise + point_weight·pointwise`` per task).
    ``forward`` returns ``(total, per_task)`` so the trainer can log each task's running loss.
    """

    def __init__(self, tasks: Sequence[str], task_weights: Sequence[float] | None = None,
                 uncertainty: bool = False, objective: str = "pointwise", rank_weight: float = 1.0,
                 point_weight: float = 1.0, prior_weight: float = 0.0, prior_temperature: float = 0.05) -> None:
        super().__init__()
        if prior_weight < 0 or prior_temperature <= 0:
            raise ValueError("prior_weight must be >= 0 and prior_temperature > 0")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        self.tasks = tuple(tasks)
        self.objective = objective
        self.rank_weight = float(rank_weight) if objective != "pointwise" else 0.0
        self.point_weight = float(point_weight) if objective != "listwise" else 0.0
        weights = list(task_weights) if task_weights is not None else [1.0] * len(self.tasks)
        if len(weights) != len(self.tasks):
            raise ValueError(f"{len(weights)} task weights for {len(self.tasks)} tasks")
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32))
        self.prior_weight = float(prior_weight)
        self.prior_temperature = float(prior_temperature)
        self.uncertainty = uncertainty
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if uncertainty else None

    def task_loss(self, logp: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  groups: torch.Tensor | None) -> torch.Tensor:
        """One task's engagement loss, pointwise and/or listwise (1-D inputs)."""
        loss = logp.sum() * 0.0
        if self.point_weight:
            loss = loss + self.point_weight * weighted_bce(logp, labels, weights)
        if self.rank_weight:
            if groups is None:
                raise ValueError(f"objective {self.objective!r} needs query groups in the batch")
            loss = loss + self.rank_weight * listwise_softmax_ce(logp, labels, groups)
        return loss

    def _prior_term(self, logp: torch.Tensor, groups: torch.Tensor | None,
                    prior: torch.Tensor | None) -> torch.Tensor:
        """ListNet towards the softmax of the retriever's similarity (0 without a prior)."""
        if prior is None:
            return logp.sum() * 0.0
        if groups is None:
            raise ValueError("the prior term needs query groups in the batch")
        target = torch.exp((prior - prior.max()) / self.prior_temperature)
        return self.prior_weight * listwise_softmax_ce(logp, target, groups)

    def forward(self, logp: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                groups: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                log_examination: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``log_examination`` (n,), from :class:`rerank.pal.PositionTower`, is added to every
        task's log-probability in the engagement terms only: the logs observed examined
        engagement, the prior term is about relevance."""
        observed = logp if log_examination is None else logp + log_examination[:, None]
        per_task = torch.stack([self.task_loss(observed[:, t], labels[:, t], weights, groups)
                                + (self._prior_term(logp[:, t], groups, prior) if self.prior_weight else 0.0)
                                for t in range(len(self.tasks))])
        if self.log_vars is not None:
            total = (torch.exp(-self.log_vars) * per_task * self.task_weights + self.log_vars).sum()
        else:
            total = (per_task * self.task_weights).sum()
        return total, per_task.detach()


def task_logits(logp: torch.Tensor) -> torch.Tensor:
    """Each task's own logit ``log p - log(1 - p)`` from log-probabilities.

    Why not the heads' raw outputs: with funnel heads those are the *conditional* factors
    (cart given click, ...), while a distilled student must match the teacher's unconditional
    per-task probabilities, whatever its head mode; this logit is that probability on an
    unbounded scale, where a squared error weighs small and large probabilities alike.
    """
    return logp - log1mexp(logp)


class DistillationLoss(nn.Module):
    """Per task: a listwise term towards the teacher's order within each query's list, a
    squared error on the task logits, and (weighted) the engagement loss of :class:`MultiTaskLoss`.

    ``loss_t = λ_list·τ²·CE(softmax(teacher_t/τ), softmax(student_t/τ)) + λ_mse·MSE(logit_s, logit_t)
    + λ_eng·engagement_t``, on log-probabilities ``log p_t`` (scores of the list softmax,
    as in :func:`listwise_softmax_ce`). The cross-entropy is the KL divergence up to the
    target's entropy (a constant), and ``τ²`` keeps its gradient scale independent of the
    temperature (Hinton et al. 2015). Why both terms: the listwise one teaches what the
    reranker is for, the order within a query; the squared error keeps the student's
    probabilities on the teacher's scale, which the first-stage blend and the ``p_<task>``
    outputs read. Why keep the engagement term: the teacher is itself a noisy fit of a few
    hundred queries, and the logs can correct the student where the teacher is wrong.
    ``forward`` has the trainer's signature plus ``teacher`` (n, T) log-probabilities.
    """

    def __init__(self, tasks: Sequence[str], task_weights: Sequence[float] | None = None, *,
                 list_weight: float = 1.0, mse_weight: float = 1.0, engagement_weight: float = 0.5,
                 temperature: float = 1.0, objective: str = "both") -> None:
        super().__init__()
        if min(list_weight, mse_weight, engagement_weight) < 0 or temperature <= 0:
            raise ValueError("distillation weights must be >= 0 and the temperature > 0")
        self.tasks = tuple(tasks)
        self.engagement = MultiTaskLoss(tasks, task_weights, objective=objective)
        self.list_weight, self.mse_weight = float(list_weight), float(mse_weight)
        self.engagement_weight, self.temperature = float(engagement_weight), float(temperature)

    def forward(self, logp: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                groups: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                log_examination: torch.Tensor | None = None,
                teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if teacher is None or groups is None:
            raise ValueError("distillation needs the teacher's log-probabilities and query groups in the batch")
        tau = self.temperature
        per_task = []
        for t in range(len(self.tasks)):
            target = torch.exp((teacher[:, t] - teacher[:, t].max()) / tau)  # normalised per query below
            loss = self.list_weight * tau ** 2 * listwise_softmax_ce(logp[:, t] / tau, target, groups)
            loss = loss + self.mse_weight * torch.mean((task_logits(logp[:, t]) - task_logits(teacher[:, t])) ** 2)
            if self.engagement_weight:
                loss = loss + self.engagement_weight * self.engagement.task_loss(logp[:, t], labels[:, t], weights,
                                                                                 groups)
            per_task.append(loss)
        stacked = torch.stack(per_task)
        return (stacked * self.engagement.task_weights).sum(), stacked.detach()
