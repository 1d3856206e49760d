"""GPTQ: Hessian-aware group-wise quantization of a ``[N, K]`` weight onto the project grid.

Implements the algorithm of Frantar et al. (2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") from its description: columns are quantized one at a time
and the rounding error of each is spread over the not-yet-quantized columns through the Cholesky
factor of the inverse Hessian (an optimal-brain-surgeon update), with updates to later columns
applied lazily one block at a time. Codes, scales and zeros lie on the grid of
:mod:`layerbudget.kernels.quant`, so ``dequantize_groupwise(codes, scales, zeros)`` reproduces
exactly the weights the sweep produced.
"""

from __future__ import annotations

import torch

from layerbudget.kernels.quant import check_grid, group_params, quantize_with
from layerbudget.profiles.hessian import check_hessian, check_weight, inverse_hessian_cholesky


def current_columns(
    w: torch.Tensor,
    w_block: torch.Tensor,
    err_block: torch.Tensor,
    upper: torch.Tensor,
    pos: torch.Tensor,
    b0: int,
) -> torch.Tensor:
    """Up-to-date values of sweep positions ``pos`` (all not yet quantized) during a lazy sweep.

    ``w: [N, K]`` holds every update from finished blocks; ``w_block: [N, B]`` is the working copy
    of the current block starting at ``b0`` (fully updated); ``err_block: [N, i]`` are the scaled
    errors of the block's ``i`` columns done so far, whose updates to positions after the block are
    still pending: ``w[:, p] - err_block @ upper[b0:b0+i, p]``. Returns ``[N, len(pos)]``.
    """
    b1 = b0 + w_block.shape[1]
    out = w[:, pos].clone()  # [N, P]
    inside = (pos >= b0) & (pos < b1)  # [P]
    if bool(inside.any()):
        out[:, inside] = w_block[:, pos[inside] - b0]
    outside = ~inside
    i = err_block.shape[1]
    if i > 0 and bool(outside.any()):
        out[:, outside] -= err_block @ upper[b0 : b0 + i][:, pos[outside]]  # [N, i] @ [i, P_out]
    return out


def _gptq(
    weight: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int | None,
    *,
    damp: float,
    act_order: bool,
    block_size: int,
    meta_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ sweep; returns ``codes, scales, zeros`` and the float32 reconstruction ``[N, K]``."""
    check_weight(weight)
    g = check_grid(tuple(weight.shape), bits, group_size)
    n, k = weight.shape
    check_hessian(H, k)
    if int(block_size) < 1:
        raise ValueError(f"`block_size` must be a positive integer, but got block_size={block_size}.")
    if meta_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"`meta_dtype` must be float16 or bfloat16, but got {meta_dtype}.")
    dev = weight.device
    H = H.to(dev)
    diag = torch.diagonal(H).clone()  # [K]
    diag[diag == 0] = 1.0
    if act_order:
        perm = torch.argsort(diag, descending=True, stable=True)  # [K] sweep position -> column
    else:
        perm = torch.arange(k, device=dev)
    upper64, dead = inverse_hessian_cholesky(H, damp, perm=perm if act_order else None)
    upper = upper64.to(torch.float32)  # U: [K, K], sweep order

    w = weight.detach().to(torch.float32).clone()  # W: [N, K]
    w[:, dead] = 0.0
    w = w[:, perm].contiguous()  # W: [N, K], sweep order
    n_groups = k // g
    inv_perm = torch.argsort(perm)  # [K] column -> sweep position
    group_pos = inv_perm.reshape(n_groups, g)  # [G, g] sweep positions of each group's columns
    group_of = (perm // g).tolist()  # group of each sweep position

    scales = torch.empty(n, n_groups, dtype=meta_dtype, device=dev)  # [N, G]
    zeros = torch.empty(n, n_groups, dtype=meta_dtype, device=dev)  # [N, G]
    scale_f = torch.empty(n, n_groups, dtype=torch.float32, device=dev)  # [N, G]
    zero_f = torch.empty(n, n_groups, dtype=torch.float32, device=dev)  # [N, G]
    entered = [False] * n_groups
    codes = torch.empty(n, k, dtype=torch.uint8, device=dev)  # [N, K], sweep order
    w_hat = torch.empty(n, k, dtype=torch.float32, device=dev)  # [N, K], sweep order

    bs = int(block_size)
    for b0 in range(0, k, bs):
        b1 = min(b0 + bs, k)
        w1 = w[:, b0:b1].clone()  # [N, B]
        err1 = torch.zeros_like(w1)  # [N, B]
        u1 = upper[b0:b1, b0:b1]  # [B, B]
        for i in range(b1 - b0):
            c = b0 + i
            j = group_of[c]
            if not entered[j]:
                # first column of group j in sweep order: fix its grid from the current weights
                cur = current_columns(w, w1, err1[:, :i], upper, group_pos[j], b0)  # [N, g]
                s, z = group_params(cur, bits, meta_dtype)  # [N], [N]
                scales[:, j], zeros[:, j] = s, z
                scale_f[:, j], zero_f[:, j] = s.float(), z.float()
                entered[j] = True
            col = w1[:, i]  # [N]
            q = quantize_with(col, scale_f[:, j], zero_f[:, j], bits)  # [N] uint8
            deq = (q.float() - zero_f[:, j]) * scale_f[:, j]  # [N], as dequantize_groupwise
            e = (col - deq) / u1[i, i]  # [N]
            w1[:, i + 1 :] -= e[:, None] * u1[i, i + 1 :][None, :]
            err1[:, i] = e
            codes[:, c] = q
            w_hat[:, c] = deq
        w[:, b1:] -= err1 @ upper[b0:b1, b1:]  # lazy update of the later columns

    out_codes = torch.empty_like(codes)
    out_codes[:, perm] = codes
    out_hat = torch.empty_like(w_hat)
    out_hat[:, perm] = w_hat
    return out_codes, scales, zeros, out_hat


def gptq_quantize(
    weight: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int | None,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    meta_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``weight: [N, K]`` with GPTQ given the layer Hessian ``H: [K, K]``.

    Returns ``codes: uint8 [N, K]``, ``scales: [N, K // g]`` and ``zeros: [N, K // g]`` (both
    ``meta_dtype``) on the grid of :func:`layerbudget.kernels.quant.quantize_groupwise`, in natural
    column order; ``group_size=None`` means one group per row.

    Details:
    - ``damp``: ``H += damp · mean(diag H) · I``; if ``H`` is still not positive definite the
      dampening is raised 10× up to two more times (RuntimeWarning), then ValueError.
    - Dead inputs (``H_jj == 0``) get ``H_jj = 1`` and their weight column is quantized as 0.
    - Each group's scale/zero are computed when the sweep first reaches one of its columns, from
      the *current*, error-updated values of all the group's columns (including pending lazy
      updates, so the result does not depend on ``block_size`` beyond float rounding).
    - ``act_order=True`` quantizes columns in order of decreasing ``H_jj``. Groups stay *static*:
      group ``j`` is always columns ``[j·g, (j+1)·g)`` in natural order (no ``g_idx`` needed), and
      its grid is fixed when the first of its columns comes up in the act-order sweep.
    - The sweep runs in float32 (the inverse-Hessian factorisation in float64) on ``weight``'s
      device.
    """
    codes, scales, zeros, _ = _gptq(
        weight,
        H,
        bits,
        group_size,
        damp=damp,
        act_order=act_order,
        block_size=block_size,
        meta_dtype=meta_dtype,
    )
    return codes, scales, zeros
