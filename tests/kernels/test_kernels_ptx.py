"""The compiled kernels' own PTX, run on the CPU (:mod:`layerbudget.kernels.ptx_sim`), computes what the
torch reference does.

The interpreter runs the kernels' plain-Triton code; a GPU runs the inline PTX of
:mod:`layerbudget.kernels.triton_common` (``LAYERBUDGET_INLINE_PTX``) and Triton's own lowering of the
rest (register packing, layouts, shuffles, ``mma.sync``, asynchronous copies, split-K atomics). Here each
launch is recorded as the package makes it, compiled in a process without the interpreter (with inline PTX
and as the plain build) and its PTX run on the same inputs: every kernel as built for sm_90 (the
tensor-core kernels multiply with ``wgmma`` there) and the tensor-core kernels also as built for sm_80
(``mma.sync``); the inline-PTX helpers bit for bit against the plain code; and plain ``tl.dot`` kernels
against a float64 product, for the ``wgmma`` operand forms the package's kernels do not use (A in shared
memory, the 32-byte swizzle, MN-major operands). Every run checks for data races
(:mod:`layerbudget.kernels.ptx_races`); edits of the compiled PTX that open one must raise.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from kernel_checks import assert_near_reference

from layerbudget.kernels.configs import LaunchConfig
from layerbudget.kernels.ops import lowbit_matmul, sparse24_matmul, sparse24_quant_matmul
from layerbudget.kernels.ptx_launch import Launch, as_tensor, compile_ptx, emulate, record
from layerbudget.kernels.ptx_races import DataRace
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.reference import lowbit_matmul_ref, sparse24_matmul_ref, sparse24_quant_matmul_ref
from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24
from layerbudget.kernels.triton_common import (
    field_less_zero,
    half_float,
    half_pair,
    pair_halves,
    prmt,
    sub_mul_f16x2,
)

# On a GPU the compiled kernels themselves run (test_kernels_triton.py).
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the compiled kernels themselves")


# --- the decode and dequantize kernels, whole -----------------------------------------------------------

def _lowbit(bits, n, k, group, m, cfg, dtype=torch.float16, bias=False):
    def make(gen):
        w = PackedQuantWeight.from_dense(torch.randn(n, k, generator=gen), bits, group)
        x = torch.randn(m, k, generator=gen).to(dtype)
        b = torch.randn(n, generator=gen) if bias else None
        return (lambda: lowbit_matmul(x, w, b, path="triton", config=cfg)), lowbit_matmul_ref(x, w, b)
    return make


def _sparse(bits, group, m, cfg, n=40, k=256):
    def make(gen):
        dense = magnitude_prune_24(torch.randn(n, k, generator=gen))
        x = torch.randn(m, k, generator=gen).half()
        if bits is None:
            w = Sparse24Weight.from_dense(dense, dtype=torch.float16)
            return (lambda: sparse24_matmul(x, w, path="triton", config=cfg)), sparse24_matmul_ref(x, w)
        w = Sparse24QuantWeight.from_dense(dense, bits, group)
        return (lambda: sparse24_quant_matmul(x, w, path="triton", config=cfg)), sparse24_quant_matmul_ref(x, w)
    return make


def _dequant(bits, group, sparse=False):
    def make(gen):
        from layerbudget.kernels import triton_lowbit, triton_sparse

        if sparse:
            w = Sparse24QuantWeight.from_dense(magnitude_prune_24(torch.randn(40, 256, generator=gen)), bits, group)
            return (lambda: triton_sparse.dequantize_sparse24(w, torch.float16)), w.to_dense(torch.float16)
        w = PackedQuantWeight.from_dense(torch.randn(40, 256, generator=gen), bits, group)
        return (lambda: triton_lowbit.dequantize_lowbit(w, torch.float16)), w.dequantize(torch.float16)
    return make


CASES = {
    "gemv-b4-g128-m1": _lowbit(4, 40, 256, 128, 1, LaunchConfig("gemv", 1, 16, 64)),
    "gemv-b3-g128-m1": _lowbit(3, 40, 256, 128, 1, LaunchConfig("gemv", 1, 16, 64)),
    "gemv-b2-g32-m3-split3": _lowbit(2, 72, 256, 32, 3, LaunchConfig("gemv", 4, 16, 32, split_k=3), bias=True),
    "gemv-b8-rows-m2-split2-inplace": _lowbit(8, 24, 160, None, 2,
                                              LaunchConfig("gemv", 2, 32, 128, split_k=2, num_stages=1)),
    "gemv-b4-g48-m1-bf16": _lowbit(4, 40, 192, 48, 1, LaunchConfig("gemv", 1, 16, 64), torch.bfloat16),
    "gemv-2:4-m1": _sparse(None, None, 1, LaunchConfig("gemv", 1, 16, 64)),
    "gemv-2:4+b4-g32-m2": _sparse(4, 32, 2, LaunchConfig("gemv", 2, 16, 64, split_k=2)),
    "gemv-2:4+b3-g32-m1": _sparse(3, 32, 1, LaunchConfig("gemv", 1, 16, 64)),
    # as the launch table launches them (8 warps, 128 rows, split-K to fill a GPU)
    "table-b4-g128-m1": _lowbit(4, 128, 2048, 128, 1, None),
    "table-b3-g128-m1": _lowbit(3, 128, 2048, 128, 1, None),
    "table-b2-g64-m4": _lowbit(2, 128, 2048, 64, 4, None),
    "table-b8-g128-m2": _lowbit(8, 128, 2048, 128, 2, None),
    "table-2:4+b4-g64-m1": _sparse(4, 64, 1, None, 64, 2048),
    # a launch with its registers capped (Triton's maxnreg), as the bench times the table's decode launch too
    "gemv-b2-g64-m1-capped": _lowbit(2, 128, 2048, 64, 1, LaunchConfig("gemv", 1, 128, 128, split_k=2, num_warps=8,
                                                                       max_registers=128)),
    # the one-dot-per-field tensor-core kernel (mma.sync): up to 16 rows of 2/3/4/8-bit codes
    "fields-b4-g128-m1": _lowbit(4, 128, 2048, 128, 1, LaunchConfig("tc", 8, 128, 256, split_k=2, num_warps=2)),
    "fields-b3-g128-m5": _lowbit(3, 64, 2048, 128, 5, LaunchConfig("tc", 8, 64, 512, num_warps=2)),
    "fields-b2-g64-m16": _lowbit(2, 64, 1024, 64, 16, None, bias=True),
    "fields-b8-g128-m9": _lowbit(8, 128, 1024, 128, 9, LaunchConfig("tc", 16, 128, 128, split_k=2, num_warps=2)),
    # a warpgroup and 16 rows: its dots compile to wgmma on sm_90 (one of the configurations the bench tunes)
    "fields-wg-b3-g128-m16": _lowbit(3, 128, 1024, 128, 16, LaunchConfig("tc", 16, 128, 128, num_warps=4)),
    # the tensor-core kernels: the padded low-bit one (mma.sync), the 2:4 ones and the large tiles (wgmma on
    # sm_90, mma.sync on sm_80: both builds run)
    "tc-b4-g48-m16": _lowbit(4, 40, 192, 48, 16, LaunchConfig("tc", 16, 16, 64)),
    "tile-b4-g128-m80": _lowbit(4, 128, 512, 128, 80, None),
    "tile-b3-g128-m70": _lowbit(3, 128, 512, 128, 70, None, bias=True),
    "tc-2:4-m16": _sparse(None, None, 16, None, 64, 1024),
    "tc-2:4+b4-g64-m16": _sparse(4, 64, 16, None, 64, 1024),  # split-K 2, as the table launches it
    "tc-2:4-m16-split2": _sparse(None, None, 16, LaunchConfig("tc", 16, 64, 128, split_k=2, num_stages=5), 64, 4096),
    "tile-2:4+b3-g32-m80": _sparse(3, 32, 80, None, 128, 512),
    "dequant-b3-g32": _dequant(3, 32),
    "dequant-b2-g128": _dequant(2, 128),
    "dequant-2:4+b4-g32": _dequant(4, 32, sparse=True),
}


BUILDS = [(c, 90) for c in CASES] + [(c, 80) for c in CASES if c.startswith(("tc-", "tile-"))]


@pytest.fixture(scope="module")
def compiled_cases() -> dict:
    """Per case and architecture: its launches, their PTX in both builds (``True``: inline PTX), the output and
    the reference."""
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(7)
    cases, launches = {}, []
    for name, make in CASES.items():
        call, ref = make(gen)
        out, recorded = record(call)
        assert recorded, f"{name}: no kernel launched"
        for case, arch in BUILDS:
            if case == name:
                cases[name, arch] = ([replace(ln, arch=arch) for ln in recorded], out, ref)
                launches += cases[name, arch][0]
    builds = {}
    for inline in (True, False):
        ptx = iter(compile_ptx(launches, inline))
        builds[inline] = {key: [next(ptx) for _ in recorded] for key, (recorded, _, _) in cases.items()}
    return {key: (recorded, {b: builds[b][key] for b in builds}, out, ref)
            for key, (recorded, out, ref) in cases.items()}


@pytest.mark.parametrize("inline_ptx", [True, False], ids=["inline-ptx", "plain"])
@pytest.mark.parametrize(("case", "arch"), BUILDS, ids=[f"{c}-sm{a}" for c, a in BUILDS])
def test_compiled_kernels_compute_the_reference(case: str, arch: int, inline_ptx: bool, compiled_cases) -> None:
    (launch,), builds, out, ref = compiled_cases[case, arch]
    arrays, traffic = emulate(launch, builds[inline_ptx][0])
    _check_outputs(launch, arrays, out, ref, exact=case.startswith("dequant"))


def test_a_register_cap_reaches_the_compiled_kernel(compiled_cases) -> None:
    """A launch's ``max_registers`` is recorded as its own option (not a kernel constant) and compiled into the
    PTX as ``.maxnreg``; an uncapped launch has none."""
    (capped,), builds, _, _ = compiled_cases["gemv-b2-g64-m1-capped", 90]
    assert capped.max_registers == 128 and "maxnreg" not in capped.constants
    assert all(".maxnreg 128" in build[0]["ptx"] for build in builds.values())
    (table,), builds, _, _ = compiled_cases["table-b2-g64-m4", 90]
    assert table.max_registers is None and not any(".maxnreg" in build[0]["ptx"] for build in builds.values())


def _check_outputs(launch: Launch, arrays: dict, out: torch.Tensor, ref: torch.Tensor, exact: bool = False) -> None:
    """The output the launcher returns matches the reference, and split-K left its workspace and counters as
    it found them (all zero)."""
    name = next(n for n, v in launch.args.items() if v is out)
    y = as_tensor(arrays[name], out)
    if exact:
        assert torch.equal(y, ref)
    else:
        assert_near_reference(y, ref)
    for scratch in ("ws_ptr", "lock_ptr"):
        if launch.constants.get("SPLIT_K", 1) > 1:
            assert not arrays[scratch].any(), scratch


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith(("table-", "fields-", "tc-", "tile-"))])
def test_compiled_kernels_fetch_each_weight_byte_once(case: str, compiled_cases) -> None:
    """The programs of one tile of activation rows (the table's launches, the tensor-core kernels' sm_90
    builds) fetch every byte of the packed weight into exactly one program (no program reads a sector of
    another's: with L1 keeping what a program read, L2 serves each weight byte once per tile of rows), and
    use at least half of every 32-byte sector a warp-wide load of it touches (``benchmarks/kernel_traffic.py``
    reports these counts per format)."""
    (launch,), builds, _, _ = compiled_cases[case, 90]
    first_rows = [(x, y, 0) for y in range(launch.grid[1]) for x in range(launch.grid[0])]
    _, traffic = emulate(launch, builds[True][0], first_rows)
    stream = "packed_ptr" if "packed_ptr" in launch.args else "values_ptr"
    weight, t = launch.args[stream], traffic[stream]
    assert t.unique >= weight.numel() * weight.element_size()
    assert t.per_program == t.unique
    assert t.sectors <= 2 * t.requested


# --- data races: what another schedule of the same program could change ---------------------------------

def _after(ptx: str, first: str, then: str) -> str:
    """``ptx`` less the first ``then`` line after each ``first`` line."""
    out, armed = [], False
    for line in ptx.split("\n"):
        if first in line:
            armed = True
        elif armed and then in line:
            armed = False
            continue
        out.append(line)
    return "\n".join(out)


def _before_arrive(ptx: str) -> str:
    """``ptx`` less the barriers between the last GPU fence before the split-K counter's atomic and it."""
    j = ptx.index("atom.global.gpu.acq_rel.add.u32")
    i = ptx.rindex("fence.acq_rel.gpu", 0, j)
    return ptx[:i] + ptx[i:j].replace("bar.sync \t0;", "") + ptx[j:]


def _waits(op: str, more: int):
    return lambda ptx: re.sub(rf"({op}\s+)(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + more}", ptx)


# each: an edit of the compiled PTX that opens a race, what the race check says of it; the kernels still
# compute the reference run in lockstep (only the check sees it)
RACES = {
    "barrier-after-copy-wait": (lambda p: _after(p, "cp.async.wait_group", "bar.sync"), "no barrier between"),
    "no-proxy-fence": (lambda p: p.replace("fence.proxy.async.shared::cta;", ""), "no fence.proxy.async"),
    "copy-waits-one-less": (_waits("cp.async.wait_group", 1), "cp.async has not been waited for"),
    "wgmma-waits-two-less": (_waits("wgmma.wait_group.sync.aligned", 2), "a wgmma may still read"),
    "relaxed-arrive-no-fences": (lambda p: p.replace("gpu.acq_rel", "gpu.relaxed").replace("fence.acq_rel.gpu;", ""),
                                 "not ordered after that write"),
    "release-arrive-no-fences": (lambda p: p.replace("gpu.acq_rel", "gpu.release").replace("fence.acq_rel.gpu;", ""),
                                 "not ordered after that write"),
    "cta-scope-arrive": (lambda p: p.replace("atom.global.gpu.acq_rel", "atom.global.cta.acq_rel"),
                         "not ordered after that write"),
    "no-barrier-before-arrive": (_before_arrive, "not ordered after that write"),
}
RACE_CASES = [("tc-2:4-m16-split2", r) for r in RACES] + [("tile-b4-g128-m80", r) for r in RACES] + [
    ("fields-b4-g128-m1", r) for r in RACES if "proxy" not in r and "wgmma" not in r] + [
    ("fields-wg-b3-g128-m16", "no-proxy-fence")] + [
    ("gemv-b2-g32-m3-split3", r) for r in RACES if "arrive" in r and "barrier" not in r]  # its partials are
# atomics, each followed by a barrier of Triton's own: no barrier before the arrive is missing there


@pytest.mark.parametrize(("case", "race"), RACE_CASES, ids=[f"{c}-{r}" for c, r in RACE_CASES])
def test_race_check_finds_a_missing_barrier_fence_or_wait(case: str, race: str, compiled_cases) -> None:
    """The sm_90 builds as compiled are race-free (above); each edit that drops a barrier, a proxy or memory
    fence, part of a wait or of the split-K protocol's ordering raises, though lockstep still computes the
    reference."""
    (launch,), builds, out, ref = compiled_cases[case, 90]
    edit, says = RACES[race]
    ptx = edit(builds[True][0]["ptx"])
    assert ptx != builds[True][0]["ptx"], "the edit changed nothing"
    racy = {**builds[True][0], "ptx": ptx}
    name = next(n for n, v in launch.args.items() if v is out)
    assert_near_reference(as_tensor(emulate(launch, racy, check_races=False)[0][name], out), ref)
    with pytest.raises(DataRace, match=says):
        emulate(launch, racy)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith(("tc-2:4", "tile-", "fields-wg"))])
