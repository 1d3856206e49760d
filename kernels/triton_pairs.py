"""Triton helpers for the 2:4 kernels: a group's two kept values and their two positions as pairs.

A 2:4 group keeps two values; the kernels take both at once. Their positions sit in neighbouring
units of one field (or fields ``e``, ``e + 1`` of one unit when a chunk has one unit), so a pair of
units is read as one wide word (:func:`pair_words`) and the two 2-bit positions of field ``e`` meet
in one byte-permute selector: :func:`pick_selector` picks the pair's two activations out of the
group's four (decode kernels), :func:`spread_selector` places the pair's two values at their
positions among four dense columns with zeros (or a filler) elsewhere (tensor-core and dequantize
kernels). Low-bit codes of a pair come side by side in one word through :func:`code_pairs` and are
read per field by :func:`pair_codes`; :func:`field_parts` splits a field index so that what a loop
unrolls is known at compile time.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import load_if, pair_bits, prmt


@triton.jit
def meta_pairs(meta_ptr, rows, stride_mn, E: tl.constexpr, CU: tl.constexpr):
    """Row pointers to the position units read two at a time (``E`` = 16: int64, 8: int32, 4: int16), or
    one at a time (int32) when a chunk has one unit; index ``c * CP + i`` is pair ``i`` of chunk ``c``."""
    if E == 4:
        base = meta_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_mn)
    elif E == 8 or CU == 1:
        base = meta_ptr + rows * stride_mn
    else:
        base = meta_ptr.to(tl.pointer_type(tl.int64)) + rows * (stride_mn // 2)
    return base


@triton.jit
def pair_words(pw, E: tl.constexpr, CU: tl.constexpr):
    """The two position units of each group's pair as int32 words ``(u0, u1)``, field ``e`` of each at bits
    ``2e``: ``pw`` holds units ``2i`` and ``2i + 1`` (``E`` = 16: int64, 8: int32, 4: int16), or with one
    unit per chunk (``CU`` = 1) a group's two positions are fields ``e`` and ``e + 1`` of one word."""
    if E == 16:
        if CU == 1:
            u0 = pw
            u1 = pw >> 2
        else:
            u0 = pw.to(tl.int32)
            u1 = (pw >> 32).to(tl.int32)
    else:
        u0 = pw.to(tl.int32)
        u1 = u0 >> (2 * E)
    return u0, u1


@triton.jit
def pick_selector(u0, u1, e: tl.constexpr):
    """``prmt`` selector that picks ``(x[p0], x[p1])`` out of a group's four 16-bit activations (two words)
    for the positions ``p0``, ``p1`` in field ``e`` of ``u0`` and ``u1``: nibbles ``2 p0, 2 p0 + 1, 2 p1,
    2 p1 + 1``. One ``prmt`` gathers byte ``e // 4`` of both words (shared by four fields)."""
    k: tl.constexpr = e // 4
    both = prmt(u0, u1, u0 * 0 + (k | ((k + 4) << 4)))  # p0 in bits 0..7, p1 in bits 8..15
    t = (both >> (2 * (e % 4))) & 0x0303
    return t * 0x22 + 0x1010


@triton.jit
def spread_selector(u0, u1, k, r):
    """``prmt`` selector (32 bits: dense columns 0, 1 in the low half, 2, 3 in the high half) that spreads a
    pair word ``(w0, w1)`` over its group's four 16-bit columns: byte code ``0x10`` (``w0``) at column
    ``p0``, ``0x32`` (``w1``) at ``p1`` and ``0x54`` (the low half of the filler word) elsewhere, i.e.
    ``0x54545454 - 0x44 << 8 p0 - 0x22 << 8 p1`` (``p0 != p1``, so no byte borrows). The positions are
    those of field ``e = 4 k + r`` (:func:`field_parts`); ``k`` and ``r`` may be known only at run time."""
    both = prmt(u0, u1, u0 * 0 + (k | ((k + 4) << 4)))  # p0 in bits 0..7, p1 in bits 8..15
    fields = both >> (2 * r)
    a0 = (fields << 3) & 0x18  # 8 p0
    a1 = (fields >> 5) & 0x18  # 8 p1
    return 0x54545454 - (0x44 << a0) - (0x22 << a1)


