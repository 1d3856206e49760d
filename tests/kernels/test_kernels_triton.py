"""Every Triton kernel (decode, tensor-core, dequantize) against its torch reference on small, ragged shapes.

The interpreter runs them on CPU hosts; on a CUDA host the same tests compile and run them. The
tolerance is :mod:`kernel_checks`'.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from kernel_checks import assert_near_reference
from packaging.version import Version

from layerbudget.kernels.configs import LaunchConfig, pick_config, split_for, tc24_steps, tc_step_fields
from layerbudget.kernels.ops import kernel_supported, lowbit_matmul, sparse24_matmul, sparse24_quant_matmul
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.reference import lowbit_matmul_ref, sparse24_matmul_ref, sparse24_quant_matmul_ref
from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24
from layerbudget.kernels.triton_common import field_less_zero, half_pair
from layerbudget.kernels.workspace import split_k_buffers

# (N, K, group_size): N ragged against every block size; groups covering whole chunks, chunks holding
# several groups, and groups of 48 that start at irregular fields; per-channel.
GRIDS = [(40, 256, 128), (72, 256, 32), (40, 192, 48), (24, 160, None)]
# num_stages 1: the low-bit decode kernel reads in place; max_registers: a launch with its registers capped (maxnreg)
GEMV = [LaunchConfig("gemv", 1, 16, 64), LaunchConfig("gemv", 2, 32, 128, split_k=2, num_stages=1),
        LaunchConfig("gemv", 4, 16, 32, split_k=3, max_registers=64)]
TC = [LaunchConfig("tc", 16, 16, 64), LaunchConfig("tc", 16, 32, 128), LaunchConfig("tc", 8, 64, 128, num_warps=2)]
TC_SPLIT = [LaunchConfig("tc", 16, 16, 64, split_k=2), LaunchConfig("tc", 16, 32, 32, split_k=3),
            LaunchConfig("tc", 8, 16, 64, split_k=3, num_warps=2)]


def _half_value(word: int, half: int, dtype: torch.dtype) -> float:
    """Halfword ``half`` (0: low) of the 32-bit ``word`` read as a 16-bit float of ``dtype``."""
    pattern = torch.tensor([(word >> (16 * half)) & 0xFFFF], dtype=torch.int32).to(torch.int16)
    return pattern.view(dtype).item()


def _packable(bits: int, k: int, group: int | None) -> bool:
    return k % (32 if bits == 3 else 32 // bits) == 0 and (group is None or k % group == 0)


@pytest.mark.parametrize("config", GEMV + TC + TC_SPLIT,
                         ids=lambda c: f"{c.kernel}-m{c.block_m}-n{c.block_n}-k{c.block_k}-s{c.split_k}-p{c.num_stages}")
@pytest.mark.parametrize(("n", "k", "group_size"), GRIDS, ids=[f"{n}x{k}-g{g}" for n, k, g in GRIDS])
@pytest.mark.parametrize("bits", [2, 3, 4, 8], ids=lambda b: f"b{b}")
def test_lowbit_kernels(bits: int, n: int, k: int, group_size: int | None, config: LaunchConfig, device: str,
                        gen: torch.Generator) -> None:
    if not _packable(bits, k, group_size):
        pytest.skip("K does not pack at this width")
    weight = PackedQuantWeight.from_dense(torch.randn(n, k, generator=gen), bits, group_size).to(device)
    if not kernel_supported(weight):
        pytest.skip("groups cut a field's run of values (see test_groups_that_split_a_field_run_fall_back)")
    for m in (1, 5):
        x = torch.randn(m, k, generator=gen).half().to(device)
        bias = torch.randn(n, generator=gen).to(device) if m == 5 else None
        assert_near_reference(lowbit_matmul(x, weight, bias, path="triton", config=config), lowbit_matmul_ref(x, weight, bias))


@pytest.mark.parametrize(("bits", "group", "k", "rows", "dtype", "expected"), [
    (4, 128, 8192, 8, torch.float16, True), (4, 128, 8192, 16, torch.bfloat16, True),  # one group per chunk
    (2, 64, 8192, 8, torch.float16, True), (8, 128, 4096, 16, torch.float16, True),
    (2, 64, 8192, 16, torch.float16, True), (2, 32, 8192, 16, torch.float16, True),
    (2, 16, 8192, 8, torch.float16, False),  # a field's 32 values would span two groups
    (3, 128, 8192, 8, torch.float16, True), (3, 128, 8192, 16, torch.float16, True),
    (3, 128, 8192, 8, torch.bfloat16, False), (8, 128, 8192, 8, torch.bfloat16, False),
    (4, 32, 160, 8, torch.float16, False),  # chunks of 4 units: a dot's K would be 8
])
def test_which_launches_take_one_dot_per_field(bits: int, group: int, k: int, rows: int, dtype: torch.dtype,
                                               expected: bool) -> None:
    from layerbudget.kernels.triton_fielddot import fits

    weight = PackedQuantWeight.from_dense(torch.randn(16, k), bits, group)
    assert fits(weight, dtype, LaunchConfig("tc", rows, 64, 128)) is expected
    if expected and dtype == torch.float16:  # the table's own launch for these rows goes there too
        assert fits(weight, dtype, pick_config(rows, 4096, k, "lowbit", "tc", bits, group))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", [2, 4, 8], ids=lambda b: f"b{b}")
def test_field_programs_read_codes_as_floats(bits: int, bf16: bool, gen: torch.Generator) -> None:
    """The PTX of each field (a shift, then ``lop3`` with the mask and exponent: ``(t & b) | c``), run on
    words in Python, reads field ``j`` of both halfwords as the 16-bit floats ``2**bits + q``."""
    import re

    from layerbudget.kernels.triton_fielddot import field_programs

    if bf16 and bits == 8:
        pytest.skip("bf16 cannot hold 2**8 + q")
    words = torch.randint(0, 2**32, (256,), generator=gen, dtype=torch.int64).tolist()
    for j, asm in enumerate(field_programs(bits, bf16)):
        move = re.search(r"(shl\.b32|shr\.u32|mov\.b32) t, \$1(?:, (\d+))?;", asm)
        lop = re.search(r"lop3\.b32 \$0, t, (\d+), (\d+), 0xEA;", asm)
        assert move and lop, asm
        amount = int(move.group(2) or 0)
        for w in words:
            t = (w << amount) if move.group(1) == "shl.b32" else (w >> amount)
            out = ((t & int(lop.group(1))) | int(lop.group(2))) & 0xFFFFFFFF
            for half in (0, 1):
                value = _half_value(out, half, torch.bfloat16 if bf16 else torch.float16)
                q = (w >> (16 * half + j * bits)) & ((1 << bits) - 1)
                assert value == 2**bits + q, (j, hex(w), half, value, q)


def test_high_plane_programs_read_bits_as_floats(gen: torch.Generator) -> None:
    """The PTX of each bit of the 3-bit high plane (a shift, then ``lop3`` with the mask and exponent), run in
    Python on words of two bytes widened to halfwords (sign-extended, as ``int8 -> int16`` does), reads bit
    ``j`` of each byte as the fp16 ``32 + 4 * bit``."""
    import re

    from layerbudget.kernels.triton_fielddot import high_programs

    def widen(byte: int) -> int:
        return byte | (0xFF00 if byte & 0x80 else 0)

    pairs = torch.randint(0, 256, (256, 2), generator=gen, dtype=torch.int64).tolist()
    for j, asm in enumerate(high_programs()):
        shift = int(re.search(r"shl\.b32 t, \$1, (\d+);", asm).group(1))
        lop = re.search(r"lop3\.b32 \$0, t, (0x[0-9a-f]+), (0x[0-9a-f]+), 0xEA;", asm)
        assert lop, asm
        for b0, b1 in pairs:
            word = widen(b0) | (widen(b1) << 16)
            out = (((word << shift) & 0xFFFFFFFF) & int(lop.group(1), 16)) | int(lop.group(2), 16)
            for half, byte in enumerate((b0, b1)):
                assert _half_value(out, half, torch.float16) == 32 + 4 * ((byte >> j) & 1), (j, b0, b1, half)


# the bit of each halfword where field_code's units put a code's lowest bit (triton_common.code_position)
CODE_POSITION = {2: 8, 3: 7, 4: 4, 8: 0}


@triton.jit
def _fields_less_zero(words_ptr, high_ptr, zero_ptr, out_ptr, J: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    out = field_less_zero(tl.load(words_ptr + offs), tl.load(high_ptr + offs), J, BITS,
                          half_pair(tl.load(zero_ptr + offs)))
    tl.store(out_ptr + offs, out)


@pytest.mark.parametrize("bits", [2, 3, 4, 8], ids=lambda b: f"b{b}")
def test_field_less_zero_reads_every_field(bits: int, device: str, gen: torch.Generator) -> None:
    """Field ``j`` of both halfwords (3 bits: two from the low plane, the third from bit ``j`` or ``j + 8`` of the
    high-plane halfword), less the zero, comes out as the fp16 pair ``(q - z) * 2**(position - 24)``, exactly."""
    n = 256
    words = torch.randint(-2**31, 2**31, (n,), generator=gen, dtype=torch.int64).to(torch.int32)
    high = torch.randint(-2**15, 2**15, (n,), generator=gen, dtype=torch.int64).to(torch.int16)
    z = torch.randint(0, 2**bits, (n,), generator=gen).double()
    unit = 2.0 ** (CODE_POSITION[bits] - 24)
    width = 2 if bits == 3 else bits
    w, h = words.long() & 0xFFFFFFFF, high.long() & 0xFFFF
    out = torch.empty(n, dtype=torch.int32, device=device)
    for j in range((16 if bits == 3 else 32 // bits) // 2):
        _fields_less_zero[(1,)](words.to(device), high.to(device), (z * unit).float().to(device), out, j, bits, n)
        got = out.cpu().view(torch.int16).view(torch.float16).double().view(n, 2)  # (low half, high half)
        for half in (0, 1):
            q = (w >> (16 * half + width * j)) & ((1 << width) - 1)
            if bits == 3:
                q = q | (((h >> (j + 8 * half)) & 1) << 2)
            assert torch.equal(got[:, half], (q.double() - z) * unit), (j, half)


@pytest.mark.parametrize("kernel", ["gemv", "tc"])
def test_lowbit_kernel_bf16_metadata(kernel: str, device: str, gen: torch.Generator) -> None:
    weight = PackedQuantWeight.from_dense(torch.randn(40, 128, generator=gen), 4, 32, torch.bfloat16).to(device)
    x = torch.randn(3, 128, generator=gen).half().to(device)
    config = pick_config(3, 40, 128, "lowbit", kernel)
    assert_near_reference(lowbit_matmul(x, weight, path="triton", config=config), lowbit_matmul_ref(x, weight))


def test_default_configs_cover_every_m(device: str, gen: torch.Generator) -> None:
    weight = PackedQuantWeight.from_dense(torch.randn(48, 256, generator=gen), 4, 128).to(device)
    for m in (1, 2, 3, 4, 17):
        x = torch.randn(m, 256, generator=gen).half().to(device)
        assert_near_reference(lowbit_matmul(x, weight, path="triton"), lowbit_matmul_ref(x, weight))


def test_split_k_leaves_the_workspace_clean(device: str, gen: torch.Generator) -> None:
    """Split-K programs meet in a shared workspace; every launch must leave it (and its counters) zero."""
    weight = PackedQuantWeight.from_dense(torch.randn(40, 512, generator=gen), 4, 64).to(device)
    x = torch.randn(4, 512, generator=gen).half().to(device)
    for config in (LaunchConfig("gemv", 4, 16, 64, split_k=4), LaunchConfig("gemv", 1, 32, 32, split_k=16),
                   LaunchConfig("tc", 16, 16, 128, split_k=4)):
        for _ in range(2):
            assert_near_reference(lowbit_matmul(x, weight, path="triton", config=config), lowbit_matmul_ref(x, weight))
        ws, lock = split_k_buffers(x.device, 4 * 4 * 40, 3)  # the tensor-core kernel keeps a slice per split
        assert not ws.any() and not lock.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the Triton interpreter")
@pytest.mark.parametrize("fmt", ["lowbit", "sparse24", "sparse24_quant"])
@pytest.mark.parametrize("m", [1, 9])
def test_bf16_activations_on_gpu(fmt: str, m: int, gen: torch.Generator) -> None:
    dense = magnitude_prune_24(torch.randn(72, 256, generator=gen))
    x = torch.randn(m, 256, generator=gen).bfloat16().cuda()
    if fmt == "lowbit":
        w = PackedQuantWeight.from_dense(dense, 4, 128, torch.bfloat16).to("cuda")
        y, ref = lowbit_matmul(x, w, path="triton"), lowbit_matmul_ref(x, w)
    elif fmt == "sparse24":
        w = Sparse24Weight.from_dense(dense, dtype=torch.bfloat16).to("cuda")
        y, ref = sparse24_matmul(x, w, path="triton"), sparse24_matmul_ref(x, w)
    else:
        w = Sparse24QuantWeight.from_dense(dense, 4, 64).to("cuda")
        y, ref = sparse24_quant_matmul(x, w, path="triton"), sparse24_quant_matmul_ref(x, w)
    assert (y.double() - ref.double()).norm() <= 1e-2 * ref.double().norm()  # bf16: 8-bit mantissa


@pytest.mark.parametrize("fmt", ["lowbit", "sparse24", "sparse24_quant"])
def test_decode_kernels_take_bf16(fmt: str, device: str, gen: torch.Generator) -> None:
    """The decode kernels (no tensor-core dot, so the interpreter runs them right) with bf16 activations and,
    for 2:4, bf16 kept values."""
    dense = magnitude_prune_24(torch.randn(40, 192, generator=gen))
    x = torch.randn(3, 192, generator=gen).bfloat16().to(device)
    config = LaunchConfig("gemv", 4, 16, 64)
    if fmt == "lowbit":
        w = PackedQuantWeight.from_dense(dense, 4, 32, torch.bfloat16).to(device)
        y, ref = lowbit_matmul(x, w, path="triton", config=config), lowbit_matmul_ref(x, w)
    elif fmt == "sparse24":
        w = Sparse24Weight.from_dense(dense, dtype=torch.bfloat16).to(device)
        y, ref = sparse24_matmul(x, w, path="triton", config=config), sparse24_matmul_ref(x, w)
    else:
        w = Sparse24QuantWeight.from_dense(dense, 4, 32).to(device)
        y, ref = sparse24_quant_matmul(x, w, path="triton", config=config), sparse24_quant_matmul_ref(x, w)
    assert y.dtype == torch.bfloat16
    assert (y.double() - ref.double()).norm() <= 1e-2 * ref.double().norm()  # bf16: 8-bit mantissa


def test_sparse24_decode_kernel_takes_unaligned_activations(device: str, gen: torch.Generator) -> None:
    """The 2:4 decode kernel reads a group's four activations as one 8-byte word; ``x`` starting off such a
    boundary (a contiguous view into a larger buffer) still gives the right result."""
    dense = magnitude_prune_24(torch.randn(24, 128, generator=gen))
    weight = Sparse24Weight.from_dense(dense, dtype=torch.float16).to(device)
    buf = torch.randn(2 * 128 + 1, generator=gen).half().to(device)
    x = buf[1:].view(2, 128)
    assert x.is_contiguous() and x.data_ptr() % 8 != 0
    assert_near_reference(sparse24_matmul(x, weight, path="triton", config=GEMV[2]), sparse24_matmul_ref(x, weight))


SPARSE_SHAPES = [(40, 192), (72, 96), (24, 512)]  # K/2 = 96, 48 (one unit per chunk), 256


@pytest.mark.parametrize("config", [GEMV[0], GEMV[2], TC[0], TC[1], TC_SPLIT[1]],
                         ids=lambda c: f"{c.kernel}-m{c.block_m}-s{c.split_k}")
@pytest.mark.parametrize(("n", "k"), SPARSE_SHAPES, ids=[f"{n}x{k}" for n, k in SPARSE_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_sparse24_kernels(dtype: torch.dtype, n: int, k: int, config: LaunchConfig, device: str,
                          gen: torch.Generator) -> None:
    dense = magnitude_prune_24(torch.randn(n, k, generator=gen))
    dense[:3, :16] = 0  # groups with fewer than two non-zeros
    weight = Sparse24Weight.from_dense(dense, dtype=dtype).to(device)
    x = torch.randn(5, k, generator=gen).half().to(device)
    bias = torch.randn(n, generator=gen).to(device)
    assert_near_reference(sparse24_matmul(x, weight, bias, path="triton", config=config), sparse24_matmul_ref(x, weight, bias))


SQ_GRIDS = [(4, 32), (4, None), (3, 32), (2, 16), (8, 48)]


@pytest.mark.parametrize("config", [GEMV[0], GEMV[1], TC[0], TC[1], TC_SPLIT[0]],
                         ids=lambda c: f"{c.kernel}-m{c.block_m}-s{c.split_k}")
@pytest.mark.parametrize(("bits", "group_size"), SQ_GRIDS, ids=[f"b{b}-g{g}" for b, g in SQ_GRIDS])
def test_sparse24_quant_kernels(bits: int, group_size: int | None, config: LaunchConfig, device: str,
                                gen: torch.Generator) -> None:
    n, k = 40, 192  # K/2 = 96 kept values per row: 3 groups of 32, 6 of 16, 2 of 48
    weight = Sparse24QuantWeight.from_dense(torch.randn(n, k, generator=gen), bits, group_size, prune=True)
    weight = weight.to(device)
    bias = torch.randn(n, generator=gen).to(device)
    for m in (1, 3):
        x = torch.randn(m, k, generator=gen).half().to(device)
        assert_near_reference(sparse24_quant_matmul(x, weight, bias, path="triton", config=config),
               sparse24_quant_matmul_ref(x, weight, bias))


@pytest.mark.parametrize("config", [LaunchConfig("tc", 16, 16, 64), LaunchConfig("tc", 16, 32, 128),
                                    LaunchConfig("tc", 128, 16, 64), LaunchConfig("tc", 16, 16, 64, split_k=4),
                                    LaunchConfig("tc", 128, 16, 64, split_k=3)],
                         ids=lambda c: f"m{c.block_m}-k{c.block_k}-s{c.split_k}")
@pytest.mark.parametrize("bits", [2, 3, 4, 8, None], ids=lambda b: f"b{b}")
def test_sparse24_tensor_core_kernels_on_long_rows(bits: int | None, config: LaunchConfig, device: str,
                                                   gen: torch.Generator) -> None:
    """Rows of many chunks (every field of every chunk reaches the dot); 16-row tiles take the codes' fields
    four at a time, 128-row tiles one at a time (:func:`~layerbudget.kernels.configs.tc24_fields`); split-K
    slices meet in the workspace."""
    n, k = 24, 1024
    dense = torch.randn(n, k, generator=gen)
    if bits is None:
        weight = Sparse24Weight.from_dense(magnitude_prune_24(dense)).to(device)
    else:
        weight = Sparse24QuantWeight.from_dense(dense, bits, 64, prune=True).to(device)
    x = torch.randn(3, k, generator=gen).half().to(device)
    ref = sparse24_matmul_ref if bits is None else sparse24_quant_matmul_ref
    run = sparse24_matmul if bits is None else sparse24_quant_matmul
    assert_near_reference(run(x, weight, path="triton", config=config), ref(x, weight))


@pytest.mark.parametrize("bits", [2, 3, 4, 8], ids=lambda b: f"b{b}")
def test_dequantize_kernels_are_exact(bits: int, device: str, gen: torch.Generator) -> None:
    """The large-M path's dequantize kernels write exactly the reference's ``W_hat``."""
    from layerbudget.kernels import triton_lowbit, triton_sparse

    for n, k, g in GRIDS:
        if _packable(bits, k, g):
            w = PackedQuantWeight.from_dense(torch.randn(n, k, generator=gen), bits, g).to(device)
            if kernel_supported(w):  # else the torch reference dequantizes (see test_groups_that_split_...)
                assert torch.equal(triton_lowbit.dequantize_lowbit(w, torch.float16), w.dequantize(torch.float16))
    dense = magnitude_prune_24(torch.randn(40, 256, generator=gen))
    sparse = Sparse24Weight.from_dense(dense, dtype=torch.float16).to(device)
    assert torch.equal(triton_sparse.dequantize_sparse24(sparse, torch.float16), sparse.to_dense(torch.float16))
    sq = Sparse24QuantWeight.from_dense(dense, bits, 32).to(device)
    assert torch.equal(triton_sparse.dequantize_sparse24(sq, torch.float16), sq.to_dense(torch.float16))
    # K/2 = 48: one position unit per chunk; 3 bits: K/2 = 96, rows of an odd number of words
    short = magnitude_prune_24(torch.randn(24, 192 if bits == 3 else 96, generator=gen))
    for out in (torch.float16, torch.bfloat16):  # kept values in another dtype are rounded to the output's
        for values in (torch.float32, torch.bfloat16):
            w = Sparse24Weight.from_dense(short, dtype=values).to(device)
            _same(triton_sparse.dequantize_sparse24(w, out), w.to_dense(out), device)
        sq = Sparse24QuantWeight.from_dense(short, bits, 16 if bits != 8 else 24).to(device)
        _same(triton_sparse.dequantize_sparse24(sq, out), sq.to_dense(out), device)


def _same(y: torch.Tensor, ref: torch.Tensor, device: str) -> None:
    """Equal; the interpreter rounds fp32 to bf16 towards zero (the GPU to nearest), so there bf16 results
    may differ by one unit in the last place."""
    if device == "cuda" or y.dtype != torch.bfloat16:
        assert torch.equal(y, ref)
    else:
        assert ((y.float() - ref.float()).abs() <= ref.float().abs() * 2.0**-7).all()


def test_groups_that_split_a_field_run_fall_back(device: str, gen: torch.Generator) -> None:
    """Groups of 8 four-bit values cut the 32-value runs of a field: the kernels refuse, auto dequantizes."""
    weight = PackedQuantWeight.from_dense(torch.randn(16, 256, generator=gen), 4, 8).to(device)
    assert not kernel_supported(weight)
    x = torch.randn(2, 256, generator=gen).half().to(device)
    with pytest.raises(ValueError, match="quantization group"):
        lowbit_matmul(x, weight, path="triton")
    assert_near_reference(lowbit_matmul(x, weight, path="dequant"), lowbit_matmul_ref(x, weight))


def test_rows_too_short_for_a_tensor_core_step(device: str, gen: torch.Generator) -> None:
    """8-bit codes in rows of 24: no run of fields fills a dot, so the tensor-core kernel is refused (the
    decode kernel still runs, and the automatic path dequantizes on CUDA)."""
    weight = PackedQuantWeight.from_dense(torch.randn(16, 24, generator=gen), 8, None).to(device)
    assert kernel_supported(weight) and tc_step_fields(8, 24, 24, 128) is None
    x = torch.randn(8, 24, generator=gen).half().to(device)
    with pytest.raises(ValueError, match="tensor-core kernel needs runs of fields"):
        lowbit_matmul(x, weight, path="triton")
    assert_near_reference(lowbit_matmul(x[:2], weight, path="triton"), lowbit_matmul_ref(x[:2], weight))
    if device == "cuda":
        assert_near_reference(lowbit_matmul(x, weight), lowbit_matmul_ref(x, weight))


LLAMA = [(1, 4096, 4096), (16, 14336, 4096), (64, 4096, 14336), (256, 8192, 8192), (1, 28672, 8192)]


@pytest.mark.parametrize(("m", "n", "k"), LLAMA, ids=[f"M{m}-{n}x{k}" for m, n, k in LLAMA])
def test_pick_config_fills_gpu(m: int, n: int, k: int) -> None:
    cfg = pick_config(m, n, k)
    assert cfg.kernel == ("gemv" if m <= 4 else "tc")
    programs = -(-m // cfg.block_m) * -(-n // cfg.block_n) * cfg.split_k
    assert programs >= 128 or cfg.split_k == 16  # roughly one program per SM at least, or as split as allowed
    assert programs <= 2 * 4 * 132 or cfg.split_k == 1  # split-K never overfills the GPU
    assert -(-k // cfg.block_k) >= 2 * cfg.split_k  # every K slice gets >= 2 steps
    for fmt, bits in (("sparse24", None), ("sparse24_quant", 4), ("sparse24_quant", 3)):  # the 2:4 tensor-core kernels
        tc = pick_config(m, n, k, fmt, "tc", bits, 64)
        tiles = -(-m // tc.block_m) * -(-n // tc.block_n)
        assert tc24_steps(k, bits, tc.block_m, tc.block_k) >= 2 * tc.split_k
        assert tiles * tc.split_k <= 2 * 4 * 132 or tc.split_k == 1


def test_split_for() -> None:
    assert split_for(1000, 64) == 1  # enough programs already
    assert split_for(16, 64) == 16  # few programs, long K
    assert split_for(16, 8) == 4  # every split keeps two steps


@pytest.mark.parametrize(
    ("args", "match"),
    [(("tc", 16, 16, 48), "block_k"), (("tc", 16, 16, 32, 0), "split_k"), (("gemv", 3, 16, 32), "block_m"),
     (("mma", 16, 16, 32), "kernel"), (("tc", 4, 16, 32), "block_m")],
)
def test_launch_config_validates(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LaunchConfig(*args)


@triton.jit
def _range_sum(out_ptr, lo, hi):
    acc = lo * 0
    for i in range(lo, hi):  # loop bounds that are run-time scalars
        acc += i
    tl.store(out_ptr, acc)


def test_interpreter_takes_run_time_scalars_as_loop_bounds_under_the_triton_3_6_fix(monkeypatch) -> None:
    """Under Triton 3.6's interpreter a scalar becomes a loop bound through ``int()`` on its one-element array,
    which numpy 2.4 refuses; the kernels' module makes it take the element instead (applied on import there,
    the fix is applied here on top of an interpreter that behaves as 3.6's does, whatever Triton is installed)."""
    import numpy as np
    from triton.runtime import interpreter

    from layerbudget.kernels import triton_common

    if not triton_common.INTERPRET:
        pytest.skip("compiled kernels: the interpreter does not run")
    patch_tensor = interpreter._patch_lang_tensor

    def as_triton_3_6(tensor, scope) -> None:  # Triton 3.6's conversion of a scalar to an int
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", as_triton_3_6)
    out = torch.zeros(1, dtype=torch.int32)
    if Version(np.__version__) >= Version("2.4"):
        with pytest.raises(Exception, match="0-dimensional"):
            _range_sum[(1,)](out, 3, 11)
    triton_common._interpreter_scalar_index()
    _range_sum[(1,)](out, 3, 11)
    assert out.item() == sum(range(3, 11))
