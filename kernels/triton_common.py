"""Triton helpers shared by the packed-weight kernels: field extraction, group metadata, output tiles and split-K.

Imported lazily (through the kernel modules) on the first ``path="triton"`` call. ``INTERPRET`` is
whether these kernels were built for the Triton interpreter (``TRITON_INTERPRET=1`` when this
module was first imported). ``INLINE_PTX``: compiled kernels move bits with single PTX instructions
(``prmt``, ``cvt.f32.f16``, ``sub/mul/fma.f16x2``, register reuse); ``LAYERBUDGET_INLINE_PTX=0`` at
import builds them from plain Triton operations instead (the interpreter's code: same results,
more instructions), the fallback where a GPU rejects or miscomputes the PTX.

Codes become floats without an integer-to-float conversion, two at a time as the two halves of a
word read as fp16 (:func:`pair_bits`): a field of ``b`` bits moved to the top of the mantissa under
the exponent of ``2**b`` reads as ``2**b + q`` (the tensor-core kernels subtract ``2**b + zero``,
exact), or under a zero exponent as ``q`` times a power of two (:func:`field_code`, with the scale
and zero in the same units from :func:`group_scale`).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from packaging.version import Version
from triton.language.target_info import cuda_capability_geq

try:  # kernels in this package were built for the interpreter (read as @triton.jit reads it)
    from triton import knobs

    INTERPRET = bool(knobs.runtime.interpret)
except ImportError:  # triton < 3.4 has no knobs
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter turns a scalar into a Python int (a loop bound, ``range(it0, it1)``) with
    ``int()`` on its one-element array, which numpy 2.4 refuses ("only 0-dimensional arrays can be
    converted"); Triton 3.7 takes the element (``squeeze``). Under 3.6's interpreter the kernels' scalars
    do the same, whatever numpy is installed."""
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched


if INTERPRET and Version(triton.__version__) < Version("3.7"):
    _interpreter_scalar_index()

# Compiled kernels fence their split-K partial sums with PTX; the interpreter runs programs one by one.
GPU_FENCE = tl.constexpr(not INTERPRET)
INLINE_PTX = tl.constexpr(not INTERPRET and os.environ.get("LAYERBUDGET_INLINE_PTX", "1").strip().lower()
                          not in ("0", "false", "off", "no"))
# Triton before 3.7.1 lets a wgmma read shared memory that cp.async wrote with no ``fence.proxy.async`` between
# (generic-proxy writes, async-proxy read: the PTX ISA asks for one; :mod:`.ptx_races` finds the gap); kernels
# that multiply a copied operand put it there themselves (:func:`proxy_fenced`). From 3.7.1 Triton emits its own.
# ``LAYERBUDGET_PROXY_FENCE=0`` at import leaves it out (to time what it costs).
PROXY_FENCE = tl.constexpr(not INTERPRET and Version(triton.__version__) < Version("3.7.1")
                           and os.environ.get("LAYERBUDGET_PROXY_FENCE", "1").strip().lower()
                           not in ("0", "false", "off", "no"))
# One ``fence.proxy.async`` per asm statement, which passes up to PROXY_PACK 16-bit elements through (Triton pads
# a thread's fewer with undefined values): each thread fences once per dot operand it holds.
_REGS = 32  # 32-bit registers in, as many out
PROXY_PACK = tl.constexpr(2 * _REGS)
PROXY_ASM = tl.constexpr("fence.proxy.async.shared::cta;"
                         + "".join(f"\n\tmov.b32 ${i}, ${i + _REGS};" for i in range(_REGS)))
