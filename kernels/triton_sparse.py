"""Triton 2:4 sparse kernels: fp16/bf16 kept values, and kept values stored as low-bit codes.

Triton has no sparse tensor-core dot, so each K step expands the compressed weight to a dense
``[BLOCK_K, BLOCK_N]`` tile in registers and runs a dense ``tl.dot`` (this saves bandwidth, not
FLOPs). Per K step and row block the kernel loads, each exactly once: the ``[BLOCK_K / 32, BN]``
meta words (→ one nibble per group of four: kept positions ``p0 < p1``), and the compressed tile
of ``BLOCK_K / 2`` kept values (fp16/bf16/fp32 values, or packed codes dequantized in compressed
space with scales/zeros grouped along the compressed axis). The kept pair of group ``i`` is split
into ``v0 = kept[2i]`` and ``v1 = kept[2i + 1]``, each repeated over the group's four columns, and
dense column ``k = 4i + p`` takes ``v0`` if ``p == p0``, ``v1`` if ``p == p1``, else zero.
Imported lazily by :mod:`layerbudget.kernels.ops`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig, pick_config
from .sparse24 import Sparse24QuantWeight, Sparse24Weight
from .triton_lowbit import (
    INTERPRET,
    alloc_out,
    dequant,
    expand_fields,
    expand_rows,
    grid_of,
    load_codes_tile,
    load_meta_tile,
    meta_mode,
    min_block_k,
    store_tile,
)

__all__ = ["INTERPRET", "sparse24_matmul", "sparse24_quant_matmul"]


@triton.jit
def split_pairs(t):
    """Even and odd rows of ``t: [2R, BN]`` → two ``[R, BN]`` tensors."""
    rows: tl.constexpr = t.shape[0]
    cols: tl.constexpr = t.shape[1]
    pairs = tl.permute(tl.reshape(t, (rows // 2, 2, cols)), (0, 2, 1))  # [R, BN, 2]
    return tl.split(pairs)


@triton.jit
def _sparse24_matmul_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_vn, stride_mn, stride_sn, stride_om,
    QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, META_MODE: tl.constexpr,
    META_IN_X: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    m_mask = offs_m < M
    rows = offs_n[None, :]  # [1, BN]
    row_mask = rows < N
    pos = (tl.arange(0, BLOCK_K) % 4)[:, None]  # [BK, 1] position inside the group of four
    num_kb = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(num_kb, SPLIT_K)
    kb_end = tl.minimum(pid_k * per_split + per_split, num_kb)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(pid_k * per_split, kb_end):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)  # [BM, BK]
        k0 = kb * BLOCK_K
        c0 = kb * (BLOCK_K // 2)  # first compressed column of the tile
        mw = tl.arange(0, BLOCK_K // 32)
        words = tl.load(meta_ptr + rows * stride_mn + (k0 // 32 + mw)[:, None],
                        mask=row_mask & ((k0 + mw * 32) < K)[:, None], other=0)  # [BK/32, BN]
        nib = expand_fields(words, 4, 8)  # [BK/4, BN]
        p0 = expand_rows(nib & 3, 4)  # [BK, BN]
        p1 = expand_rows((nib >> 2) & 3, 4)
        if QUANT:
            q = load_codes_tile(values_ptr + rows * stride_vn, row_mask, c0, K // 2, BITS, BLOCK_K // 2)
            s = load_meta_tile(scales_ptr, rows, stride_sn, row_mask, c0, K // 2, GROUP, BLOCK_K // 2, META_MODE)
            z = load_meta_tile(zeros_ptr, rows, stride_sn, row_mask, c0, K // 2, GROUP, BLOCK_K // 2, META_MODE)
            kept = dequant(q, z, s, x.dtype, META_IN_X)  # [BK/2, BN]
        else:
            cc = c0 + tl.arange(0, BLOCK_K // 2)
            kept = tl.load(values_ptr + rows * stride_vn + cc[:, None],
                           mask=row_mask & (cc < K // 2)[:, None], other=0.0).to(x.dtype)  # [BK/2, BN]
        v0, v1 = split_pairs(kept)  # [BK/4, BN] each
        zero = tl.zeros((BLOCK_K, BLOCK_N), dtype=x.dtype)
        w = tl.where(p0 == pos, expand_rows(v0, 4), tl.where(p1 == pos, expand_rows(v1, 4), zero))  # [BK, BN]
        acc = tl.dot(x, w, acc)
    store_tile(out_ptr, acc, bias_ptr, offs_m, offs_n, M, N, stride_om, pid_k, HAS_BIAS, SPLIT_K)


def _launch(
    x: torch.Tensor,  # [M, K]
    values: torch.Tensor,  # [N, K/2] kept values, or their packed codes [N, bits*K/64]
    meta: torch.Tensor,  # int32 [N, K/32]
    scales: torch.Tensor,  # [N, groups]; a placeholder when not quant
    zeros: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    quant: bool,
    bits: int,
    group: int,
    num_groups: int,
    config: LaunchConfig | None,
) -> torch.Tensor:
    m, k = x.shape
    cfg = config or pick_config(m, n, k)
    smallest = max(32, 2 * min_block_k(bits)) if quant else 32  # whole meta words and code runs per tile
    if cfg.block_k < smallest:
        cfg = replace(cfg, block_k=smallest)
    out = alloc_out(m, n, x, cfg)
    _sparse24_matmul_kernel[grid_of(m, n, cfg)](
        x, values, meta, scales, zeros, x if bias is None else bias, out,
        m, n, k, x.stride(0), values.stride(0), meta.stride(0), scales.stride(0), out.stride(0),
        QUANT=quant, BITS=bits, GROUP=group, META_MODE=meta_mode(group, num_groups, cfg.block_k // 2),
        META_IN_X=scales.dtype == x.dtype, HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(x.dtype)


def sparse24_matmul(
    x: torch.Tensor, weight: Sparse24Weight, bias: torch.Tensor | None = None, config: LaunchConfig | None = None
) -> torch.Tensor:
    """Launch the 2:4 kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``."""
    v = weight.values
    return _launch(x, v, weight.meta, v, v, bias, weight.n, False, 16, 1, 1, config)


def sparse24_quant_matmul(
    x: torch.Tensor, weight: Sparse24QuantWeight, bias: torch.Tensor | None = None, config: LaunchConfig | None = None
) -> torch.Tensor:
    """Launch the 2:4 + low-bit kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``."""
    q = weight.values
    return _launch(x, q.packed, weight.meta, q.scales, q.zeros, bias, weight.n, True, q.bits, q.group,
                   q.num_groups, config)
