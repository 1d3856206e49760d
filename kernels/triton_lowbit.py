"""Triton A16Wn kernel: ``y = x @ W_hat^T (+ bias)`` with 2/3/4/8-bit packed weights dequantized in registers.

Imported lazily by :mod:`layerbudget.kernels.ops` on first use (``@triton.jit`` reads
``TRITON_INTERPRET`` when this module is imported). Callers go through the checking wrappers in
``ops``; the launchers here assume validated inputs.

One kernel serves every M: program ``(pid_m, pid_n, pid_k)`` owns a ``[BLOCK_M, BLOCK_N]`` output
tile and the ``pid_k``-th of ``SPLIT_K`` contiguous slices of the K blocks. Each K step loads an
activation tile ``[BLOCK_M, BLOCK_K]`` and the packed words of the weight tile once
(``[BLOCK_K * bits / 32, BLOCK_N]``), expands the codes in registers (shift/mask + reshape; no
duplicated loads, so the software pipeline stages only packed bytes in shared memory), dequantizes
them with the tile's scales/zeros, rounds to the activation dtype (see :func:`dequant`) and
accumulates ``tl.dot`` in fp32. Split-K (small M) reduces partial tiles with fp32 atomics into a
zeroed fp32 output (not bitwise deterministic run to run).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig, pick_config
from .quant_weight import PackedQuantWeight

try:  # kernels in this module were built for the interpreter (read as @triton.jit reads it)
    from triton import knobs

    INTERPRET = bool(knobs.runtime.interpret)
except ImportError:  # triton < 3.4 has no knobs
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@triton.jit
def expand_fields(words, WIDTH: tl.constexpr, PER: tl.constexpr):
    """Split int32 ``words: [R, BN]`` into ``[R * PER, BN]`` fields: row ``r * PER + e`` = bits ``[e*WIDTH, +WIDTH)``."""
    shifts = tl.arange(0, PER) * WIDTH  # [PER]
    fields = (words[:, None, :] >> shifts[None, :, None]) & ((1 << WIDTH) - 1)  # [R, PER, BN]
    return tl.reshape(fields, (words.shape[0] * PER, words.shape[1]))


@triton.jit
def expand_rows(t, REP: tl.constexpr):
    """Repeat every row of ``t: [R, BN]`` ``REP`` times → ``[R * REP, BN]``."""
    rows: tl.constexpr = t.shape[0]
    cols: tl.constexpr = t.shape[1]
    return tl.reshape(tl.broadcast_to(t[:, None, :], (rows, REP, cols)), (rows * REP, cols))


@triton.jit
def load_codes_tile(row_ptrs, row_mask, k0, K, BITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes (int32) ``[BLOCK_K, BN]`` of columns ``k0 .. k0 + BLOCK_K`` of packed rows ``row_ptrs: [1, BN]``.

    Each packed word is loaded once (``[BLOCK_K * BITS / 32, BN]`` words) and expanded in registers.
    ``k0`` is a multiple of ``BLOCK_K``, which is a multiple of 32 for 3 bits and of ``32 / BITS``
    otherwise; columns at or past ``K`` come back as 0.
    """
    if BITS == 3:
        half = tl.arange(0, BLOCK_K // 16)  # half-runs of 16 values: low 2 bits in word 3*(h//2) + h%2
        low_idx = (k0 // 32 + half // 2) * 3 + half % 2
        low = tl.load(row_ptrs + low_idx[:, None], mask=row_mask & ((k0 + half * 16) < K)[:, None], other=0)
        run = tl.arange(0, BLOCK_K // 32)  # high bits of run r in word 3r + 2
        high_idx = (k0 // 32 + run) * 3 + 2
        high = tl.load(row_ptrs + high_idx[:, None], mask=row_mask & ((k0 + run * 32) < K)[:, None], other=0)
        q = expand_fields(low, 2, 16) | (expand_fields(high, 1, 32) << 2)
    else:
        word = tl.arange(0, BLOCK_K // (32 // BITS))
        words = tl.load(row_ptrs + (k0 // (32 // BITS) + word)[:, None],
                        mask=row_mask & ((k0 + word * (32 // BITS)) < K)[:, None], other=0)
        q = expand_fields(words, BITS, 32 // BITS)
    return q


@triton.jit
def load_meta_tile(ptr, rows, stride, row_mask, k0, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr,
                   MODE: tl.constexpr):
    """Scale (or zero) for columns ``k0 .. k0 + BLOCK_K`` of rows ``rows: [1, BN]``.

    ``MODE`` 0: the tile lies in one group → ``[1, BN]``; 1: ``BLOCK_K`` is a multiple of ``GROUP``
    → load ``[BLOCK_K / GROUP, BN]`` and repeat rows; 2: per-column gather ``[BLOCK_K, BN]``.
    """
    if MODE == 0:
        v = tl.load(ptr + rows * stride + k0 // GROUP, mask=row_mask, other=0.0)  # [1, BN]
    elif MODE == 1:
        g = tl.arange(0, BLOCK_K // GROUP)
        v = tl.load(ptr + rows * stride + (k0 // GROUP + g)[:, None],
                    mask=row_mask & ((k0 + g * GROUP) < K)[:, None], other=0.0)  # [BK/GROUP, BN]
        v = expand_rows(v, GROUP)  # [BK, BN]
    else:
        cols = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(ptr + rows * stride + (cols // GROUP)[:, None], mask=row_mask & (cols < K)[:, None],
                    other=0.0)  # [BK, BN]
    return v


@triton.jit
def dequant(q, z, s, dtype: tl.constexpr, META_IN_X: tl.constexpr):
    """``(q - z) * s`` rounded once to ``dtype``, bit-identical to computing in fp32 then casting.

    With metadata already in ``dtype`` (fp16/bf16) the math runs in ``dtype``: ``q - z`` is an exact
    integer below 256 and the product of two 11-bit (8-bit) significands is exact in fp32, so one
    rounding of the product gives the same result either way, with fewer conversions.
    """
    if META_IN_X:
        w = (q.to(dtype) - z) * s
    else:
        w = ((q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)).to(dtype)
    return w


@triton.jit
def store_tile(out_ptr, acc, bias_ptr, offs_m, offs_n, M, N, stride_om, pid_k,
               HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Add bias (once) and write or atomically accumulate an fp32 ``[BLOCK_M, BLOCK_N]`` tile."""
    n_mask = offs_n < N
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)  # [BN]
        if SPLIT_K > 1:
            b = b * (pid_k == 0).to(tl.float32)  # only the first K slice adds the bias
        acc += b[None, :]
    ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = (offs_m[:, None] < M) & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(ptrs, acc, mask=mask)


@triton.jit
def _lowbit_matmul_kernel(
    x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_pn, stride_sn, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr, META_MODE: tl.constexpr, META_IN_X: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
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
    num_kb = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(num_kb, SPLIT_K)
    kb_end = tl.minimum(pid_k * per_split + per_split, num_kb)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(pid_k * per_split, kb_end):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
        k_mask = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # [BM, BK]
        k0 = kb * BLOCK_K
        q = load_codes_tile(packed_ptr + rows * stride_pn, row_mask, k0, K, BITS, BLOCK_K)  # [BK, BN] int32
        s = load_meta_tile(scales_ptr, rows, stride_sn, row_mask, k0, K, GROUP, BLOCK_K, META_MODE)
        z = load_meta_tile(zeros_ptr, rows, stride_sn, row_mask, k0, K, GROUP, BLOCK_K, META_MODE)
        w = dequant(q, z, s, x.dtype, META_IN_X)  # [BK, BN] = W_hat^T tile
        acc = tl.dot(x, w, acc)
    store_tile(out_ptr, acc, bias_ptr, offs_m, offs_n, M, N, stride_om, pid_k, HAS_BIAS, SPLIT_K)


def meta_mode(group: int, num_groups: int, block_k: int) -> int:
    """How a K tile reads its scales/zeros: 0 one group per tile, 1 whole groups per tile, 2 gather."""
    if num_groups == 1 or group % block_k == 0:
        return 0
    return 1 if block_k % group == 0 else 2


def min_block_k(bits: int) -> int:
    """Smallest K tile whose packed words are whole: one 3-bit run is 32 values."""
    return 32 if bits == 3 else 16


def alloc_out(m: int, n: int, x: torch.Tensor, cfg: LaunchConfig) -> torch.Tensor:
    if cfg.split_k > 1:
        return torch.zeros(m, n, dtype=torch.float32, device=x.device)
    return torch.empty(m, n, dtype=x.dtype, device=x.device)


def grid_of(m: int, n: int, cfg: LaunchConfig) -> tuple[int, int, int]:
    return (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), cfg.split_k)


def lowbit_matmul(
    x: torch.Tensor,
    weight: PackedQuantWeight,
    bias: torch.Tensor | None = None,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """Launch the A16Wn kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``."""
    m, k = x.shape
    n = weight.n
    cfg = config or pick_config(m, n, k)
    if cfg.block_k < min_block_k(weight.bits):
        cfg = replace(cfg, block_k=min_block_k(weight.bits))
    out = alloc_out(m, n, x, cfg)
    _lowbit_matmul_kernel[grid_of(m, n, cfg)](
        x, weight.packed, weight.scales, weight.zeros, x if bias is None else bias, out,
        m, n, k, x.stride(0), weight.packed.stride(0), weight.scales.stride(0), out.stride(0),
        BITS=weight.bits, GROUP=weight.group, META_MODE=meta_mode(weight.group, weight.num_groups, cfg.block_k),
        META_IN_X=weight.scales.dtype == x.dtype,
        HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(x.dtype)
