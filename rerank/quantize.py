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
    """Return ``model`` with its Linear layers replaced by int8 dynamic-quantised ones (eval mode)."""
    from torch.ao.quantization import quantize_dynamic

    model.eval()
    with warnings.catch_warnings():
        # torch marks torch.ao.quantization as deprecated in favour of torchao; it still works
        # and torchao is not installed here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    quantized.quantized = True
    return quantized
