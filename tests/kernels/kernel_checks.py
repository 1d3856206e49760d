"""What the kernel tests accept from a kernel against its torch reference.

Outputs are fp16 or bf16 and both sides accumulate in fp32, so they differ by accumulation order and by
where the scale enters (the decode kernels apply it once per group; the reference rounds every dequantized
weight first): the normwise relative error stays below ``1e-3`` (bf16, whose 8-bit mantissa rounds every
output and the reference's weights: ``1e-2``) and no element is off by more than ten times that of the
largest output, while a wrong code, position or scale moves outputs by their own size.
"""

from __future__ import annotations

import torch


def assert_near_reference(y: torch.Tensor, ref: torch.Tensor) -> None:
    """``y`` is the reference ``ref`` within the tolerance above (same dtype and shape, every value finite)."""
    assert y.dtype == ref.dtype and y.shape == ref.shape, (y.dtype, ref.dtype, y.shape, ref.shape)
    tol = 1e-2 if y.dtype == torch.bfloat16 else 1e-3
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all()
    assert (y - ref).norm() <= tol * ref.norm(), ((y - ref).norm() / ref.norm()).item()
    assert (y - ref).abs().max() <= 10 * tol * ref.abs().max(), (y - ref).abs().max().item()
