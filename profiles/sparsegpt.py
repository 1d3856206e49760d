"""SparseGPT: Hessian-aware pruning (optionally with quantization) of a ``[N, K]`` weight.

Implements the algorithm of Frantar & Alistarh (2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot") from its description: columns are visited left to right; for each
block of columns a mask is chosen from the OBS saliency ``w² / [H⁻¹]_cc²`` of the *current*
(already updated) weights, and the error of zeroing (or quantizing) each column is spread over the
later columns with the Cholesky factor of the inverse Hessian, as in GPTQ.

Sparsity rules (exact counts, rounding, ``"n:m"`` patterns) are those of
:mod:`layerbudget.profiles.wanda`: unstructured pruning zeroes ``floor(sparsity·K + 0.5)`` weights
in every row. Within a row the count is spread over the mask blocks cumulatively: the first
``c`` columns hold ``floor(sparsity·c + 0.5)`` pruned weights at every block boundary ``c``.
Masks are chosen per row (each row of a block prunes the same count), unlike the original code,
which thresholds the whole ``N × B`` block at once.
"""

from __future__ import annotations

from typing import cast

import torch

from layerbudget.kernels.quant import check_grid, group_params, quantize_with
from layerbudget.options import num_pruned
from layerbudget.profiles.gptq import current_columns
from layerbudget.profiles.hessian import check_hessian, check_weight, inverse_hessian_cholesky
from layerbudget.profiles.wanda import lowest_per_row, resolve_sparsity