def test_wgmma_kernels_fence_the_copies_at_most_once_per_wgmma(case: str, compiled_cases) -> None:
    """Each ``fence.proxy.async`` waits for the thread's generic-proxy writes: the sm_90 builds have one
    (Triton's, or :func:`~layerbudget.kernels.triton_common.proxy_fenced`'s where Triton leaves it out), and no
    more of them than ``wgmma`` instructions."""
    ptx = compiled_cases[case, 90][1][True][0]["ptx"]
    fences, wgmmas = ptx.count("fence.proxy.async"), ptx.count("wgmma.mma_async")
    assert 0 < fences <= wgmmas, (fences, wgmmas)


@pytest.mark.parametrize("case", [c for c in CASES if "split" in c or c.startswith(("table-", "fields-", "tc-2:4+"))])
def test_split_k_programs_in_reverse_order(case: str, compiled_cases) -> None:
    """The grid run backwards (the last slice of each tile arrives first): the same result, no race, the
    workspace and counters left zero."""
    (launch,), builds, out, ref = compiled_cases[case, 90]
    gx, gy, gz = launch.grid
    programs = [(x, y, z) for z in range(gz) for y in range(gy) for x in range(gx)][::-1]
    arrays, _ = emulate(launch, builds[True][0], programs)
    _check_outputs(launch, arrays, out, ref)