@triton.jit
def field_parts(e0, f: tl.constexpr, FIELDS: tl.constexpr, H: tl.constexpr):
    """Field ``e = e0 + f`` split as the kernels use it: ``(k, r, upper, j)`` with ``e = 4 k + r`` (position
    byte and field in it) and ``e = H * upper + j`` (code halfword and field in it, ``H`` code fields per
    halfword). ``e0`` (maybe known only at run time) is a multiple of ``FIELDS``; the parts that follow
    from ``f`` alone are compile-time constants, so their shifts are too."""
    if FIELDS % 4 == 0:
        k = e0 // 4 + f // 4
        r: tl.constexpr = f % 4
    else:
        k = (e0 + f) // 4
        r = (e0 + f) % 4
    upper = e0 + f >= H
    if FIELDS % H == 0:
        j: tl.constexpr = f % H
    else:
        j = (e0 + f) % H
    return k, r, upper, j


@triton.jit
def code_pairs(values_ptr, rows, stride_vn, pidx, c_ok, K, BITS: tl.constexpr, CU: tl.constexpr,
                EVEN: tl.constexpr, WIDE: tl.constexpr):
    """Codes of each group's pair regrouped for :func:`~.triton_common.pair_bits`: ``lo``/``hi`` hold the low/high halfwords
    of the pair's two code units side by side (3 bits: ``hw_lo``/``hw_hi`` the matching high-plane bits).
    ``WIDE``: rows hold an even number of words, so a pair of units is one 8-byte load."""
    if CU == 1:  # the pair is fields e and e + 1 of one unit
        c0 = load_if(values_ptr + rows * stride_vn + pidx, c_ok, EVEN)
        c1 = c0 >> (2 if BITS == 3 else BITS)
    elif WIDE:
        w2 = load_if(values_ptr.to(tl.pointer_type(tl.int64)) + rows * (stride_vn // 2) + pidx, c_ok, EVEN)
        c0 = w2.to(tl.int32)
        c1 = (w2 >> 32).to(tl.int32)
    else:
        c0 = load_if(values_ptr + rows * stride_vn + 2 * pidx, c_ok, EVEN)
        c1 = load_if(values_ptr + rows * stride_vn + 2 * pidx + 1, c_ok, EVEN)
    lo = prmt(c0, c1, c0 * 0 + 0x5410)
    hi = prmt(c0, c1, c0 * 0 + 0x7632)
    hw_lo = lo
    hw_hi = hi
    if BITS == 3:
        plane = values_ptr.to(tl.pointer_type(tl.int16)) + rows * (2 * stride_vn) + K // 16
        if CU == 1:
            h0 = load_if(plane + pidx, c_ok, EVEN).to(tl.int32)
            h1 = h0 >> 1
        else:
            h0 = load_if(plane.to(tl.pointer_type(tl.int32)) + pidx, c_ok, EVEN)
            h1 = h0 >> 16
        hw_lo = (h0 & 0xFF) | ((h1 & 0xFF) << 8)
        hw_hi = ((h0 >> 8) & 0xFF) | (h1 & 0xFF00)
    return lo, hi, hw_lo, hw_hi


@triton.jit
def pair_codes(lo, hi, hw_lo, hw_hi, upper, j, BITS: tl.constexpr, EXP: tl.constexpr):
    """The pair's two codes of field ``j`` of the lower (or ``upper``) halfword from :func:`code_pairs`' words
    (``upper`` and ``j`` from :func:`field_parts`, known at compile or run time), as the fp16 pair
    ``2**BITS + q`` (``EXP``) or ``q`` times a power of two (:func:`~.triton_common.pair_bits`)."""
    return pair_bits(tl.where(upper, hi, lo), tl.where(upper, hw_hi, hw_lo), lo * 0 + j, BITS, EXP)
