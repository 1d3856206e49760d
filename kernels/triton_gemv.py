"""Triton decode kernels (few activation rows): ``y = x @ W_hat^T (+ bias)`` on CUDA cores, one FMA per weight.

Imported lazily by :mod:`layerbudget.kernels.ops`; the launchers assume inputs validated there.

A program owns ``BLOCK_N`` weight rows, up to ``BLOCK_M`` (1, 2 or 4) activation rows and one
contiguous slice of the K chunks (split-K). Each step loads ``[BLOCK_N, BLOCK_C, C]`` packed
units (16-byte loads along each chunk's ``C`` units), and for every field ``j`` of the units' halfwords
multiplies the extracted codes of the low and then the high halfwords with the activations they
cover (a word of two activations serves both: the halfword layout of :mod:`layerbudget.kernels.packing`),
accumulating in fp32 registers; no tensor-core tile, no reshape. Low-bit codes enter as ``q - z``
times a power of two: a field of both halfwords masked where it sits under a zero fp16 exponent (one
shift by 8 serves the fields past the mantissa), scaled to the codes' common unit and less the zero
in one ``fma.f16x2`` (:func:`~.triton_common.field_less_zero`; exact: integers below 2**10 times a
power of two), then converted to fp32; the scale is
applied once per group and row: ``s * Σ (q - z) x``. With ``num_stages >= 2`` the low-bit kernel reads the
next step's packed units, scales and zeros before it computes the current step (memory latency
overlaps arithmetic, for more registers); with 1 it reads each step where it starts.
2:4 kernels take a group's two kept values together and pick their two activations out of the group's
four with one byte permute (``prmt``) steered by the positions.
Split-K programs meet in a self-cleaning fp32 workspace (:func:`~.triton_common.arrive`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import LaunchConfig
from .packing import chunk_units, fields_per_unit
from .quant_weight import PackedQuantWeight
from .sparse24 import Sparse24QuantWeight, Sparse24Weight, meta_layout
from .triton_common import (
    INTERPRET,
    arrive,
    below,
    field_less_zero,
    group_scale,
    half_float,
    half_pair,
    half_to_float,
    launch,
    load_if,
    prmt,
    release,
    store_out,
    take,
)
from .triton_pairs import code_pairs, meta_pairs, pair_words, pick_selector
from .workspace import tile_launch

__all__ = ["INTERPRET", "gemv_lowbit", "gemv_sparse24", "gemv_sparse24_quant"]


@triton.jit
def _x_words(x_ptr, m, stride_xm, M, pidx, mask, EVEN: tl.constexpr):
    """Activations of row ``m`` at value pairs ``pidx`` (values ``2 pidx`` and ``2 pidx + 1``), each pair one int32
    word of two 16-bit floats (0 where masked, unless ``EVEN``: every index exists). Rows past ``M`` read row
    ``M - 1``: their sums are never stored."""
    return load_if(x_ptr.to(tl.pointer_type(tl.int32)) + tl.minimum(m, M - 1) * (stride_xm // 2) + pidx, mask, EVEN)


@triton.jit
def _row_sums(acc):
    return tl.sum(tl.sum(acc, axis=2), axis=1)


@triton.jit
def _finish(r0, r1, r2, r3, out_ptr, bias_ptr, ws_ptr, lock_ptr, m0, offs_n, M, N, stride_om, tile_id,
            HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """Write up to four output rows (``m0 .. m0 + BLOCK_M``), directly or through the split-K workspace."""
    nm = offs_n < N
    if SPLIT_K == 1:
        store_out(r0, out_ptr + m0 * stride_om + offs_n, bias_ptr + offs_n, nm & below(m0, M, offs_n), nm, HAS_BIAS)
        if BLOCK_M > 1:
            store_out(r1, out_ptr + (m0 + 1) * stride_om + offs_n, bias_ptr + offs_n, nm & below(m0 + 1, M, offs_n), nm,
                      HAS_BIAS)
        if BLOCK_M > 2:
            store_out(r2, out_ptr + (m0 + 2) * stride_om + offs_n, bias_ptr + offs_n, nm & below(m0 + 2, M, offs_n), nm,
                      HAS_BIAS)
            store_out(r3, out_ptr + (m0 + 3) * stride_om + offs_n, bias_ptr + offs_n, nm & below(m0 + 3, M, offs_n), nm,
                      HAS_BIAS)
    else:
        tl.atomic_add(ws_ptr + m0 * N + offs_n, r0, mask=nm & below(m0, M, offs_n))
        if BLOCK_M > 1:
            tl.atomic_add(ws_ptr + (m0 + 1) * N + offs_n, r1, mask=nm & below(m0 + 1, M, offs_n))
        if BLOCK_M > 2:
            tl.atomic_add(ws_ptr + (m0 + 2) * N + offs_n, r2, mask=nm & below(m0 + 2, M, offs_n))
            tl.atomic_add(ws_ptr + (m0 + 3) * N + offs_n, r3, mask=nm & below(m0 + 3, M, offs_n))
        if arrive(lock_ptr, tile_id) == SPLIT_K - 1:
            for i in tl.static_range(BLOCK_M):
                mask = nm & below(m0 + i, M, offs_n)
                total = take(ws_ptr + (m0 + i) * N + offs_n, mask)
                store_out(total, out_ptr + (m0 + i) * stride_om + offs_n, bias_ptr + offs_n, mask, nm, HAS_BIAS)
            release(lock_ptr, tile_id)


@triton.jit
def _scale_group(acc0, acc1, acc2, acc3, p0, p1, p2, p3, s, BLOCK_M: tl.constexpr):
    """A quantization group ends: each row's sums (of codes less the zero) enter as ``s * Σ (q - z) x``."""
    acc0 += s * p0
    if BLOCK_M > 1:
        acc1 += s * p1
    if BLOCK_M > 2:
        acc2 += s * p2
        acc3 += s * p3
    return acc0, acc1, acc2, acc3