# --- the helpers of the tensor-core kernels, elementwise ----------------------------------------------

@triton.jit
def _fields_xor(a, b, zero, BITS: tl.constexpr):
    """Every field of both halfwords less the zero (:func:`field_less_zero`), each times an odd number, xor-ed."""
    acc = a * 0
    for j in tl.static_range(8 if BITS == 3 else 16 // BITS):
        acc = acc ^ (field_less_zero(a, b, j, BITS, zero) * (2 * j + 1))
    return acc


@triton.jit
def _helpers_kernel(a_ptr, b_ptr, sel_ptr, ints_ptr, floats_ptr, halves_ptr, bhalves_ptr, BLOCK: tl.constexpr):
    """Every helper with inline PTX, on words ``a``, ``b`` and byte selectors ``sel``: int32 results in
    ``ints`` (``BLOCK`` each), fp32 in ``floats``, fp16/bf16 pairs in ``halves``/``bhalves``."""
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs)
    b = tl.load(b_ptr + offs)
    sel = tl.load(sel_ptr + offs)
    tl.store(ints_ptr + offs, prmt(a, b, sel))
    q = (a & 0x000F000F) | 0x64006400  # fp16 1024 + q less 1024 + z, times a scale: as the 2:4 kernels dequantize
    z = (b & 0x000F000F) | 0x64006400
    tl.store(ints_ptr + BLOCK + offs, sub_mul_f16x2(q, z, b & 0x3BFF3BFF))
    zero = half_pair((b & 15).to(tl.float32))
    tl.store(ints_ptr + 2 * BLOCK + offs, _fields_xor(a, b, zero, 2))
    tl.store(ints_ptr + 3 * BLOCK + offs, _fields_xor(a, b, zero, 3))
    tl.store(ints_ptr + 4 * BLOCK + offs, _fields_xor(a, b, zero, 4))
    tl.store(ints_ptr + 5 * BLOCK + offs, _fields_xor(a, b, zero, 8))
    tl.store(floats_ptr + offs, half_float(a & 0x7BFF7BFF, False))
    tl.store(floats_ptr + BLOCK + offs, half_float(a & 0x7BFF7BFF, True))
    two = tl.join(prmt(a, b, sel), prmt(a, b, sel >> 16))  # as the 2:4 tensor-core kernels pick their pairs
    at = offs[:, None, None] * 4 + tl.arange(0, 2)[None, :, None] * 2 + tl.arange(0, 2)[None, None, :]
    tl.store(halves_ptr + at, pair_halves(two & 0x7BFF7BFF, tl.float16))
    tl.store(bhalves_ptr + at, pair_halves(two & 0x7F7F7F7F, tl.bfloat16))


