"""Triton tensor-core and dequantize kernels for 2:4 weights (fp16/bf16/fp32 kept values, or low-bit codes).

Imported lazily by :mod:`layerbudget.kernels.ops`; the launchers assume inputs validated there.

Triton has no sparse tensor-core dot, so each step expands the compressed weight to dense tiles
in registers and runs a dense ``tl.dot`` (this saves bandwidth, not FLOPs). A step loads
``[BLOCK_N, BLOCK_C, C]`` units of positions (and of codes) once; for every field ``e`` the kept
values of the field (values read at their compressed columns, or codes dequantized as in
:mod:`.triton_lowbit`) pair up along the units — kept values ``2i`` and ``2i + 1`` of group ``i``
sit in neighbouring units of one field (or, with one unit per chunk, in neighbouring fields) —
and each pair is spread over its group's four dense columns by position. The dense columns a
field covers are contiguous, so the activations come as one transposed slice per chunk.

Dequantize kernel: writes the dense ``[N, K]`` weight (zeros included) for ``F.linear`` at large M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig
from .sparse24 import Sparse24QuantWeight, Sparse24Weight, meta_layout
from .triton_common import INTERPRET, field_float_at, field_int
from .triton_lowbit import store_tile

__all__ = ["INTERPRET", "dequantize_sparse24", "tc_sparse24", "tc_sparse24_quant"]


@triton.jit
def _kept(values_ptr, words, high, rows, stride_vn, kk, ok, s, cz, e, QUANT: tl.constexpr, BITS: tl.constexpr):
    """Kept values of field ``e`` (fp32): read at their compressed columns, or dequantized codes."""
    if QUANT:
        w = (field_float_at(words, high, e, BITS) - cz) * s
    else:
        w = tl.load(values_ptr + rows * stride_vn + kk, mask=ok, other=0.0).to(tl.float32)
    return w


@triton.jit
def _spread(p0, w0, p1, w1):
    """Pairs ``[BN, BC, H]`` of (position, value) → dense ``[BN, BC, H, 4]`` columns of each group."""
    j = tl.arange(0, 4)[None, None, None, :]
    zero = tl.zeros(p0.shape, tl.float32)[:, :, :, None]
    return tl.where(p0[:, :, :, None] == j, w0[:, :, :, None],
                    tl.where(p1[:, :, :, None] == j, w1[:, :, :, None], zero))


@triton.jit
def _pairs(t, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, CU: tl.constexpr):
    """Even and odd units of ``t: [BN, BC, CU]`` → two ``[BN, BC, CU / 2]`` tensors."""
    return tl.split(tl.reshape(t, (BLOCK_N, BLOCK_C, CU // 2, 2)))


@triton.jit
def _field_meta(rows, c, w_ok, scales_ptr, zeros_ptr, stride_sn, e, V: tl.constexpr,
                CU: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr):
    """Scale and ``2**b + zero`` ``[BN, BC, 1]`` of the group holding field ``e`` of chunks ``c``."""
    g = (c * V + e * CU) // GROUP
    s = tl.load(scales_ptr + rows * stride_sn + g, mask=w_ok, other=0.0).to(tl.float32)
    cz = tl.load(zeros_ptr + rows * stride_sn + g, mask=w_ok, other=0.0).to(tl.float32) + (1 << BITS)
    return s, cz


@triton.jit
def _dense_fields(values_ptr, meta, words, high, rows, stride_vn, c, w_ok, scales_ptr, zeros_ptr, stride_sn,
                  e, QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                  CU: tl.constexpr, V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Dense weight ``[BN, BC, H, 4]`` of field ``e`` (fields ``e, e + 1`` when ``CU == 1``) and the first
    dense column ``[1, BC, 1]`` it covers in each chunk (``4 H`` contiguous columns follow)."""
    vv = tl.arange(0, CU)[None, None, :]
    s = 1.0
    cz = 0.0
    if QUANT:
        s, cz = _field_meta(rows, c, w_ok, scales_ptr, zeros_ptr, stride_sn, e, V, CU, GROUP, BITS)
    kk = c * V + e * CU + vv
    if CU == 1:  # the pair of a group sits in fields e and e + 1 of one unit
        p0 = field_int(meta, e, 2)
        p1 = field_int(meta, e + 1, 2)
        w0 = _kept(values_ptr, words, high, rows, stride_vn, kk, w_ok, s, cz, e, QUANT, BITS)
        w1 = _kept(values_ptr, words, high, rows, stride_vn, kk + 1, w_ok, s, cz, e + 1, QUANT, BITS)
    else:
        p0, p1 = _pairs(field_int(meta, e, 2), BLOCK_N, BLOCK_C, CU)
        w0, w1 = _pairs(_kept(values_ptr, words, high, rows, stride_vn, kk, w_ok, s, cz, e, QUANT, BITS),
                        BLOCK_N, BLOCK_C, CU)
    return _spread(p0, w0, p1, w1), 2 * (c * V + e * CU)  # [1, BC, 1]