@triton.jit
def _split_range(num_it, SPLIT_K: tl.constexpr):
    per_split = tl.cdiv(num_it, SPLIT_K)
    start = tl.program_id(1) * per_split
    return start, tl.minimum(start + per_split, num_it)


@triton.jit
def _lowbit_step(packed_ptr, high_base, scales_ptr, zeros_ptr, rows, c, limit, stride_pn, stride_sn,
                 BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, V: tl.constexpr, vv):
    """The HBM reads of one step: packed units ``[BN, BC, CU]`` (and the 3-bit high plane) of chunks ``c``, and
    the scale and zero (:func:`~.triton_common.group_scale`) of each chunk's first group. Chunks at or past
    ``limit`` (at most the row's chunks) read chunk ``limit - 1`` (a read-ahead past a split's end, or a
    partial last step whose activations are masked), so no read is masked."""
    c = tl.minimum(c, limit - 1)
    u = c * CU + vv
    words = tl.load(packed_ptr + rows * stride_pn + u)
    high = words
    if BITS == 3:
        high = tl.load(high_base + u).to(tl.int32)
    s, z = group_scale(scales_ptr, zeros_ptr, rows, stride_sn, (c * V) // GROUP, None, BITS, True)
    return words, high, s, z


@triton.jit
def _gemv_lowbit_kernel(
    x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
    M, N, K, stride_xm, stride_pn, stride_sn, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, FLUSH: tl.constexpr,
    EVEN: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``EVEN``: every step's chunks exist, so no activation read is masked. Rows past ``N`` read row
    ``N - 1`` (never stored)."""
    E: tl.constexpr = 16 if BITS == 3 else 32 // BITS
    V: tl.constexpr = E * CU
    XBF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    pid_n = tl.program_id(0)
    m0 = tl.program_id(2) * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)[:, None, None]  # [BN, 1, 1]
    cc = tl.arange(0, BLOCK_C)[None, :, None]  # [1, BC, 1]
    vv = tl.arange(0, CU)[None, None, :]  # [1, 1, CU]
    num_chunks = K // V
    it0, it1 = _split_range(tl.cdiv(num_chunks, BLOCK_C), SPLIT_K)
    acc0 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
    acc1 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
    acc3 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
    high_base = packed_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_pn) + K // 8
    # the read-ahead past this split's last step reads that step's chunks again (its own, cached), not the next
    # split's: no chunk is fetched by two programs
    ahead = tl.minimum(it1 * BLOCK_C, num_chunks)
    if PREFETCH:
        nxt = _lowbit_step(packed_ptr, high_base, scales_ptr, zeros_ptr, rows, it0 * BLOCK_C + cc, ahead,
                           stride_pn, stride_sn, BITS, GROUP, CU, V, vv)
    for it in range(it0, it1):
        c = it * BLOCK_C + cc  # [1, BC, 1] chunk
        c_ok = c < num_chunks
        if PREFETCH:  # this step's reads were issued by the step before; issue the next step's now
            words, high, s, cz = nxt
            nxt = _lowbit_step(packed_ptr, high_base, scales_ptr, zeros_ptr, rows, c + BLOCK_C, ahead,
                               stride_pn, stride_sn, BITS, GROUP, CU, V, vv)
        else:
            words, high, s, cz = _lowbit_step(packed_ptr, high_base, scales_ptr, zeros_ptr, rows, c, num_chunks,
                                              stride_pn, stride_sn, BITS, GROUP, CU, V, vv)
        pbase = c * (V // 2) + vv  # activation pair of field 0 of each unit: its low and high halfword's values
        for t in tl.static_range(E):  # field t // 2 of the low halfwords, then of the high ones
            if t % FLUSH == 0:  # a new quantization group starts at this field
                if t > 0:
                    g = (tl.minimum(c, ahead - 1) * V + (t // 2) * (2 * CU)) // GROUP  # [1, BC, 1]
                    s, cz = group_scale(scales_ptr, zeros_ptr, rows, stride_sn, g, None, BITS, True)
                p0 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
                p1 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
                p2 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
                p3 = tl.zeros((BLOCK_N, BLOCK_C, CU), tl.float32)
            if t % 2 == 0:  # field t // 2 of both halfwords less the zero: (q - z) * 2**(position - 24), exact
                fz = field_less_zero(words, high, t // 2, BITS, half_pair(cz))
            f = half_float(fz, t % 2 == 1)
            if t % 2 == 0:  # the activation pairs of field t // 2, read once for both halfwords
                pidx = pbase + (t // 2) * CU
                w0 = _x_words(x_ptr, m0, stride_xm, M, pidx, c_ok, EVEN)
                if BLOCK_M > 1:
                    w1 = _x_words(x_ptr, m0 + 1, stride_xm, M, pidx, c_ok, EVEN)
                if BLOCK_M > 2:
                    w2 = _x_words(x_ptr, m0 + 2, stride_xm, M, pidx, c_ok, EVEN)
                    w3 = _x_words(x_ptr, m0 + 3, stride_xm, M, pidx, c_ok, EVEN)
            p0 += f * half_to_float(w0, t % 2 == 1, XBF16)
            if BLOCK_M > 1:
                p1 += f * half_to_float(w1, t % 2 == 1, XBF16)
            if BLOCK_M > 2:
                p2 += f * half_to_float(w2, t % 2 == 1, XBF16)
                p3 += f * half_to_float(w3, t % 2 == 1, XBF16)
            if t % FLUSH == FLUSH - 1:  # the group ends
                acc0, acc1, acc2, acc3 = _scale_group(acc0, acc1, acc2, acc3, p0, p1, p2, p3, s, BLOCK_M)
    tile_id = tl.program_id(2) * tl.num_programs(0) + pid_n
    _finish(_row_sums(acc0), _row_sums(acc1), _row_sums(acc2), _row_sums(acc3), out_ptr, bias_ptr, ws_ptr,
            lock_ptr, m0, offs_n, M, N, stride_om, tile_id, HAS_BIAS, SPLIT_K, BLOCK_M)


@triton.jit
def _x_pair(x_ptr, m, stride_xm, M, kh, mask, sel, BF16: tl.constexpr, EVEN: tl.constexpr):
    """Activations of row ``m`` at a group's two kept positions as fp32: the group's four values (one 8-byte
    load at pair index ``kh``) through :func:`prmt` with ``sel`` (0 where masked). Rows past ``M`` read row
    ``M - 1``: their sums are never stored."""
    m = tl.minimum(m, M - 1)
    x4 = load_if(x_ptr.to(tl.pointer_type(tl.int64)) + m * (stride_xm // 4) + kh, mask, EVEN)
    two = prmt(x4.to(tl.int32), (x4 >> 32).to(tl.int32), sel)
    return half_to_float(two, False, BF16), half_to_float(two, True, BF16)


@triton.jit
def _take_row(x_ptr, m, stride_xm, M, kh, c_ok, sel, wa, wb, p, XBF16: tl.constexpr, EVEN: tl.constexpr):
    """Row ``m``'s share of one field: ``p += wa x[p0] + wb x[p1]``."""
    xa, xb = _x_pair(x_ptr, m, stride_xm, M, kh, c_ok, sel, XBF16, EVEN)
    p += wa * xa
    p += wb * xb
    return p


@triton.jit
def _gemv_sparse24_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
    M, N, K, stride_xm, stride_vn, stride_mn, stride_sn, stride_om,
    QUANT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CU: tl.constexpr, FLUSH: tl.constexpr,
    EVEN: tl.constexpr, WIDE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """2:4 kernels: kept values (fp16/bf16/fp32, or low-bit codes with ``QUANT``) and their positions.

    The two kept values of a group are handled together: their positions select the pair's two
    activations out of the group's four with one ``prmt`` (no gather), and their values (two
    16-bit values in one word, or two codes of neighbouring units less their group's zero, one
    ``fma.f16x2`` for both, exact) are multiplied with them; a quantization group's sums take its scale
    once. A
    group's pair sits in neighbouring units of one field (``CU`` > 1) or in fields ``e, e + 1`` of one
    unit (``CU`` = 1); with ``QUANT`` code units and position units line up (see :mod:`.sparse24`).
    Rows past ``N`` read row ``N - 1`` (never stored); ``EVEN``: every step's chunks exist, so no load
    is masked; ``WIDE``: see :func:`~.triton_pairs.code_pairs`.
    """
    E: tl.constexpr = (16 if BITS == 3 else 32 // BITS) if QUANT else 16
    H: tl.constexpr = E // 2  # code fields per halfword
    V: tl.constexpr = E * CU
    CP: tl.constexpr = CU // 2 if CU > 1 else 1  # pairs per field of a chunk
    ESTEP: tl.constexpr = 1 if CU > 1 else 2
    XBF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    VBF16: tl.constexpr = values_ptr.dtype.element_ty == tl.bfloat16
    pid_n = tl.program_id(0)
    m0 = tl.program_id(2) * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)[:, None, None]
    cc = tl.arange(0, BLOCK_C)[None, :, None]
    ii = tl.arange(0, CP)[None, None, :]
    num_chunks = (K // 2) // V
    it0, it1 = _split_range(tl.cdiv(num_chunks, BLOCK_C), SPLIT_K)
    acc0 = tl.zeros((BLOCK_N, BLOCK_C, CP), tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    p0 = acc0  # without QUANT these are the sums; with it, one quantization group's
    p1 = acc0
    p2 = acc0
    p3 = acc0
    s = tl.zeros((BLOCK_N, BLOCK_C, 1), tl.float32)
    zz = s.to(tl.int32)
    meta_base = meta_pairs(meta_ptr, rows, stride_mn, E, CU)
    for it in range(it0, it1):
        c = it * BLOCK_C + cc
        c_ok = c < num_chunks
        pidx = c * CP + ii  # [1, BC, CP] pair of units
        u0, u1 = pair_words(load_if(meta_base + pidx, c_ok, EVEN), E, CU)
        if QUANT:
            lo, hi, hw_lo, hw_hi = code_pairs(values_ptr, rows, stride_vn, pidx, c_ok, K, BITS, CU, EVEN, WIDE)
        for e in tl.static_range(0, E, ESTEP):
            kh = (c * V + e * CU) // 2 + ii  # the pair's first kept value, halved: its 4 activations' index
            sel = pick_selector(u0, u1, e)
            if QUANT:
                if e % FLUSH == 0:  # a new quantization group starts at this field
                    s, cz = group_scale(scales_ptr, zeros_ptr, rows, stride_sn, (c * V + e * CU) // GROUP, c_ok, BITS,
                                         EVEN)
                    zz = half_pair(cz)  # the zero in the codes' fp16 units (exact), in both halves
                    p0 = tl.zeros((BLOCK_N, BLOCK_C, CP), tl.float32)
                    p1 = p0
                    p2 = p0
                    p3 = p0
                if e >= H:  # field e % H of the upper halfwords
                    two = field_less_zero(hi, hw_hi, e % H, BITS, zz)
                else:
                    two = field_less_zero(lo, hw_lo, e % H, BITS, zz)
                wa = half_float(two, False)  # the pair's two codes less the zero, as field_code reads codes
                wb = half_float(two, True)
            elif values_ptr.dtype.element_ty == tl.float32:
                wa = load_if(values_ptr + rows * stride_vn + 2 * kh, c_ok, EVEN)
                wb = load_if(values_ptr + rows * stride_vn + 2 * kh + 1, c_ok, EVEN)
            else:
                two = load_if(values_ptr.to(tl.pointer_type(tl.int32)) + rows * (stride_vn // 2) + kh, c_ok, EVEN)
                wa = half_to_float(two, False, VBF16)
                wb = half_to_float(two, True, VBF16)
            p0 = _take_row(x_ptr, m0, stride_xm, M, kh, c_ok, sel, wa, wb, p0, XBF16, EVEN)
            if BLOCK_M > 1:
                p1 = _take_row(x_ptr, m0 + 1, stride_xm, M, kh, c_ok, sel, wa, wb, p1, XBF16, EVEN)
            if BLOCK_M > 2:
                p2 = _take_row(x_ptr, m0 + 2, stride_xm, M, kh, c_ok, sel, wa, wb, p2, XBF16, EVEN)
                p3 = _take_row(x_ptr, m0 + 3, stride_xm, M, kh, c_ok, sel, wa, wb, p3, XBF16, EVEN)
            if QUANT:
                if (e + ESTEP) % FLUSH == 0:  # the group ends: its sums take the scale
                    acc0, acc1, acc2, acc3 = _scale_group(acc0, acc1, acc2, acc3, p0, p1, p2, p3, s, BLOCK_M)
    if not QUANT:
        acc0 = p0
        acc1 = p1
        acc2 = p2
        acc3 = p3
    tile_id = tl.program_id(2) * tl.num_programs(0) + pid_n
    _finish(_row_sums(acc0), _row_sums(acc1), _row_sums(acc2), _row_sums(acc3), out_ptr, bias_ptr, ws_ptr,
            lock_ptr, m0, offs_n, M, N, stride_om, tile_id, HAS_BIAS, SPLIT_K, BLOCK_M)


def flush_fields(group: int, chunk: int, cu: int, e: int) -> int:
    """Fields per group run inside a chunk: ``E`` (groups cover whole chunks), ``group / CU`` (a chunk holds
    whole groups), else 1 (a group may change at any field)."""
    if group % chunk == 0:
        return e
    if chunk % group == 0:
        return group // cu
    return 1


def _step_chunks(cfg: LaunchConfig, chunk: int) -> int:
    """Chunks of ``chunk`` values per step: ``cfg.block_k`` values, rounded down to a power of two (at least 1)."""
    block_c = max(1, cfg.block_k // chunk)
    return 1 << (block_c.bit_length() - 1)


def lowbit_constants(bits: int, group: int, k: int, cfg: LaunchConfig, has_bias: bool) -> dict:
    """The low-bit decode kernel's compile-time constants for one launch (``aot_check`` compiles the same)."""
    cu, e = chunk_units(bits, k), fields_per_unit(bits)
    chunk = e * cu
    block_c = _step_chunks(cfg, chunk)
    return {"BITS": bits, "GROUP": group, "CU": cu, "FLUSH": flush_fields(group, chunk, cu, e),
            "EVEN": (k // chunk) % block_c == 0, "HAS_BIAS": has_bias, "SPLIT_K": cfg.split_k,
            "PREFETCH": cfg.num_stages >= 2, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_C": block_c}


def sparse24_constants(quant: bool, bits: int, group: int, k: int, cfg: LaunchConfig, wide: bool,
                       has_bias: bool) -> dict:
    """The 2:4 decode kernel's compile-time constants for one launch (``aot_check`` compiles the same):
    ``bits``-bit codes in groups of ``group`` where ``quant``, else 16-bit kept values; ``wide``: each row
    of ``values`` holds an even number of elements (see :func:`~.triton_pairs.code_pairs`)."""
    e, chunk = meta_layout(k, bits if quant else None)
    cu = chunk // e
    block_c = _step_chunks(cfg, chunk)
    return {"QUANT": quant, "BITS": bits, "GROUP": group, "CU": cu,
            "FLUSH": flush_fields(group, chunk, cu, e) if quant else 1, "EVEN": (k // 2 // chunk) % block_c == 0,
            "WIDE": wide, "HAS_BIAS": has_bias, "SPLIT_K": cfg.split_k, "BLOCK_M": cfg.block_m,
            "BLOCK_N": cfg.block_n, "BLOCK_C": block_c}


def gemv_lowbit(x: torch.Tensor, weight: PackedQuantWeight, bias: torch.Tensor | None, cfg: LaunchConfig) -> torch.Tensor:
    """Launch the low-bit decode kernel: ``x: [M, K]`` fp16/bf16 contiguous → ``[M, N]`` in ``x.dtype``."""
    m, k = x.shape
    n = weight.n
    grid, out, ws, lock = tile_launch(x, n, cfg.block_n, cfg.block_m, cfg.split_k, slices=1)
    launch(
        _gemv_lowbit_kernel, grid,
        _aligned(x), weight.packed, weight.scales, weight.zeros, x if bias is None else bias, out, ws, lock,
        m, n, k, x.stride(0), weight.packed.stride(0), weight.scales.stride(0), out.stride(0),
        **lowbit_constants(weight.bits, weight.group, k, cfg, bias is not None),
        **cfg.launch_options,
    )
    return out


def _aligned(t: torch.Tensor, to: int = 16) -> torch.Tensor:
    """``t``, or a copy of it when its data does not start on a ``to``-byte boundary (the 2:4 kernels read
    pairs of units and groups of activations as wide words)."""
    return t if t.data_ptr() % to == 0 else t.clone()


def _gemv_24(x, values, meta, scales, zeros, bias, n, quant, bits, group, cfg) -> torch.Tensor:
    m, k = x.shape
    grid, out, ws, lock = tile_launch(x, n, cfg.block_n, cfg.block_m, cfg.split_k, slices=1)
    launch(
        _gemv_sparse24_kernel, grid,
        _aligned(x), _aligned(values), _aligned(meta), scales, zeros, x if bias is None else bias, out, ws, lock,
        m, n, k, x.stride(0), values.stride(0), meta.stride(0), scales.stride(0), out.stride(0),
        **sparse24_constants(quant, bits, group, k, cfg, values.stride(0) % 2 == 0, bias is not None),
        **cfg.launch_options,
    )
    return out


def gemv_sparse24(x: torch.Tensor, weight: Sparse24Weight, bias: torch.Tensor | None, cfg: LaunchConfig) -> torch.Tensor:
    """Launch the 2:4 decode kernel."""
    v = weight.values
    return _gemv_24(x, v, weight.meta, v, v, bias, weight.n, False, 16, 1, cfg)


def gemv_sparse24_quant(
    x: torch.Tensor, weight: Sparse24QuantWeight, bias: torch.Tensor | None, cfg: LaunchConfig
) -> torch.Tensor:
    """Launch the 2:4 + low-bit decode kernel."""
    q = weight.values
    return _gemv_24(x, q.packed, weight.meta, q.scales, q.zeros, bias, weight.n, True, q.bits, q.group, cfg)