def test_inline_ptx_helpers_match_the_plain_code(gen: torch.Generator) -> None:
    """Bit for bit: the interpreter's plain code against the compiled inline PTX, on random words."""
    block = 128
    a = torch.randint(-2**31, 2**31, (block,), generator=gen, dtype=torch.int64).to(torch.int32)
    b = torch.randint(-2**31, 2**31, (block,), generator=gen, dtype=torch.int64).to(torch.int32)
    sel = (torch.randint(0, 8, (block, 8), generator=gen) << (4 * torch.arange(8))).sum(1).to(torch.int32)
    args = {"a_ptr": a, "b_ptr": b, "sel_ptr": sel, "ints_ptr": torch.zeros(6 * block, dtype=torch.int32),
            "floats_ptr": torch.zeros(2 * block), "halves_ptr": torch.zeros(block, 2, 2, dtype=torch.float16),
            "bhalves_ptr": torch.zeros(block, 2, 2, dtype=torch.bfloat16)}
    launch = Launch(Path(__file__).stem, "_helpers_kernel", (1, 1, 1), args, {"BLOCK": block}, 1, 1)
    arrays, _ = emulate(launch, compile_ptx([launch], paths=(str(Path(__file__).parent),))[0])
    _helpers_kernel[(1,)](*args.values(), BLOCK=block, num_warps=1)  # the interpreter: the plain code
    for name, want in list(args.items())[3:]:
        assert torch.equal(as_tensor(arrays[name], want).view(torch.uint8), want.view(torch.uint8)), name


