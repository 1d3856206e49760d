"""Pure-torch references for every kernel: the semantics the Triton kernels must reproduce.

Every kernel computes ``y = x @ W_hat^T + bias`` where ``W_hat`` is the format's dense weight
computed in fp32 and rounded once to the activation dtype, the products are accumulated in fp32,
and ``y`` is cast back to the activation dtype. For fp32 activations this is exactly
``F.linear(x, W_hat, bias)``. These functions are also the CPU path of the modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .quant_weight import PackedQuantWeight
from .sparse24 import Sparse24QuantWeight, Sparse24Weight


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x: [M, K]``, ``weight: [N, K]`` (any float dtype) → ``[M, N]`` in ``x.dtype``, fp32 accumulate."""
    w = weight.to(x.dtype)  # the rounding the kernels apply to W_hat
    if x.dtype == torch.float32:
        return F.linear(x, w, None if bias is None else bias.float())
    b = None if bias is None else bias.float()
    return F.linear(x.float(), w.float(), b).to(x.dtype)


def lowbit_matmul_ref(
    x: torch.Tensor, weight: PackedQuantWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of the A16Wn kernel: ``x: [M, K]`` → ``[M, N]``."""
    return linear_ref(x, weight.dequantize(torch.float32), bias)


def sparse24_matmul_ref(x: torch.Tensor, weight: Sparse24Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of the 2:4 kernel: ``x: [M, K]`` → ``[M, N]``."""
    return linear_ref(x, weight.to_dense(), bias)


def sparse24_quant_matmul_ref(
    x: torch.Tensor, weight: Sparse24QuantWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of the 2:4 + low-bit kernel: ``x: [M, K]`` → ``[M, N]``."""
    return linear_ref(x, weight.to_dense(torch.float32), bias)
