"""Triton tensor-core and dequantize kernels for 2/3/4/8-bit packed weights.

Imported lazily by :mod:`layerbudget.kernels.ops`; the launchers assume inputs validated there.

Tensor-core kernel (``kernel="tc"``): program ``(pid_n, pid_k, pid_m)`` owns the output tile of
weight rows ``[BLOCK_N]`` × activation rows ``[BLOCK_M]`` and a contiguous slice of the K steps
(split-K). A step takes ``JB`` fields of each halfword of one chunk's packed units, a contiguous run of
``2 * JB * C`` values, each field's ``2 C`` inside one quantization group (the next step's units are read
before this step computes), and dequantizes them in registers two codes per word operation
(:func:`~.triton_common.pair_bits`: the fp16 values ``2**b + q``), then ``(2**b + q) - (2**b + z)``
(exact: zeros are integers) times the scale, rounded once to the activation dtype (the reference's
``W_hat``). The tile's columns run in the packed order (unit, field, halfword); the smaller of the
two tiles is permuted to the other's column order, so one ``tl.dot`` with K = ``2 * JB * C``
multiplies them (weights as the left operand, so a few activation rows fill the narrow side of the
tile), accumulating in fp32. Split-K programs meet in slices of the shared workspace.

Dequantize kernel: writes ``W_hat`` (``[N, K]`` in the activation dtype) for ``F.linear`` at large M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_fielddot
from .configs import LaunchConfig, tc_step_fields
from .packing import chunk_units, fields_per_unit
from .quant_weight import PackedQuantWeight
from .triton_common import (
    INTERPRET,
    below,
    field_code,
    finish_tile,
    group_scale,
    launch,
    pair_bits,
    pair_halves,
    proxy_fenced,
)
from .triton_gemv import _split_range, flush_fields
from .workspace import tile_launch

__all__ = ["INTERPRET", "dequantize_lowbit", "tc_lowbit"]


@triton.jit
def _tc_step(packed_ptr, scales_ptr, zeros_ptr, rows, ok, c, j0, K, stride_pn, stride_sn,
             BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, JB: tl.constexpr, ONE_GROUP: tl.constexpr):
    """The HBM reads of one step (chunk ``c``, fields ``j0 .. j0 + JB`` of each halfword; nothing where ``ok`` is
    false): packed units ``[BN, CU, 1]`` (and the 3-bit high plane), and the scale and zero of the step's group
    (``[BN, 1, 1, 1]``, ``ONE_GROUP``) or of each field's (``[BN, 1, JB, 1]``)."""
    E: tl.constexpr = 16 if BITS == 3 else 32 // BITS
    V: tl.constexpr = E * CU
    u = c * CU + tl.arange(0, CU)[None, :, None]
    words = tl.load(packed_ptr + rows * stride_pn + u, mask=ok, other=0)
    high = words
    if BITS == 3:
        high = tl.load(packed_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_pn) + K // 8 + u, mask=ok,
                       other=0)
    meta = rows[:, :, :, None] * stride_sn
    ok4 = ok[:, :, :, None]
    if ONE_GROUP:
        g = (c * V + j0 * (2 * CU)) // GROUP
    else:
        g = (c * V + (j0 + tl.arange(0, JB))[None, None, :, None] * (2 * CU)) // GROUP
    s = tl.load(scales_ptr + meta + g, mask=ok4, other=0.0)
    z = tl.load(zeros_ptr + meta + g, mask=ok4, other=0.0)
    return words, high, s, z