# --- wgmma's operand forms, on plain products ----------------------------------------------------------

@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, stride_am, stride_ak, stride_bk, stride_bn,
                M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, STEPS: tl.constexpr):
    """``C = A @ B`` in ``STEPS`` dots of ``K`` columns, one program."""
    rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    acc = tl.zeros((M, N), tl.float32)
    for s in range(STEPS):
        a = tl.load(a_ptr + rm[:, None] * stride_am + (s * K + rk)[None, :] * stride_ak)
        b = tl.load(b_ptr + (s * K + rk)[:, None] * stride_bk + rn[None, :] * stride_bn)
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)


# (M, N, K, A column-major, B column-major, dtype, warps): 16, 32 and 64 columns of K give 32, 64 and 128-byte
# swizzles; B row-major is MN-major, column-major K-major; 128 rows on 8 warps are two warpgroups
DOTS = [(64, 16, 16, False, False, torch.float16, 4), (64, 64, 32, False, True, torch.float16, 4),
        (64, 32, 64, True, False, torch.bfloat16, 4), (128, 64, 64, False, False, torch.float16, 8),
        (64, 128, 16, True, True, torch.float16, 4), (128, 128, 32, False, True, torch.bfloat16, 8)]


def test_wgmma_operand_forms_compute_the_product(gen: torch.Generator) -> None:
    """Triton's sm_90 ``tl.dot`` (``wgmma``, both operands in swizzled shared memory) gives the float64
    product of its fp16/bf16 operands to fp32 rounding."""
    launches, refs = [], []
    for m, n, k, a_cols, b_cols, dtype, warps in DOTS:
        a = torch.randn(m, 2 * k, generator=gen).to(dtype)
        b = torch.randn(2 * k, n, generator=gen).to(dtype)
        a_in = a.t().contiguous().t() if a_cols else a
        b_in = b.t().contiguous().t() if b_cols else b
        args = {"a_ptr": a_in, "b_ptr": b_in, "c_ptr": torch.zeros(m, n), "stride_am": a_in.stride(0),
                "stride_ak": a_in.stride(1), "stride_bk": b_in.stride(0), "stride_bn": b_in.stride(1)}
        launches.append(Launch(Path(__file__).stem, "_dot_kernel", (1, 1, 1), args,
                               {"M": m, "N": n, "K": k, "STEPS": 2}, warps, 2))
        refs.append(a.double() @ b.double())
    for launch, compiled, ref in zip(launches, compile_ptx(launches, paths=(str(Path(__file__).parent),)), refs,
                                     strict=True):
        assert "wgmma.mma_async" in compiled["ptx"]
        arrays, _ = emulate(launch, compiled)
        y = as_tensor(arrays["c_ptr"], launch.args["c_ptr"]).double()
        assert (y - ref).abs().max() <= 1e-6 * ref.abs().max(), launch.constants
