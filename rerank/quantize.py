"""int8 inference path: PyTorch dynamic quantisation of every Linear layer.

Why dynamic quantisation: it needs no calibration data, keeps the model a normal
``nn.Module`` (same ``predict``), and on CPU the BERT Linear layers dominate the cost.
Weights are stored int8, activations are quantised on the fly per batch. We measure the
ranking cost (NDCG@10 against fp32) in tests and in ``compare-rerankers``.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Quantise the encoder's Linear layers to int8 (per-channel weights), in place; eval mode.

    Only the encoder: it is >99 % of the compute, while the tiny heads multiply
    probabilities along the funnel and would compound their rounding error for no speed gain.
    Per-channel weight scales keep the ranking much closer to fp32 than per-tensor ones.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model.eval()
    with warnings.catch_warnings():
        # torch marks torch.ao.quantization as deprecated in favour of torchao; it still works
        # and torchao is not installed here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        target = getattr(model, "encoder", model)
        quantize_dynamic(target, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    model.quantized = True
    return model