@triton.jit
def _load_units(values_ptr, meta_base, high_base, rows, stride_vn, u, w_ok, QUANT: tl.constexpr,
                BITS: tl.constexpr):
    meta = tl.load(meta_base + u, mask=w_ok, other=0).to(tl.int32)
    words = meta
    high = meta
    if QUANT:
        words = tl.load(values_ptr + rows * stride_vn + u, mask=w_ok, other=0)
        high = words
        if BITS == 3:
            high = tl.load(high_base + u, mask=w_ok, other=0).to(tl.int32)
    return meta, words, high


@triton.jit
def _bases(values_ptr, meta_ptr, rows, stride_vn, stride_mn, K, E: tl.constexpr, QUANT: tl.constexpr):
    """Row pointers of the position units (8/16/32 bits for ``E`` = 4/8/16) and of the 3-bit high plane."""
    if E == 4:
        meta_base = meta_ptr.to(tl.pointer_type(tl.int8)) + rows * (4 * stride_mn)
    elif E == 8:
        meta_base = meta_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_mn)
    else:
        meta_base = meta_ptr + rows * stride_mn
    high_base = meta_ptr.to(tl.pointer_type(tl.int16))
    if QUANT:
        high_base = values_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_vn) + K // 16
    return meta_base, high_base


@triton.jit
def _tc_sparse24_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_vn, stride_mn, stride_sn, stride_om,
    QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    E: tl.constexpr = (16 if BITS == 3 else 32 // BITS) if QUANT else 16
    V: tl.constexpr = E * CU
    H: tl.constexpr = 1 if CU == 1 else CU // 2
    STEP: tl.constexpr = 2 if CU == 1 else 1
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = offs_n[:, None, None]
    row_ok = rows < N
    cc = tl.arange(0, BLOCK_C)[None, :, None]
    vv = tl.arange(0, CU)[None, None, :]
    t = tl.arange(0, BLOCK_C * H * 4)  # dense column of the step's tile
    t_first = (t // (H * 4)) * V * 2 + t % (H * 4)  # its offset from column 2 * c0 * V
    num_chunks = (K // 2) // V
    meta_base, high_base = _bases(values_ptr, meta_ptr, rows, stride_vn, stride_mn, K, E, QUANT)
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for it in range(0, tl.cdiv(num_chunks, BLOCK_C)):
        c = it * BLOCK_C + cc
        w_ok = row_ok & (c < num_chunks)
        u = c * CU + vv
        meta, words, high = _load_units(values_ptr, meta_base, high_base, rows, stride_vn, u, w_ok, QUANT, BITS)
        t_ok = (it * BLOCK_C + t // (H * 4)) < num_chunks
        for e in tl.range(0, E, STEP, num_stages=1):  # a run-time loop: one set of tiles live at a time
            wd, _ = _dense_fields(values_ptr, meta, words, high, rows, stride_vn, c, w_ok, scales_ptr, zeros_ptr,
                                  stride_sn, e, QUANT, BITS, GROUP, CU, V, BLOCK_N, BLOCK_C)
            w2 = tl.reshape(wd, (BLOCK_N, BLOCK_C * H * 4)).to(x_ptr.dtype.element_ty)
            col = 2 * (it * BLOCK_C * V + e * CU) + t_first  # [BK]
            xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + col[:, None],
                         mask=t_ok[:, None] & (offs_m[None, :] < M), other=0.0)  # [BK, BM]
            acc = tl.dot(w2, xt, acc)
    store_tile(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS)


@triton.jit
def _dequant_sparse24_kernel(
    values_ptr, meta_ptr, scales_ptr, zeros_ptr, out_ptr, N, K, stride_vn, stride_mn, stride_sn, stride_on,
    QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    E: tl.constexpr = (16 if BITS == 3 else 32 // BITS) if QUANT else 16
    V: tl.constexpr = E * CU
    H: tl.constexpr = 1 if CU == 1 else CU // 2
    STEP: tl.constexpr = 2 if CU == 1 else 1
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N))[:, None, None]
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :, None]
    vv = tl.arange(0, CU)[None, None, :]
    w_ok = (rows < N) & (c < (K // 2) // V)
    meta_base, high_base = _bases(values_ptr, meta_ptr, rows, stride_vn, stride_mn, K, E, QUANT)
    meta, words, high = _load_units(values_ptr, meta_base, high_base, rows, stride_vn, c * CU + vv, w_ok, QUANT,
                                    BITS)
    cols = tl.arange(0, H * 4)[None, None, :]
    for e in tl.static_range(0, E, STEP):
        wd, first = _dense_fields(values_ptr, meta, words, high, rows, stride_vn, c, w_ok, scales_ptr, zeros_ptr,
                                  stride_sn, e, QUANT, BITS, GROUP, CU, V, BLOCK_N, BLOCK_C)
        dense = tl.reshape(wd, (BLOCK_N, BLOCK_C, H * 4))
        ptrs = out_ptr + rows * stride_on + first + cols
        tl.store(ptrs, dense.to(out_ptr.dtype.element_ty), mask=w_ok)


def _launch(x, values, meta, scales, zeros, bias, n, quant, bits, group, cfg: LaunchConfig) -> torch.Tensor:
    if cfg.split_k != 1:
        raise ValueError(f"the 2:4 tensor-core kernels have no split-K; `split_k` must be 1, got split_k={cfg.split_k}.")
    m, k = x.shape
    e, chunk = meta_layout(k, bits if quant else None)
    cu = chunk // e
    h = 1 if cu == 1 else cu // 2
    block_c = max(1, cfg.block_k // (2 * chunk), -(-16 // (4 * h)))  # chunks per step; a dot needs K >= 16
    block_c = 1 << (block_c - 1).bit_length()
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _tc_sparse24_kernel[grid](
        x, values, meta, scales, zeros, x if bias is None else bias, out,
        m, n, k, x.stride(0), values.stride(0), meta.stride(0), scales.stride(0), out.stride(0),
        QUANT=quant, BITS=bits, GROUP=group, CU=cu, HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_C=block_c,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def tc_sparse24(x: torch.Tensor, weight: Sparse24Weight, bias: torch.Tensor | None, cfg: LaunchConfig) -> torch.Tensor:
    """Launch the 2:4 tensor-core kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``."""
    v = weight.values
    return _launch(x, v, weight.meta, v, v, bias, weight.n, False, 16, 1, cfg)


def tc_sparse24_quant(
    x: torch.Tensor, weight: Sparse24QuantWeight, bias: torch.Tensor | None, cfg: LaunchConfig
) -> torch.Tensor:
    """Launch the 2:4 + low-bit tensor-core kernel."""
    q = weight.values
    return _launch(x, q.packed, weight.meta, q.scales, q.zeros, bias, weight.n, True, q.bits, q.group, cfg)


def dequantize_sparse24(weight: Sparse24Weight | Sparse24QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``[N, K]`` weight in ``dtype`` (fp16/bf16), computed on the weight's device by one kernel."""
    n, k = weight.shape
    quant = isinstance(weight, Sparse24QuantWeight)
    if quant:
        q = weight.values
        values, scales, zeros, bits, group = q.packed, q.scales, q.zeros, q.bits, q.group
    else:
        values = scales = zeros = weight.values
        bits, group = 16, 1
    e, chunk = meta_layout(k, bits if quant else None)
    cu = chunk // e
    block_c = max(1, 32 // cu)
    out = torch.empty(n, k, dtype=dtype, device=weight.device)
    grid = (triton.cdiv(n, 16), triton.cdiv((k // 2) // chunk, block_c))
    _dequant_sparse24_kernel[grid](
        values, weight.meta, scales, zeros, out, n, k, values.stride(0), weight.meta.stride(0), scales.stride(0),
        out.stride(0), QUANT=quant, BITS=bits, GROUP=group, CU=cu, BLOCK_N=16, BLOCK_C=block_c, num_warps=4,
    )
    return out