@triton.jit
def _x_tile(x_ptr, offs_m, M, stride_xm, start, BLOCK_M: tl.constexpr, CU: tl.constexpr, JB: tl.constexpr,
            W_ORDER: tl.constexpr):
    """Activations of one step as ``[2 * JB * CU, BM]``: the run of values from ``start``. ``W_ORDER``: in the
    weight tile's column order (unit, field, halfword), loaded as such and permuted; else in memory order."""
    if W_ORDER:
        m = offs_m[:, None, None, None]  # [BM, 1, 1, 1]
        vv = tl.arange(0, CU)[None, :, None, None]
        jj = tl.arange(0, JB)[None, None, :, None]
        hh = tl.arange(0, 2)[None, None, None, :]
        x = tl.load(x_ptr + m * stride_xm + start + jj * (2 * CU) + 2 * vv + hh, mask=m < M, other=0.0)
        out = tl.reshape(tl.permute(x, (1, 2, 3, 0)), (2 * JB * CU, BLOCK_M))
    else:
        col = start + tl.arange(0, 2 * JB * CU)
        out = tl.load(x_ptr + offs_m[None, :] * stride_xm + col[:, None], mask=offs_m[None, :] < M, other=0.0)
    return out


@triton.jit
def _tc_lowbit_kernel(
    x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
    M, N, K, stride_xm, stride_pn, stride_sn, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, JB: tl.constexpr, HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr, X_PERMUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """A step takes fields ``j0 .. j0 + JB`` of both halfwords of one chunk's units: the ``2 JB C`` values from
    ``c V + 2 C j0``, in one quantization group (one scale and zero per row) or, where groups are shorter,
    in one group per field."""
    E: tl.constexpr = 16 if BITS == 3 else 32 // BITS
    H: tl.constexpr = E // 2  # fields per halfword (3 bits: of the low plane)
    V: tl.constexpr = E * CU
    SPC: tl.constexpr = H // JB  # steps per chunk
    ONE_GROUP: tl.constexpr = GROUP % (2 * JB * CU) == 0  # every step's run inside one group
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = offs_n[:, None, None]  # [BN, 1, 1]
    row_ok = rows < N
    jl = tl.arange(0, JB)[None, None, :]  # [1, 1, JB]
    first, last = _split_range(K // V * SPC, SPLIT_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    nxt = _tc_step(packed_ptr, scales_ptr, zeros_ptr, rows, row_ok & below(first, last, rows), first // SPC,
                   (first % SPC) * JB, K, stride_pn, stride_sn, BITS, GROUP, CU, JB, ONE_GROUP)
    for step in range(first, last):
        c = step // SPC
        j0 = (step % SPC) * JB
        words, high, s, z = nxt
        nxt = _tc_step(packed_ptr, scales_ptr, zeros_ptr, rows, row_ok & below(step + 1, last, rows), (step + 1) // SPC,
                       ((step + 1) % SPC) * JB, K, stride_pn, stride_sn, BITS, GROUP, CU, JB, ONE_GROUP)
        f = pair_halves(pair_bits(words, high, j0 + jl, BITS, True), tl.float16)  # [BN, CU, JB, 2] fp16: 2**b + q
        if x_ptr.dtype.element_ty == tl.float16 and scales_ptr.dtype.element_ty == tl.float16:
            w = (f - (z + (1 << BITS))) * s  # q - z exact in fp16 (integer zeros), one rounding: the reference's W_hat
        else:
            w = ((f.to(tl.float32) - (z.to(tl.float32) + (1 << BITS))) * s.to(tl.float32)).to(x_ptr.dtype.element_ty)
        xt = _x_tile(x_ptr, offs_m, M, stride_xm, c * V + j0 * (2 * CU), BLOCK_M, CU, JB, X_PERMUTED)
        if not X_PERMUTED:  # the weight tile takes the activations' (memory) order instead
            w = tl.permute(w, (0, 2, 1, 3))  # [BN, JB, CU, 2]
        acc = tl.dot(proxy_fenced(tl.reshape(w, (BLOCK_N, 2 * JB * CU))), xt, acc)
    tile_id = tl.program_id(2) * tl.num_programs(0) + pid_n
    finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, offs_n, offs_m, M, N, stride_om, tile_id, HAS_BIAS,
                SPLIT_K)


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
    H: tl.constexpr = E // 2
    ok2 = ok[:, :, :, None]
    col = c[:, :, :, None] * V + 2 * vv[:, :, :, None] + tl.arange(0, 2)[None, None, None, :]  # [1, BC, CU, 2]
    for j in tl.static_range(H):  # field j of both halfwords: values c V + 2 C j + (0 .. 2 C)
        if (2 * j) % FLUSH == 0:
            s, z = group_scale(scales_ptr, zeros_ptr, rows, stride_sn, (c * V + j * (2 * CU)) // GROUP, ok, BITS, False)
        lo = (field_code(words, high, j, BITS) - z) * s  # code - z exact, one rounding: W_hat
        hi = (field_code(words, high, H + j, BITS) - z) * s
        w = tl.join(lo, hi).to(out_ptr.dtype.element_ty)  # [BN, BC, CU, 2]
        tl.store(out_ptr + rows[:, :, :, None] * stride_on + col + j * (2 * CU), w, mask=ok2)


def _layout(weight: PackedQuantWeight, k: int) -> tuple[int, int, int]:
    """(units per chunk, values per chunk, fields per group run) of a packed weight."""
    cu = chunk_units(weight.bits, k)
    e = fields_per_unit(weight.bits)
    return cu, e * cu, flush_fields(weight.group, e * cu, cu, e)


def x_permuted(block_m: int, block_n: int) -> bool:
    """Which tile of a tensor-core step is permuted to meet the other's column order: the activations while
    they are the smaller tile, else the weights (the activations then load in memory order)."""
    return block_m < block_n


def launch_constants(bits: int, group: int, k: int, cfg: LaunchConfig, has_bias: bool) -> dict:
    """The tile kernel's compile-time constants for one launch (``aot_check`` compiles the same);
    :func:`~.configs.tc_step_fields` must allow the launch."""
    return {"BITS": bits, "GROUP": group, "CU": chunk_units(bits, k), "JB": tc_step_fields(bits, k, group, cfg.block_k),
            "HAS_BIAS": has_bias, "SPLIT_K": cfg.split_k, "X_PERMUTED": x_permuted(cfg.block_m, cfg.block_n),
            "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}


def tc_lowbit(x: torch.Tensor, weight: PackedQuantWeight, bias: torch.Tensor | None, cfg: LaunchConfig) -> torch.Tensor:
    """Launch the tensor-core kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``; a few
    rows of 2/4/8-bit codes go to :mod:`.triton_fielddot` (one dot per field)."""
    if triton_fielddot.fits(weight, x.dtype, cfg):
        return triton_fielddot.tc_fields(x, weight, bias, cfg)
    m, k = x.shape
    n = weight.n
    grid, out, ws, lock = tile_launch(x, n, cfg.block_n, cfg.block_m, cfg.split_k)
    launch(
        _tc_lowbit_kernel, grid,
        x, weight.packed, weight.scales, weight.zeros, x if bias is None else bias, out, ws, lock,
        m, n, k, x.stride(0), weight.packed.stride(0), weight.scales.stride(0), out.stride(0),
        **launch_constants(weight.bits, weight.group, k, cfg, bias is not None),  # JB: checked by ops
        **cfg.launch_options,
    )
    return out


def dequantize_lowbit(weight: PackedQuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """``W_hat: [N, K]`` in ``dtype`` (fp16/bf16), computed on the weight's device by one kernel."""
    n, k = weight.shape
    cu, chunk, flush = _layout(weight, k)
    block_c = max(1, 64 // cu)
    out = torch.empty(n, k, dtype=dtype, device=weight.device)
    grid = (triton.cdiv(n, 16), triton.cdiv(k // chunk, block_c))
    launch(
        _dequant_lowbit_kernel, grid,
        weight.packed, weight.scales, weight.zeros, out, n, k, weight.packed.stride(0), weight.scales.stride(0),
        out.stride(0), BITS=weight.bits, GROUP=weight.group, CU=cu, FLUSH=flush, BLOCK_N=16, BLOCK_C=block_c,
        num_warps=4,
    )
    return out
