"""PAL: position bias as a tower that exists only during training (Guo et al., RecSys 2019).

Why a tower rather than reweighting: inverse-propensity weights need the propensities first
(a separate fit, :mod:`rerank.propensity`) and blow up the variance of clicks at deep
positions. PAL instead factorises what the log observed,

    P(engaged | q, d, position) = P(examined | position) * P(engaged | q, d, examined),

and learns both factors jointly: the cross-encoder's task probabilities play the second
factor, this tower the first. At serving time the tower is dropped, so the reranker scores
relevance as if every product had been examined. Carts and purchases need a click, so the
same examination factor multiplies every task of the funnel.

Rows that were never shown (sampled retriever negatives) have no position; they are
treated as examined (factor 1), which is how the rest of training already reads them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class PositionTower(nn.Module):
    """log P(examined | position) from the (possibly fractional, mean) shown position.

    A small MLP on log(position): examination falls off smoothly with rank, and a mean
    position such as 3.4 lies between slots, so a continuous input fits engagement logs
    better than one embedding per slot.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(n,) positions, NaN where never shown -> (n,) log examination (0 where NaN)."""
        known = torch.isfinite(positions)
        safe = torch.where(known, positions, torch.ones_like(positions)).clamp(min=1.0)
        log_exam = F.logsigmoid(self.net(torch.log(safe).unsqueeze(1))).squeeze(1)
        return torch.where(known, log_exam, torch.zeros_like(log_exam))

    @torch.no_grad()
    def curve(self, max_position: int = 20) -> np.ndarray:
        """The learned examination per position 1..max_position, relative to position 1."""
        device = next(self.parameters()).device
        positions = torch.arange(1, max_position + 1, dtype=torch.float32, device=device)
        exam = torch.exp(self.forward(positions)).cpu().numpy()
        return exam / exam[0]


__all__ = ["PositionTower"]
