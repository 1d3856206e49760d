"""Triton tensor-core kernel for few activation rows of 2/3/4/8-bit weights: one ``tl.dot`` per packed field.

Imported lazily through :mod:`layerbudget.kernels.triton_lowbit`, whose ``tc_lowbit`` launches it where
:func:`fits` holds; the launcher assumes inputs validated by :mod:`layerbudget.kernels.ops`.

The packed row is read as 16-bit halfwords: field ``j`` of a chunk's ``2 C`` halfwords covers the
``2 C`` consecutive values from ``2 C j`` (the halfword layout of :mod:`layerbudget.kernels.packing`).
For each ``j`` the tile of halfwords ``[BN, 2C]`` becomes, with one shift and one mask-and-exponent
per word (both halves at once), the 16-bit floats ``2**BITS + q``, the left operand of a ``tl.dot``
whose right operand is that contiguous slice of activations: no reshape, no permute and no
shared-memory round trip of the weights (Triton keeps the elementwise chain in the dot operand's
registers). A second dot with a tile of ones gives the sums of the same activations, so a group's
run of fields enters as ``s * (Σ (2**BITS + q) x - (2**BITS + z) Σ x)`` in fp32 after its dots.
3-bit codes add one dot per field for the high plane, read as bytes widened to halfwords
(:func:`high_programs`). Split-K programs meet in
the shared workspace as in :func:`~.triton_common.finish_tile`.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig, field_dots
from .packing import chunk_units, fields_per_unit
from .quant_weight import PackedQuantWeight
from .triton_common import INLINE_PTX, INTERPRET, finish_tile, launch, proxy_fenced, shift_to
from .triton_gemv import _split_range
from .workspace import tile_launch

__all__ = ["INTERPRET", "fits", "tc_fields"]


def fits(weight: PackedQuantWeight, dtype: torch.dtype, cfg: LaunchConfig) -> bool:
    """Whether this kernel takes the launch: :func:`~.configs.field_dots` for the weight and the config's rows,
    and with bf16 activations only 2/4-bit codes (bf16's 8-bit mantissa holds neither ``2**8 + q`` nor the
    3-bit high plane's ``32 + 4 q``)."""
    return (cfg.kernel == "tc" and field_dots(weight.bits, weight.group, weight.k, cfg.block_m)
            and not (weight.bits in (3, 8) and dtype == torch.bfloat16))


@functools.cache
def field_programs(bits: int, bf16: bool) -> tuple[str, ...]:
    """PTX per field ``j`` of a halfword: move the field to the top of the 16-bit float's mantissa in both
    halves of the word (one shift), keep it and set the exponent of ``2**bits`` (one ``lop3``)."""
    top = (7 if bf16 else 10) - bits
    exp = ((127 if bf16 else 15) + bits) << (7 if bf16 else 10)
    mask = ((1 << bits) - 1) << top
    out = []
    for j in range(16 // bits):
        s = top - j * bits
        move = f"shl.b32 t, $1, {s};" if s > 0 else f"shr.u32 t, $1, {-s};" if s < 0 else "mov.b32 t, $1;"
        out.append("{ .reg .b32 t; " + move + f" lop3.b32 $0, t, {mask * 0x10001}, {exp * 0x10001}, 0xEA; }}")
    return tuple(out)


@functools.cache
def high_programs() -> tuple[str, ...]:
    """PTX per bit ``j`` of the 3-bit high plane, its bytes widened to halfwords (two per word, sign-extended):
    move bit ``j`` of each half to its bit 7 (one shift; what lands above bit 7 is masked), keep it and set
    the exponent of 32 (one ``lop3``): each half reads ``32 + 4 * bit``. Both halves alike, so the order in
    which Triton packs elements into a word does not matter."""
    return tuple("{ .reg .b32 t; " f"shl.b32 t, $1, {7 - j}; lop3.b32 $0, t, 0x00800080, 0x50005000, 0xEA; }}"
                 for j in range(8))


@triton.jit
def _field(h16, j: tl.constexpr, BITS: tl.constexpr, DT: tl.constexpr):
    """Field ``j`` of every halfword as ``2**BITS + q`` in ``DT`` (plain Triton: the interpreter's code)."""
    if DT == tl.bfloat16:
        TOP: tl.constexpr = 7 - BITS
        EXP: tl.constexpr = (127 + BITS) << 7
    else:
        TOP: tl.constexpr = 10 - BITS
        EXP: tl.constexpr = (15 + BITS) << 10
    v = h16.to(tl.int32) & 0xFFFF
    bits = (shift_to(v, TOP - j * BITS) & (((1 << BITS) - 1) << TOP)) | EXP
    return bits.to(tl.int16).to(DT, bitcast=True)


@triton.jit
def _activations(x_rows, ok, start):
    """The dot's right operand ``[2 CU, ROWS]``: values ``start ..`` of the activation rows (``x_rows``: ``[ROWS,
    2 CU]`` pointers to each row's first ``2 CU`` values, read where ``ok``)."""
    return tl.trans(tl.load(x_rows + start, mask=ok, other=0.0))


@triton.jit
def _tc_fields_kernel(
    x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
    M, N, K, stride_xm, stride_pn, stride_sn, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, RUN: tl.constexpr,
    PROGRAMS: tl.constexpr, HIGH: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, WARPGROUPS: tl.constexpr,
):
    """``RUN`` fields of each halfword lie in one group for every chunk (a divisor of both ``H`` and the
    fields per group, ``GROUP / 2 CU``); their dots share one pair of fp32 accumulators, closed with the run's
    scale and zero. 3 bits: the low plane's 2-bit fields give ``4 + lo`` and the high plane, read as bytes
    (byte ``s`` holds the high bits of halfword ``s``) widened to halfwords, ``32 + 4 hi`` in a second dot into the same sums:
    ``36 + q`` in all. ``WARPGROUPS``: the warps make whole warpgroups, so the dots may compile to ``wgmma``
    (at 16 rows and more), whose copied activations need a proxy fence (:func:`~.triton_common.proxy_fenced`)."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    H: tl.constexpr = 8 if BITS == 3 else 16 // BITS
    LOW: tl.constexpr = 2 if BITS == 3 else BITS  # bits of each halfword field
    OFFSET: tl.constexpr = 36 if BITS == 3 else 1 << BITS  # what the dots add to every code
    V: tl.constexpr = 2 * H * CU
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)[:, None]  # [BN, 1]; rows past N read row N - 1 (never stored)
    offs_m = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    x_rows = x_ptr + tl.minimum(offs_m, M - 1)[:, None] * stride_xm + tl.arange(0, 2 * CU)[None, :]  # [ROWS, 2 CU]
    x_ok = (offs_m < M)[:, None]
    halves = packed_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_pn) + tl.arange(0, 2 * CU)[None, :]
    plane = packed_ptr.to(tl.pointer_type(tl.int8)) + rows * (4 * stride_pn) + K // 4 + tl.arange(0, 2 * CU)[None, :]
    ones = tl.full((BLOCK_N, 2 * CU), 1.0, DT)
    acc = tl.zeros((BLOCK_N, ROWS), tl.float32)
    first, last = _split_range(K // V, SPLIT_K)
    for c in range(first, last):
        h16 = tl.load(halves + c * (2 * CU))  # [BN, 2 CU]: the chunk's halfwords
        if BITS == 3:
            hb = tl.load(plane + c * (2 * CU)).to(tl.int16)  # [BN, 2 CU]: the high bits of the same halfwords
        for j in tl.static_range(H):
            if j % RUN == 0:
                prod = tl.zeros((BLOCK_N, ROWS), tl.float32)
                xsum = tl.zeros((BLOCK_N, ROWS), tl.float32)
            if INLINE_PTX:
                w = tl.inline_asm_elementwise(PROGRAMS[j], "=r,r", [h16], dtype=x_ptr.dtype.element_ty, is_pure=True,
                                              pack=2)
            else:
                w = _field(h16, j, LOW, DT)
            xt = _activations(x_rows, x_ok, c * V + j * (2 * CU))
            if WARPGROUPS:
                w = proxy_fenced(w)
            prod = tl.dot(w, xt, prod)
            if BITS == 3:
                if INLINE_PTX:
                    hi = tl.inline_asm_elementwise(HIGH[j], "=r,r", [hb], dtype=x_ptr.dtype.element_ty,
                                                   is_pure=True, pack=2)
                else:
                    hi = (((hb.to(tl.int32) >> j) & 1) * 4 + 32).to(DT)
                prod = tl.dot(hi, xt, prod)
            xsum = tl.dot(ones, xt, xsum)
            if j % RUN == RUN - 1:  # the run ends: its group's scale and zero
                g = (c * V + (j + 1 - RUN) * (2 * CU)) // GROUP
                s = tl.load(scales_ptr + rows * stride_sn + g).to(tl.float32)
                z = tl.load(zeros_ptr + rows * stride_sn + g).to(tl.float32)
                acc += s * (prod - (z + OFFSET) * xsum)
    tile_id = tl.program_id(2) * tl.num_programs(0) + pid_n
    finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, offs_n, offs_m, M, N, stride_om, tile_id, HAS_BIAS,
                SPLIT_K)


def launch_constants(bits: int, group: int, k: int, bf16: bool, cfg: LaunchConfig, has_bias: bool) -> dict:
    """The kernel's compile-time constants for one launch (``aot_check`` compiles the same)."""
    cu, e = chunk_units(bits, k), fields_per_unit(bits)
    return {"BITS": bits, "GROUP": group, "CU": cu, "RUN": math.gcd(group // (2 * cu), e // 2),
            "PROGRAMS": field_programs(2 if bits == 3 else bits, bf16), "HIGH": high_programs(), "HAS_BIAS": has_bias,
            "SPLIT_K": cfg.split_k, "ROWS": cfg.block_m, "BLOCK_N": cfg.block_n, "WARPGROUPS": cfg.num_warps % 4 == 0}


def tc_fields(x: torch.Tensor, weight: PackedQuantWeight, bias: torch.Tensor | None, cfg: LaunchConfig) -> torch.Tensor:
    """Launch the kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype`` (:func:`fits` holds)."""
    m, k = x.shape
    n = weight.n
    grid, out, ws, lock = tile_launch(x, n, cfg.block_n, cfg.block_m, cfg.split_k)
    launch(
        _tc_fields_kernel, grid,
        x, weight.packed, weight.scales, weight.zeros, x if bias is None else bias, out, ws, lock,
        m, n, k, x.stride(0), weight.packed.stride(0), weight.scales.stride(0), out.stride(0),
        **launch_constants(weight.bits, weight.group, k, x.dtype == torch.bfloat16, cfg, bias is not None),
        **cfg.launch_options,
    )
    return out
