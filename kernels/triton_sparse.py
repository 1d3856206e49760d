"""Triton tensor-core and dequantize kernels for 2:4 weights (fp16/bf16/fp32 kept values, or low-bit codes).

Imported lazily by :mod:`layerbudget.kernels.ops`; the launchers assume inputs validated there.

Triton has no sparse tensor-core dot, so each step expands the compressed weight to dense tiles in
registers and runs a dense ``tl.dot`` (this saves bandwidth, not FLOPs). A step takes ``BLOCK_C``
chunks; for each field ``e`` of their units (``FIELDS`` of them unrolled per iteration of a run-time
loop, :func:`~.configs.tc24_fields`), every group's two kept values (one word: two 16-bit values, or two codes
as the fp16 values ``2**b + q``) are spread over the group's four dense columns by two byte
permutes (:func:`~.triton_pairs.spread_selector`). The tile comes out in dense
column order, so the activations of a field are ``BLOCK_C`` contiguous runs of ``2 C`` columns,
multiplied in one ``tl.dot``. Codes are dequantized as the reference's ``W_hat``: with fp16 scales and
activations in the pair's word before spreading (``(t - (2**b + zero)) * scale`` on both halves), else
spread with ``2**b + zero`` in the empty columns and dequantized as a tile (exact zeros there).

Split-K: program ``(n, k, m)`` takes slice ``k`` of the steps; the slices meet in the workspace
(:func:`~.triton_common.finish_tile`). Dequantize kernel: writes the same tiles as the dense ``[N, K]``
weight for ``F.linear`` at large M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig, tc24_chunks, tc24_fields
from .sparse24 import Sparse24QuantWeight, Sparse24Weight, meta_layout
from .triton_common import (
    INTERPRET,
    finish_tile,
    launch,
    load_if,
    pair_halves,
    prmt,
    proxy_fenced,
    sub_mul_f16x2,
)
from .triton_gemv import _aligned, _split_range, flush_fields
from .triton_pairs import code_pairs, field_parts, meta_pairs, pair_codes, pair_words, spread_selector
from .workspace import tile_launch

__all__ = ["INTERPRET", "dequantize_sparse24", "tc_sparse24", "tc_sparse24_quant"]


@triton.jit
def _half_bits(v, DT: tl.constexpr):
    """Bit pattern (low 16 bits of an int32) of ``v`` rounded to the 16-bit float ``DT``."""
    return v.to(DT).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _group_meta(scales_ptr, zeros_ptr, rows, stride_sn, c, e, c_ok, V: tl.constexpr, CU: tl.constexpr,
                GROUP: tl.constexpr, BITS: tl.constexpr, EVEN: tl.constexpr):
    """Scale, ``2**b + zero`` and the fp16 word ``(2**b + zero, 2**b + zero)`` (the tile's filler) ``[BN, BC, 1]``
    of the group holding field ``e`` of chunks ``c``."""
    g = (c * V + e * CU) // GROUP
    s = load_if(scales_ptr + rows * stride_sn + g, c_ok, EVEN)
    z = load_if(zeros_ptr + rows * stride_sn + g, c_ok, EVEN)
    bits = ((15 + BITS) << 10) | (z.to(tl.int32) << (10 - BITS))  # fp16 2**b + zero (zeros are integers)
    return s, z, bits | (bits << 16)


@triton.jit
def _chunk_pairs(values_ptr, meta_base, rows, stride_vn, pidx, c_ok, K, QUANT: tl.constexpr, BITS: tl.constexpr,
                 E: tl.constexpr, CU: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):
    """The position words ``u0, u1`` of the chunks' pairs and, with ``QUANT``, their code pairs (see
    :func:`~.triton_pairs.code_pairs`; the position words stand in for them otherwise)."""
    u0, u1 = pair_words(load_if(meta_base + pidx, c_ok, EVEN), E, CU)
    lo = u0
    hi = u0
    hw_lo = u0
    hw_hi = u0
    if QUANT:
        lo, hi, hw_lo, hw_hi = code_pairs(values_ptr, rows, stride_vn, pidx, c_ok, K, BITS, CU, EVEN, WIDE)
    return u0, u1, lo, hi, hw_lo, hw_hi


@triton.jit
def _value_rows(values_ptr, rows, stride_vn, first, ii, DT: tl.constexpr):
    """Pointers to each pair's field-0 kept values (chunk's first kept value ``first``): one word of two when the
    values are stored in ``DT``, else the first of the two."""
    if values_ptr.dtype.element_ty == DT:
        out = values_ptr.to(tl.pointer_type(tl.int32)) + rows * (stride_vn // 2) + first // 2 + ii
    else:
        out = values_ptr + rows * stride_vn + first + 2 * ii
    return out


@triton.jit
def _field_tile(values_ptr, vrow, off, c_ok, u0, u1, lo, hi, hw_lo, hw_hi, s, z, fill, e0, f: tl.constexpr,
                FIELDS: tl.constexpr, QUANT: tl.constexpr, BITS: tl.constexpr, EVEN: tl.constexpr, DT: tl.constexpr):
    """Dense weights ``[BN, BC, CP, 2, 2]`` in ``DT`` of field ``e = e0 + f`` (fields ``e, e + 1`` when a chunk
    has one unit; ``e0``, a multiple of ``FIELDS``, may be known only at run time): pair ``i`` of chunk
    ``c`` covers dense columns ``2 (c V + e C) + 4 i .. + 4`` in order. Kept values (no ``QUANT``):
    ``vrow`` points at each pair's field-0 value pair (a word when the values are in ``DT``, else the
    first value), ``off`` pairs on."""
    k, r, upper, j = field_parts(e0, f, FIELDS, 8 if BITS == 3 else 16 // BITS)
    sel = spread_selector(u0, u1, k, r)
    if QUANT:
        two = pair_codes(lo, hi, hw_lo, hw_hi, upper, j, BITS, True)
        if DT == tl.float16 and s.dtype == tl.float16:  # dequantize the pair in its word, then spread it
            hs = _half_bits(s, tl.float16)
            two = sub_mul_f16x2(two, fill, hs | (hs << 16))  # t - cz exact (integer zeros), one rounding: W_hat
            w = pair_halves(tl.join(prmt(two, two * 0, sel), prmt(two, two * 0, sel >> 16)), tl.float16)
        else:
            t = pair_halves(tl.join(prmt(two, fill, sel), prmt(two, fill, sel >> 16)), tl.float16)
            cz = z[:, :, :, None, None].to(tl.float32) + (1 << BITS)
            w = ((t.to(tl.float32) - cz) * s[:, :, :, None, None].to(tl.float32)).to(DT)
    else:
        if values_ptr.dtype.element_ty == DT:  # the pair's two values are one word as stored
            two = load_if(vrow + off, c_ok, EVEN)
        else:
            wa = load_if(vrow + 2 * off, c_ok, EVEN)
            wb = load_if(vrow + 2 * off + 1, c_ok, EVEN)
            two = _half_bits(wa, DT) | (_half_bits(wb, DT) << 16)
        w = pair_halves(tl.join(prmt(two, two * 0, sel), prmt(two, two * 0, sel >> 16)), DT)
    return w


@triton.jit
def _tc_sparse24_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
    M, N, K, stride_xm, stride_vn, stride_mn, stride_sn, stride_om,
    QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, FLUSH: tl.constexpr,
    FIELDS: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``EVEN``: every step's chunks exist (no load is masked); ``WIDE``: code rows hold an even number of
    words; ``FLUSH``: fields per group run; ``FIELDS``: fields per iteration of the field loop (see
    :func:`~.configs.tc24_fields`); ``SPLIT_K``: slices of the steps, one per ``program_id(1)``, meeting in
    the workspace (:func:`~.triton_common.finish_tile`). Rows past ``N`` read row ``N - 1`` and are never
    stored."""
    E: tl.constexpr = (16 if BITS == 3 else 32 // BITS) if QUANT else 16
    V: tl.constexpr = E * CU
    CP: tl.constexpr = CU // 2 if CU > 1 else 1  # pairs per field of a chunk
    ESTEP: tl.constexpr = 1 if CU > 1 else 2
    BK: tl.constexpr = BLOCK_C * CP * 4  # dense columns of one field's tile
    DT: tl.constexpr = x_ptr.dtype.element_ty
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.minimum(offs_n, N - 1)[:, None, None]
    cc = tl.arange(0, BLOCK_C)[None, :, None]
    ii = tl.arange(0, CP)[None, None, :]
    t = tl.arange(0, BK)
    t_chunk = t // (CP * 4)  # chunk of the step each dense column of the tile belongs to
    t_col = t_chunk * (2 * V) + t % (CP * 4)  # its offset from column 2 (c0 V + e C)
    x_rows = tl.minimum(offs_m, M - 1)[None, :] * stride_xm  # rows past M read row M - 1, never stored
    num_chunks = (K // 2) // V
    meta_base = meta_pairs(meta_ptr, rows, stride_mn, E, CU)
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    s = tl.zeros((BLOCK_N, BLOCK_C, 1), scales_ptr.dtype.element_ty)
    z = s
    fill = tl.zeros((BLOCK_N, BLOCK_C, 1), tl.int32)
    if SPLIT_K == 1:
        it0, it1 = 0, tl.cdiv(num_chunks, BLOCK_C)
    else:
        it0, it1 = _split_range(tl.cdiv(num_chunks, BLOCK_C), SPLIT_K)
    for it in range(it0, it1):  # positions (and codes) of BLOCK_C chunks
        c = it * BLOCK_C + cc
        c_ok = c < num_chunks
        pidx = c * CP + ii
        u0, u1, lo, hi, hw_lo, hw_hi = _chunk_pairs(values_ptr, meta_base, rows, stride_vn, pidx, c_ok, K, QUANT, BITS,
                                                    E, CU, EVEN, WIDE)
        x_ok = (it * BLOCK_C + t_chunk) < num_chunks
        xs = x_ptr + x_rows + (2 * it * BLOCK_C * V + t_col)[:, None]  # [BK, BM] activations of field 0
        vrow = _value_rows(values_ptr, rows, stride_vn, c * V, ii, DT)
        # a run-time loop over runs of FIELDS fields, the loop Triton pipelines: one run's scales and
        # activations in flight per stage (an unrolled loop would buffer every field's); inside a run
        # the fields are unrolled, so what depends on the field's place in the run is a constant
        for e0 in tl.range(0, E, FIELDS):
            for f in tl.static_range(0, FIELDS, ESTEP):
                e = e0 + f
                if QUANT:
                    if f % FLUSH == 0:  # a group run starts here (or the run's first field)
                        s, z, fill = _group_meta(scales_ptr, zeros_ptr, rows, stride_sn, c, e, c_ok, V, CU, GROUP, BITS,
                                                 EVEN)
                w = _field_tile(values_ptr, vrow, (e * CU) // 2, c_ok, u0, u1, lo, hi, hw_lo, hw_hi, s, z, fill, e0, f,
                                FIELDS, QUANT, BITS, EVEN, DT)
                if EVEN:
                    xt = tl.load(xs + 2 * e * CU)
                else:
                    xt = tl.load(xs + 2 * e * CU, mask=x_ok[:, None], other=0.0)
                w = tl.reshape(w, (BLOCK_N, BK))
                if f == 0:  # the run's activations land together: one fence before its first dot
                    w = proxy_fenced(w)
                acc = tl.dot(w, xt, acc)
    tile_id = tl.program_id(2) * tl.num_programs(0) + pid_n
    finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, offs_n, offs_m, M, N, stride_om, tile_id, HAS_BIAS,
                SPLIT_K)


@triton.jit
def _dequant_sparse24_kernel(
    values_ptr, meta_ptr, scales_ptr, zeros_ptr, out_ptr, N, K, stride_vn, stride_mn, stride_sn, stride_on,
    QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, FLUSH: tl.constexpr,
    WIDE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    E: tl.constexpr = (16 if BITS == 3 else 32 // BITS) if QUANT else 16
    V: tl.constexpr = E * CU
    CP: tl.constexpr = CU // 2 if CU > 1 else 1
    ESTEP: tl.constexpr = 1 if CU > 1 else 2
    DT: tl.constexpr = out_ptr.dtype.element_ty
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)[:, None, None]
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :, None]
    ii = tl.arange(0, CP)[None, None, :]
    c_ok = c < (K // 2) // V
    pidx = c * CP + ii
    meta_base = meta_pairs(meta_ptr, rows, stride_mn, E, CU)
    u0, u1, lo, hi, hw_lo, hw_hi = _chunk_pairs(values_ptr, meta_base, rows, stride_vn, pidx, c_ok, K, QUANT, BITS, E,
                                                CU, False, WIDE)
    s = tl.zeros((BLOCK_N, BLOCK_C, 1), scales_ptr.dtype.element_ty)
    z = s
    fill = tl.zeros((BLOCK_N, BLOCK_C, 1), tl.int32)
    cols = tl.arange(0, CP * 4)[None, None, :]
    ok = (offs_n[:, None, None] < N) & c_ok
    vrow = _value_rows(values_ptr, rows, stride_vn, c * V, ii, DT)
    for e in tl.static_range(0, E, ESTEP):
        if QUANT:
            if e % FLUSH == 0:
                s, z, fill = _group_meta(scales_ptr, zeros_ptr, rows, stride_sn, c, e, c_ok, V, CU, GROUP, BITS, False)
        w = _field_tile(values_ptr, vrow, (e * CU) // 2, c_ok, u0, u1, lo, hi, hw_lo, hw_hi, s, z, fill, 0, e, E,
                        QUANT, BITS, False, DT)
        ptrs = out_ptr + offs_n[:, None, None] * stride_on + 2 * (c * V + e * CU) + cols
        tl.store(ptrs, tl.reshape(w, (BLOCK_N, BLOCK_C, CP * 4)), mask=ok)


def _layout(k: int, quant: bool, bits: int, group: int) -> tuple[int, int, int, int]:
    """(fields per unit, values per chunk, units per chunk, fields per group run) of a 2:4 weight."""
    e, chunk = meta_layout(k, bits if quant else None)
    cu = chunk // e
    return e, chunk, cu, flush_fields(group, chunk, cu, e) if quant else 1


def launch_constants(quant: bool, bits: int, group: int, k: int, cfg: LaunchConfig, wide: bool,
                     has_bias: bool) -> dict:
    """The tensor-core kernel's compile-time constants for one launch (``aot_check`` compiles the same), as
    :func:`~.triton_gemv.sparse24_constants` for the decode kernel."""
    e, chunk, cu, flush = _layout(k, quant, bits, group)
    fields = tc24_fields(cfg.block_m, cu, quant)
    block_c = tc24_chunks(cu, cfg.block_k, fields)
    return {"QUANT": quant, "BITS": bits, "GROUP": group, "CU": cu, "FLUSH": flush, "FIELDS": fields,
            "EVEN": (k // 2 // chunk) % block_c == 0, "WIDE": wide, "HAS_BIAS": has_bias, "SPLIT_K": cfg.split_k,
            "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_C": block_c}


def _launch(x, values, meta, scales, zeros, bias, n, quant, bits, group, cfg: LaunchConfig) -> torch.Tensor:
    m, k = x.shape
    grid, out, ws, lock = tile_launch(x, n, cfg.block_n, cfg.block_m, cfg.split_k)
    launch(
        _tc_sparse24_kernel, grid,
        x, _aligned(values), _aligned(meta), scales, zeros, x if bias is None else bias, out, ws, lock,
        m, n, k, x.stride(0), values.stride(0), meta.stride(0), scales.stride(0), out.stride(0),
        **launch_constants(quant, bits, group, k, cfg, values.stride(0) % 2 == 0, bias is not None),
        **cfg.launch_options,
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
    e, chunk, cu, flush = _layout(k, quant, bits, group)
    block_c = max(1, 32 // cu)
    out = torch.empty(n, k, dtype=dtype, device=weight.device)
    grid = (triton.cdiv(n, 16), triton.cdiv((k // 2) // chunk, block_c))
    launch(
        _dequant_sparse24_kernel, grid,
        _aligned(values), _aligned(weight.meta), scales, zeros, out, n, k, values.stride(0), weight.meta.stride(0),
        scales.stride(0), out.stride(0), QUANT=quant, BITS=bits, GROUP=group, CU=cu, FLUSH=flush,
        WIDE=values.stride(0) % 2 == 0, BLOCK_N=16, BLOCK_C=block_c, num_warps=4,
    )
    return out
