"""Triton tensor-core and dequantize kernels for 2/3/4/8-bit packed weights.

Imported lazily by :mod:`layerbudget.kernels.ops`; the launchers assume inputs validated there.

Tensor-core kernel (``kernel="tc"``): program ``(pid_n, pid_m)`` owns the output tile of weight
rows ``[BLOCK_N]`` × activation rows ``[BLOCK_M]`` and walks all of K (no split-K). Each step
loads ``[BLOCK_N, BLOCK_U]`` packed units once; for every field ``e`` it
dequantizes the field's codes in registers, ``((2**b + q) - (2**b + z)) * s`` rounded once to the
activation dtype (the reference's ``W_hat``), and multiplies them with the matching transposed
activation slice ``[BLOCK_U, BLOCK_M]`` in ``tl.dot`` (weights as the left operand, so a few
activation rows fill the narrow side of the tile), accumulating in fp32.

Dequantize kernel: writes ``W_hat`` (``[N, K]`` in the activation dtype) for ``F.linear`` at large M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig
from .packing import chunk_units, fields_per_unit
from .quant_weight import PackedQuantWeight
from .triton_common import INTERPRET, field_float, store_out
from .triton_gemv import flush_fields

__all__ = ["INTERPRET", "dequantize_lowbit", "tc_lowbit"]


@triton.jit
def finish_tile(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS: tl.constexpr):
    """Write the fp32 tile ``acc: [BN, BM]`` (weight rows × activation rows) to ``out: [M, N]``."""
    n_ok = offs_n[:, None] < N
    store_out(acc, out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], bias_ptr + offs_n[:, None],
              n_ok & (offs_m[None, :] < M), n_ok, HAS_BIAS)


@triton.jit
def _tc_lowbit_kernel(
    x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_pn, stride_sn, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, FLUSH: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr,
):
    E: tl.constexpr = 16 if BITS == 3 else 32 // BITS
    V: tl.constexpr = E * CU
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = offs_n[:, None]  # [BN, 1]
    row_ok = rows < N
    m_ok = offs_m[None, :] < M
    j = tl.arange(0, BLOCK_U)
    num_units = K // E
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    high_base = packed_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_pn) + K // 8
    for it in range(0, tl.cdiv(num_units, BLOCK_U)):
        u = it * BLOCK_U + j  # [BU] unit of the row
        u_ok = u < num_units
        w_ok = row_ok & u_ok[None, :]
        words = tl.load(packed_ptr + rows * stride_pn + u[None, :], mask=w_ok, other=0)  # [BN, BU]
        high = words
        if BITS == 3:
            high = tl.load(high_base + u[None, :], mask=w_ok, other=0).to(tl.int32)
        cstart = (u // CU) * V  # [BU] first value of the unit's chunk
        kbase = cstart + u % CU
        for e in tl.static_range(E):
            if e % FLUSH == 0:
                g = (cstart + e * CU) // GROUP
                s = tl.load(scales_ptr + rows * stride_sn + g[None, :], mask=w_ok, other=0.0).to(tl.float32)
                cz = tl.load(zeros_ptr + rows * stride_sn + g[None, :], mask=w_ok, other=0.0).to(tl.float32)
                cz += 1 << BITS
            w = ((field_float(words, high, e, BITS) - cz) * s).to(x_ptr.dtype.element_ty)  # [BN, BU]
            xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + (kbase + e * CU)[:, None],
                         mask=u_ok[:, None] & m_ok, other=0.0)  # [BU, BM]
            acc = tl.dot(w, xt, acc)
    finish_tile(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS)


@triton.jit
def _dequant_lowbit_kernel(
    packed_ptr, scales_ptr, zeros_ptr, out_ptr, N, K, stride_pn, stride_sn, stride_on,
    BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, FLUSH: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    E: tl.constexpr = 16 if BITS == 3 else 32 // BITS
    V: tl.constexpr = E * CU
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N))[:, None, None]
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :, None]
    vv = tl.arange(0, CU)[None, None, :]
    ok = (rows < N) & (c < K // V)
    u = c * CU + vv
    words = tl.load(packed_ptr + rows * stride_pn + u, mask=ok, other=0)
    high = words
    if BITS == 3:
        high_base = packed_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_pn) + K // 8
        high = tl.load(high_base + u, mask=ok, other=0).to(tl.int32)
    for e in tl.static_range(E):
        if e % FLUSH == 0:
            g = (c * V + e * CU) // GROUP
            s = tl.load(scales_ptr + rows * stride_sn + g, mask=ok, other=0.0).to(tl.float32)
            cz = tl.load(zeros_ptr + rows * stride_sn + g, mask=ok, other=0.0).to(tl.float32) + (1 << BITS)
        w = (field_float(words, high, e, BITS) - cz) * s
        tl.store(out_ptr + rows * stride_on + c * V + e * CU + vv, w.to(out_ptr.dtype.element_ty), mask=ok)


def _layout(weight: PackedQuantWeight, k: int) -> tuple[int, int, int]:
    """(units per chunk, values per chunk, fields per group run) of a packed weight."""
    cu = chunk_units(weight.bits, k)
    e = fields_per_unit(weight.bits)
    return cu, e * cu, flush_fields(weight.group, e * cu, cu, e)


def tc_lowbit(x: torch.Tensor, weight: PackedQuantWeight, bias: torch.Tensor | None, cfg: LaunchConfig) -> torch.Tensor:
    """Launch the tensor-core kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``."""
    m, k = x.shape
    n = weight.n
    cu, _, flush = _layout(weight, k)
    block_u = max(16, cfg.block_k // fields_per_unit(weight.bits))
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _tc_lowbit_kernel[grid](
        x, weight.packed, weight.scales, weight.zeros, x if bias is None else bias, out,
        m, n, k, x.stride(0), weight.packed.stride(0), weight.scales.stride(0), out.stride(0),
        BITS=weight.bits, GROUP=weight.group, CU=cu, FLUSH=flush, HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_U=block_u,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def dequantize_lowbit(weight: PackedQuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """``W_hat: [N, K]`` in ``dtype`` (fp16/bf16), computed on the weight's device by one kernel."""
    n, k = weight.shape
    cu, chunk, flush = _layout(weight, k)
    block_c = max(1, 64 // cu)
    out = torch.empty(n, k, dtype=dtype, device=weight.device)
    grid = (triton.cdiv(n, 16), triton.cdiv(k // chunk, block_c))
    _dequant_lowbit_kernel[grid](
        weight.packed, weight.scales, weight.zeros, out, n, k, weight.packed.stride(0), weight.scales.stride(0),
        out.stride(0), BITS=weight.bits, GROUP=weight.group, CU=cu, FLUSH=flush, BLOCK_N=16, BLOCK_C=block_c,
        num_warps=4,
    )
    return out