PROXY_CONSTRAINTS = tl.constexpr(",".join(["=r"] * _REGS + ["r"] * _REGS))
# Launch option of every kernel: multiplies and adds contract into FMAs (the decode kernels' one FMA per weight),
# whatever the installed Triton's default (``TRITON_DEFAULT_FP_FUSION``, whose default Triton is changing).
FP_FUSION = True


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` with the options every kernel of the project is compiled with (:data:`FP_FUSION`)."""
    kernel[grid](*args, **kwargs, enable_fp_fusion=FP_FUSION)


@triton.jit
def field_code(words, high, e: tl.constexpr, BITS: tl.constexpr):
    """Field ``e`` of every unit as the fp32 value ``q * 2**(code_position(BITS) - 24)`` (``q`` the code; exact).

    ``words``: int32 units (2/4/8 bits: ``32 / BITS`` fields; 3 bits: the low 2-bit plane, 16
    fields); ``high``: for 3 bits the high-plane halfwords (bit ``e``), else unused. Fields come two
    at a time through fp16 (:func:`pair_bits` without exponent bits): field ``e`` of the low halfword
    and field ``e + H`` of the high one share their shifts and their one mask, and each half converts
    to fp32. :func:`group_scale` gives the scale and zero in the same units.
    """
    H: tl.constexpr = 8 if BITS == 3 else 16 // BITS  # fields per halfword
    return half_float(pair_bits(words, high, words * 0 + e % H, BITS, False), e >= H)


@triton.jit
def code_position(BITS: tl.constexpr):
    """Bit of each halfword where :func:`field_code` puts a field's lowest bit: where a field already sits
    (4-bit: field 1, 8-bit: field 0, 2-bit: field 4; 3-bit: as :func:`pair_bits`)."""
    P: tl.constexpr = 8 if BITS == 2 else 7 if BITS == 3 else 4 if BITS == 4 else 0
    return P


@triton.jit
def group_scale(scales_ptr, zeros_ptr, rows, stride_sn, g, ok, BITS: tl.constexpr, EVEN: tl.constexpr):
    """Scale and zero (fp32) of groups ``g`` of ``rows`` in the units of :func:`field_code`: the scale times
    ``2**(24 - position)`` and the zero times ``2**(position - 24)`` (powers of two: exact), so that
    ``(code - z) * s`` is ``W_hat`` and a group's sums enter as ``s * (Σ code x - z Σ x)``. Read where
    ``ok`` unless ``EVEN``."""
    unit = 1 << (24 - code_position(BITS))
    s = load_if(scales_ptr + rows * stride_sn + g, ok, EVEN).to(tl.float32) * unit
    z = load_if(zeros_ptr + rows * stride_sn + g, ok, EVEN).to(tl.float32) / unit
    return s, z


@triton.jit
def half_float(pair, HIGH: tl.constexpr):
    """The low (or ``HIGH``) halfword of int32 ``pair`` read as fp16, as fp32. Compiled, one conversion
    of the halfword in place (``cvt.f32.f16``); otherwise the halfword is taken out first."""
    if INLINE_PTX:
        if HIGH:
            asm: tl.constexpr = "{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, h; }"
        else:
            asm: tl.constexpr = "{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, l; }"
        out = tl.inline_asm_elementwise(asm, "=r,r", [pair], dtype=tl.float32, is_pure=True, pack=1)
    else:
        if HIGH:
            pair = pair >> 16
        out = pair.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return out


@triton.jit
def field_less_zero(words, high, J: tl.constexpr, BITS: tl.constexpr, zero):
    """Field ``J`` (a compile-time constant) of both halfwords of int32 units less the group's zero: the fp16
    pair ``(q - z) * 2**(code_position(BITS) - 24)`` (exact), in :func:`field_code`'s units.

    The field is masked where it sits, its bits under a zero exponent reading ``q * 2**(p - 24)``; a
    field reaching past the mantissa's ten bits is first moved down by one shift by 8, shared by every
    field it serves. One ``fma.f16x2`` then scales it by ``2**(code_position - p)`` and subtracts ``zero``
    (:func:`half_pair` of ``z`` in those units). 3 bits: ``words`` is the low 2-bit plane and ``high``
    the high-plane halfwords (bit ``J`` for the low halfword, ``J + 8`` for the high one).
    """
    W: tl.constexpr = 2 if BITS == 3 else BITS  # width of the field in ``words``
    S: tl.constexpr = 0 if J * W + BITS <= 10 else 8
    P: tl.constexpr = J * W - S  # the field's lowest bit after the shift
    F: tl.constexpr = ((15 + code_position(BITS) - P) << 10) * 0x00010001  # fp16 2**(position - P), both halves
    if S == 0:
        moved = words
    else:
        moved = words >> S
    bits = moved & (((1 << W) - 1) << P) * 0x00010001
    if BITS == 3:
        bits = bits | high_bit(high, words * 0 + J, P + 2)
    return mul_sub_f16x2(bits, words * 0 + F, zero)


@triton.jit
def high_bit(high, j, at):
    """The 3-bit codes' high bit of field ``j`` as bit ``at`` of each half of an int32 word: bit ``j`` of the
    high-plane halfwords ``high`` for the low half, bit ``j + 8`` for the high half (``j``, ``at`` tensors or
    constants), all other bits zero."""
    hw = high.to(tl.int32) & 0xFFFF
    spread = hw | (hw << 8)  # bit j + 8 also at j + 16: one shift serves both halves
    return shift_to(spread, at - j) & (1 << at) * 0x00010001


@triton.jit
def shift_to(t, amount):
    """``t << amount`` where ``amount >= 0``, else ``t >> -amount`` (arithmetic); ``amount`` may be a tensor."""
    return tl.where(amount >= 0, t << tl.maximum(amount, 0), t >> tl.maximum(-amount, 0))


@triton.jit
def pair_bits(words, high, j, BITS: tl.constexpr, EXP: tl.constexpr):
    """Int32 pairs of fp16 bit patterns of field ``j`` of each halfword of the units (``j`` an int32 tensor
    below ``16 / BITS``, broadcast against ``words``; 3 bits: ``j`` below 8 of the low plane, with bits
    ``j`` and ``j + 8`` of the high-plane halfwords ``high``). ``EXP``: the field moves to the top of its
    half's 10-bit mantissa under the exponent of ``2**BITS``, so the half reads ``2**BITS + q``; else it
    moves to :func:`code_position` with no exponent, so the half reads ``q * 2**(position - 24)``. Both
    exact; a ``j`` the compiler knows makes every shift a constant, and equal ``j`` share them."""
    if EXP:
        pos = 10 - BITS
    else:
        pos = code_position(BITS)
    if BITS == 3:
        out = (shift_to(words, pos - 2 * j) & (3 << pos) * 0x00010001) | high_bit(high, j, pos + 2)
    else:
        out = shift_to(words, pos - j * BITS) & (((1 << BITS) - 1) << pos) * 0x00010001
    if EXP:
        out = out | ((15 + BITS) << 10) * 0x00010001
    return out


@triton.jit
def prmt(a, b, sel):
    """PTX ``prmt`` (default mode): byte ``i`` of the result is byte ``sel[4i:4i+3]`` (0..7) of the pair
    ``(a, b)``, ``b`` holding bytes 4..7; int32 tensors, broadcast. One instruction with
    ``INLINE_PTX``; otherwise the bytes are picked in plain Triton (every nibble of ``sel`` must be below 8)."""
    if INLINE_PTX:
        out = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, sel], dtype=tl.int32,
                                        is_pure=True, pack=1)
    else:
        out = (a | b | sel) * 0
        for i in tl.static_range(4):
            n = (sel >> (4 * i)) & 7
            byte = (tl.where(n < 4, a, b) >> (8 * (n & 3))) & 0xFF
            out = out | (byte << (8 * i))
    return out


@triton.jit
def half_to_float(pair, HIGH: tl.constexpr, BF16: tl.constexpr):
    """The low (or ``HIGH``) 16-bit float of int32 ``pair`` as fp32: fp16 through :func:`half_float`, bf16 by
    moving its bits to the top of the word (exact)."""
    if BF16:
        if HIGH:
            out = (pair & -65536).to(tl.float32, bitcast=True)
        else:
            out = (pair << 16).to(tl.float32, bitcast=True)
    else:
        out = half_float(pair, HIGH)
    return out


@triton.jit
def pair_halves(pairs, DT: tl.constexpr):
    """Int32 ``pairs`` of 16-bit float bit patterns → ``DT`` (fp16 or bf16) ``[..., 2]``, low halfword
    first. With ``INLINE_PTX`` the word becomes the two halves' register as it is (no repacking);
    otherwise the halves are taken apart."""
    if INLINE_PTX:
        both = tl.join(pairs, pairs)  # each output pair reads its word once
        if DT == tl.bfloat16:
            out = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,r", [both], dtype=tl.bfloat16, is_pure=True,
                                            pack=2)
        else:
            out = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,r", [both], dtype=tl.float16, is_pure=True,
                                            pack=2)
    else:
        lo = pairs.to(tl.int16).to(DT, bitcast=True)
        hi = (pairs >> 16).to(tl.int16).to(DT, bitcast=True)
        out = tl.join(lo, hi)
    return out


@triton.jit
def _half16(words, h: tl.constexpr):
    """Halfword ``h`` (0: low) of int32 ``words`` read as fp16."""
    return (words >> (16 * h)).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _at_half(v, h: tl.constexpr):
    """The bits of fp16 ``v`` as halfword ``h`` of an int32 word (the other halfword zero)."""
    return (v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) << (16 * h)


@triton.jit
def mul_sub_f16x2(a, b, c):
    """``a * b - c`` on the two fp16 halves of int32 words, rounded once to fp16 (one ``fma.rn.f16x2``, its
    addend negated in place, with ``INLINE_PTX``; otherwise it works on the halves, exact wherever the result
    is representable)."""
    if INLINE_PTX:
        out = tl.inline_asm_elementwise("{ .reg .b32 t; neg.f16x2 t, $3; fma.rn.f16x2 $0, $1, $2, t; }", "=r,r,r,r",
                                        [a, b, c], dtype=tl.int32, is_pure=True, pack=1)
    else:
        out = (_at_half(_half16(a, 0) * _half16(b, 0) - _half16(c, 0), 0)
               | _at_half(_half16(a, 1) * _half16(b, 1) - _half16(c, 1), 1))
    return out


@triton.jit
def half_pair(v):
    """fp32 ``v`` rounded to fp16, in both halves of an int32 word (what :func:`mul_sub_f16x2` subtracts)."""
    bits = v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def sub_mul_f16x2(a, b, c):
    """``(a - b) * c`` on the two fp16 halves of int32 words, each operation rounded to fp16 (one
    ``sub.f16x2`` and one ``mul.f16x2`` with ``INLINE_PTX``; otherwise it works on the halves)."""
    if INLINE_PTX:
        out = tl.inline_asm_elementwise("{ sub.rn.f16x2 $0, $1, $2; mul.rn.f16x2 $0, $0, $3; }", "=r,r,r,r",
                                        [a, b, c], dtype=tl.int32, is_pure=True, pack=1)
    else:
        out = (_at_half((_half16(a, 0) - _half16(b, 0)) * _half16(c, 0), 0)
               | _at_half((_half16(a, 1) - _half16(b, 1)) * _half16(c, 1), 1))
    return out


@triton.jit
def load_if(ptrs, mask, EVEN: tl.constexpr):
    """``tl.load``, masked (0 where ``mask`` is false) unless ``EVEN`` says every address is in range."""
    if EVEN:
        out = tl.load(ptrs)
    else:
        out = tl.load(ptrs, mask=mask, other=0)
    return out


@triton.jit
def below(m, M, like):
    """``m < M`` as a tensor shaped like ``like`` (masks combine tensors; the interpreter rejects a
    scalar broadcast into a mask)."""
    return (like * 0 + m) < M


@triton.jit
def store_out(acc, out_ptrs, bias_ptrs, mask, bias_mask, HAS_BIAS: tl.constexpr):
    """Add the bias (fp32) and store ``acc`` in the output dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptrs, mask=bias_mask, other=0.0).to(tl.float32)
    tl.store(out_ptrs, acc.to(out_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def arrive(lock_ptr, tile_id):
    """Count this program's partial sums as added to the split-K workspace; returns the count before.

    Split-K protocol: every program of an output tile atomically adds its fp32 partial sums into
    the workspace (all zero between calls), then arrives; the program that arrives last takes the
    sums out with :func:`take` (leaving zeros), writes the output and resets the counter with
    :func:`release`. No launch is needed before or after the kernel.
    """
    tile_id = fence(tile_id)  # each thread's adds are performed GPU-wide before the CTA meets (a __threadfence)
    tl.debug_barrier()  # every thread has fenced before one of them arrives
    return fence(tl.atomic_add(lock_ptr + tile_id, 1, sem="acq_rel"))  # and every thread reads after it


@triton.jit
def fence(value):
    """A GPU-scope memory fence in every thread (``fence.acq_rel.gpu``); returns ``value`` through the
    fence so that what uses it comes after. The interpreter, which runs programs one at a time, skips it."""
    if GPU_FENCE:
        value = tl.inline_asm_elementwise("fence.acq_rel.gpu;\n\tmov.b32 $0, $1;", "=r,r", [value],
                                          dtype=tl.int32, is_pure=False, pack=1)
    return value


@triton.jit
def proxy_fenced(w):
    """``w`` (16-bit, the register operand of a ``tl.dot`` whose other operand Triton copies into shared memory
    with ``cp.async``) through a ``fence.proxy.async`` in every thread (one per :data:`PROXY_PACK` elements), where
    :data:`PROXY_FENCE` says Triton leaves it out. The ``wgmma`` comes after it; that it comes after the
    copies landed is Triton's placement of the wait, which the race check of the compiled code confirms
    (fencing a smaller value, a group's scales, put the fence before the wait)."""
    if PROXY_FENCE and cuda_capability_geq(9, 0):  # (the instruction is sm_90's; wgmma too)
        w = tl.inline_asm_elementwise(PROXY_ASM, PROXY_CONSTRAINTS, [w], dtype=w.dtype, is_pure=False,
                                      pack=PROXY_PACK)
    return w


@triton.jit
def take(ws_ptrs, mask):
    """Read the summed partials out of the workspace (from L2: the adds were atomics) and leave zeros.

    Only the last program of a tile calls this, after every partial was added, so plain accesses
    suffice."""
    total = tl.load(ws_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    tl.store(ws_ptrs, tl.zeros(ws_ptrs.shape, tl.float32), mask=mask)
    return total


@triton.jit
def release(lock_ptr, tile_id):
    tl.store(lock_ptr + tile_id, 0)


@triton.jit
def store_tile(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS: tl.constexpr):
    """Write the fp32 tile ``acc: [BN, BM]`` (weight rows × activation rows) to ``out: [M, N]``."""
    n_ok = offs_n[:, None] < N
    store_out(acc, out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], bias_ptr + offs_n[:, None],
              n_ok & (offs_m[None, :] < M), n_ok, HAS_BIAS)


@triton.jit
def finish_tile(acc, out_ptr, bias_ptr, ws_ptr, lock_ptr, offs_n, offs_m, M, N, stride_om, tile_id,
                HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """:func:`store_tile`, or through the split-K workspace.

    Split-K: each program stores its partial tile in its own slice ``k`` of the workspace (plain
    stores: a value a layout holds twice is stored twice, never added twice) and arrives; the last
    one sums the slices, zeroes them (the workspace stays all zero between launches) and writes."""
    if SPLIT_K == 1:
        store_tile(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS)
    else:
        n_ok = offs_n[:, None] < N
        mask = n_ok & (offs_m[None, :] < M)
        cell = offs_m[None, :] * N + offs_n[:, None]
        tl.store(ws_ptr + tl.program_id(1) * M * N + cell, acc, mask=mask)
        if arrive(lock_ptr, tile_id) == SPLIT_K - 1:
            total = tl.zeros(acc.shape, tl.float32)
            for k in range(SPLIT_K):  # a loop, not unrolled: one slice's registers at a time
                total += take(ws_ptr + k * M * N + cell, mask)
            store_out(total, out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], bias_ptr + offs_n[:, None],
                      mask, n_ok, HAS_BIAS)
            release(lock_ptr, tile_id)