def _sparsegpt(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None,
    *,
    pattern: str | None,
    damp: float,
    block_size: int,
    quant: tuple[int, int | None, torch.dtype] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One SparseGPT sweep; ``quant = (bits, group_size, meta_dtype)`` also quantizes kept weights.

    Returns ``w_hat: float32 [N, K]``, ``prune: bool [N, K]`` (True = pruned) and, when
    quantizing, ``codes``, ``scales``, ``zeros`` (else None).
    """
    check_weight(weight)
    s, nm = resolve_sparsity(sparsity, pattern, tuple(weight.shape))
    n, k = weight.shape
    check_hessian(H, k)
    if int(block_size) < 1:
        raise ValueError(f"`block_size` must be a positive integer, but got block_size={block_size}.")
    bs = int(block_size)
    if nm is not None:
        bs = max(nm[1], bs - bs % nm[1])  # every m-group of columns lies inside one block
    if quant is not None:
        bits, group_size, meta_dtype = quant
        g = check_grid(tuple(weight.shape), bits, group_size)
        if meta_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"`meta_dtype` must be float16 or bfloat16, but got {meta_dtype}.")
    dev = weight.device
    upper64, dead = inverse_hessian_cholesky(H.to(dev), damp)
    upper = upper64.to(torch.float32)  # U: [K, K]

    w = weight.detach().to(torch.float32).clone()  # W: [N, K]
    w[:, dead] = 0.0
    w_hat = torch.empty_like(w)  # [N, K]
    prune = torch.zeros(n, k, dtype=torch.bool, device=dev)  # [N, K]

    codes = scales = zeros = None
    if quant is not None:
        codes = torch.empty(n, k, dtype=torch.uint8, device=dev)  # [N, K]
        scales = torch.empty(n, k // g, dtype=meta_dtype, device=dev)  # [N, G]
        zeros = torch.empty(n, k // g, dtype=meta_dtype, device=dev)  # [N, G]
        scale_f = torch.empty(n, k // g, dtype=torch.float32, device=dev)  # [N, G]
        zero_f = torch.empty(n, k // g, dtype=torch.float32, device=dev)  # [N, G]

    for b0 in range(0, k, bs):
        b1 = min(b0 + bs, k)
        w1 = w[:, b0:b1].clone()  # [N, B]
        err1 = torch.zeros_like(w1)  # [N, B]
        u1 = upper[b0:b1, b0:b1]  # [B, B]
        d1 = torch.diagonal(u1)  # [B]; [H⁻¹]_cc of the remaining problem is U_cc²
        p1 = prune[:, b0:b1]  # view: [N, B]
        if nm is None:
            quota = num_pruned(b1, s) - num_pruned(b0, s)
            p1.copy_(lowest_per_row(w1.square() / d1.square()[None, :], quota))
        for i in range(b1 - b0):
            c = b0 + i
            if nm is not None and i % nm[1] == 0:
                m = nm[1]
                score = w1[:, i : i + m].square() / d1[i : i + m].square()[None, :]  # [N, m]
                p1[:, i : i + m] = lowest_per_row(score, m - nm[0])
            col = w1[:, i]  # [N]
            drop = p1[:, i]  # [N]
            if quant is None:
                deq = col.masked_fill(drop, 0.0)  # [N]
            else:
                j = c // g
                if c % g == 0:
                    # entering group j: grid from current values, masked entries already chosen → 0
                    pos = torch.arange(c, c + g, device=dev)
                    cur = current_columns(w, w1, err1[:, :i], upper, pos, b0)  # [N, g]
                    known = torch.zeros_like(cur, dtype=torch.bool)
                    span = min(c + g, b1) - c
                    known[:, :span] = p1[:, i : i + span]
                    sc, zc = group_params(cur.masked_fill(known, 0.0), bits, meta_dtype)  # [N], [N]
                    scales[:, j], zeros[:, j] = sc, zc
                    scale_f[:, j], zero_f[:, j] = sc.float(), zc.float()
                q = quantize_with(col, scale_f[:, j], zero_f[:, j], bits)  # [N] uint8
                q = torch.where(drop, zero_f[:, j].to(torch.uint8), q)  # code == zero → exactly 0
                deq = (q.float() - zero_f[:, j]) * scale_f[:, j]  # [N], as dequantize_groupwise
                codes[:, c] = q
            e = (col - deq) / u1[i, i]  # [N]
            w1[:, i + 1 :] -= e[:, None] * u1[i, i + 1 :][None, :]
            err1[:, i] = e
            w_hat[:, c] = deq
        w[:, b1:] -= err1 @ upper[b0:b1, b1:]  # lazy update of the later columns
    return w_hat, prune, codes, scales, zeros


def sparsegpt_prune(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None,
    *,
    pattern: str | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> torch.Tensor:
    """Prune ``weight: [N, K]`` with SparseGPT given the layer Hessian ``H: [K, K]``.

    Unstructured (``pattern=None``): exactly ``floor(sparsity·K + 0.5)`` zeros per row, masks chosen
    adaptively per block of ``block_size`` columns. ``pattern="2:4"`` (any ``"n:m"``): the mask of
    every 4 consecutive columns is chosen when the sweep reaches them; ``sparsity`` may be None.
    Dampening and dead inputs are handled as in :func:`~layerbudget.profiles.gptq.gptq_quantize`.
    Returns the pruned, OBS-updated weight ``[N, K]`` in ``weight``'s dtype (pruned entries are 0).
    """
    return sparsegpt_prune_mask(weight, H, sparsity, pattern=pattern, damp=damp, block_size=block_size)[0]


def sparsegpt_prune_mask(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None,
    *,
    pattern: str | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sparsegpt_prune` that also returns the keep mask ``bool [N, K]`` (True = kept)."""
    w_hat, prune, *_ = _sparsegpt(
        weight, H, sparsity, pattern=pattern, damp=damp, block_size=block_size, quant=None
    )
    return w_hat.masked_fill(prune, 0.0).to(weight.dtype), ~prune


def sparsegpt_prune_quantize(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None,
    bits: int,
    group_size: int | None,
    *,
    pattern: str | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    meta_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prune and quantize ``weight: [N, K]`` in one SparseGPT sweep on the project grid.

    Returns ``codes: uint8 [N, K]``, ``scales``/``zeros: [N, K // g]`` (``meta_dtype``) and
    ``mask: bool [N, K]`` (True = kept). A pruned weight gets the code equal to its group's zero
    point, so ``dequantize_groupwise(codes, scales, zeros)`` is exactly 0 there without applying
    the mask; the mask is still returned because a kept weight may also round to 0 and sparse
    formats (2:4 metadata) need the chosen positions. Each group's scale/zero are fixed when the
    sweep enters the group, from the current weights with the already-chosen pruned entries
    treated as 0 (0 is always on the grid, so they do not widen the range).
    """
    _, prune, codes, scales, zeros = _sparsegpt(
        weight,
        H,
        sparsity,
        pattern=pattern,
        damp=damp,
        block_size=block_size,
        quant=(bits, group_size, meta_dtype),
    )
    return cast(torch.Tensor, codes), cast(torch.Tensor, scales), cast(torch.Tensor, zeros), ~prune
