"""Every Triton kernel against its torch reference on small, ragged shapes (interpreter on CPU hosts).

Tolerance: outputs are fp16 and both sides accumulate in fp32 from identical fp16 weight tiles, so
they differ only by accumulation order, i.e. at most about one fp16 ulp of the output:
``rtol = atol = 2e-3``.
"""

from __future__ import annotations

import pytest
import torch

from layerbudget.kernels.configs import LaunchConfig, pick_config

from layerbudget.kernels.ops import lowbit_matmul, sparse24_matmul, sparse24_quant_matmul

from layerbudget.kernels.quant_weight import PackedQuantWeight

from layerbudget.kernels.reference import lowbit_matmul_ref, sparse24_matmul_ref, sparse24_quant_matmul_ref

from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24

TOL = {"rtol": 2e-3, "atol": 2e-3}


def meta_mode(group: int, num_groups: int, block_k: int) -> int:
    """Mirror of ``triton_lowbit.meta_mode`` (imported lazily: the kernel module needs TRITON_INTERPRET)."""
    from layerbudget.kernels.triton_lowbit import meta_mode as mode

    return mode(group, num_groups, block_k)
# (N, K, group_size): N and K ragged against every block size used; 3 groups per row where grouped
GRIDS = [(40, 192, 64), (72, 96, 32), (24, 160, None)]
ROWS = [1, 7, 33]
SPLIT = LaunchConfig(16, 16, 32, split_k=2)  # split-K; a 32-wide K tile inside one group
EXPAND = LaunchConfig(32, 32, 128)  # a K tile spanning whole groups (scales loaded per group, repeated)
GATHER = LaunchConfig(16, 64, 64)  # groups of 96 straddle K tiles (scales gathered per column)


def _check(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.dtype == ref.dtype and y.shape == ref.shape
    torch.testing.assert_close(y.float(), ref.float(), **TOL)


@pytest.mark.parametrize("m", ROWS, ids=[f"M{m}" for m in ROWS])
@pytest.mark.parametrize(("n", "k", "group_size"), GRIDS, ids=[f"{n}x{k}-g{g}" for n, k, g in GRIDS])
@pytest.mark.parametrize("bits", [2, 3, 4, 8], ids=lambda b: f"b{b}")
def test_lowbit_kernel(bits: int, n: int, k: int, group_size: int | None, m: int, device: str,
                       gen: torch.Generator) -> None:
    weight = PackedQuantWeight.from_dense(torch.randn(n, k, generator=gen), bits, group_size).to(device)
    x = torch.randn(m, k, generator=gen).half().to(device)
    bias = torch.randn(n, generator=gen).to(device) if m != 7 else None
    _check(lowbit_matmul(x, weight, bias, path="triton"), lowbit_matmul_ref(x, weight, bias))


CONFIGS = [(SPLIT, 64, 0), (EXPAND, 32, 1), (GATHER, 96, 2)]


@pytest.mark.parametrize(("config", "group_size", "mode"), CONFIGS, ids=["splitk", "expand-meta", "gather-meta"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8], ids=lambda b: f"b{b}")
def test_lowbit_kernel_configs(bits: int, config: LaunchConfig, group_size: int, mode: int, device: str,
                               gen: torch.Generator) -> None:
    assert meta_mode(group_size, 192 // group_size, config.block_k) == mode  # the path this case covers
    weight = PackedQuantWeight.from_dense(torch.randn(40, 192, generator=gen), bits, group_size).to(device)
    bias = torch.randn(40, generator=gen).half().to(device)
    for m in (1, 17):
        x = torch.randn(m, 192, generator=gen).half().to(device)
        _check(lowbit_matmul(x, weight, bias, path="triton", config=config), lowbit_matmul_ref(x, weight, bias))


def test_lowbit_kernel_raises_small_k_tile_for_3_bits(device: str, gen: torch.Generator) -> None:
    weight = PackedQuantWeight.from_dense(torch.randn(24, 96, generator=gen), 3, 32).to(device)
    x = torch.randn(2, 96, generator=gen).half().to(device)
    config = LaunchConfig(16, 16, 16)  # 16 < one 3-bit run: the launcher widens it to 32
    _check(lowbit_matmul(x, weight, path="triton", config=config), lowbit_matmul_ref(x, weight))


def test_lowbit_kernel_bf16_metadata(device: str, gen: torch.Generator) -> None:
    weight = PackedQuantWeight.from_dense(torch.randn(40, 128, generator=gen), 4, 32, torch.bfloat16).to(device)
    x = torch.randn(5, 128, generator=gen).half().to(device)
    _check(lowbit_matmul(x, weight, path="triton"), lowbit_matmul_ref(x, weight))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the Triton interpreter")
@pytest.mark.parametrize("fmt", ["lowbit", "sparse24", "sparse24_quant"])
def test_bf16_activations_on_gpu(fmt: str, gen: torch.Generator) -> None:
    dense = magnitude_prune_24(torch.randn(72, 256, generator=gen))
    x = torch.randn(9, 256, generator=gen).bfloat16().cuda()
    if fmt == "lowbit":
        w = PackedQuantWeight.from_dense(dense, 4, 128, torch.bfloat16).to("cuda")
        y, ref = lowbit_matmul(x, w, path="triton"), lowbit_matmul_ref(x, w)
    elif fmt == "sparse24":
        w = Sparse24Weight.from_dense(dense, dtype=torch.bfloat16).to("cuda")
        y, ref = sparse24_matmul(x, w, path="triton"), sparse24_matmul_ref(x, w)
    else:
        w = Sparse24QuantWeight.from_dense(dense, 4, 64).to("cuda")
        y, ref = sparse24_quant_matmul(x, w, path="triton"), sparse24_quant_matmul_ref(x, w)
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-2, atol=1e-2)  # bf16 output: 8-bit mantissa


SPARSE_SHAPES = [(40, 192), (72, 96)]


@pytest.mark.parametrize("m", ROWS, ids=[f"M{m}" for m in ROWS])
@pytest.mark.parametrize(("n", "k"), SPARSE_SHAPES, ids=[f"{n}x{k}" for n, k in SPARSE_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_sparse24_kernel(dtype: torch.dtype, n: int, k: int, m: int, device: str, gen: torch.Generator) -> None:
    dense = magnitude_prune_24(torch.randn(n, k, generator=gen))
    dense[:3, :16] = 0  # groups with fewer than two non-zeros
    weight = Sparse24Weight.from_dense(dense, dtype=dtype).to(device)
    x = torch.randn(m, k, generator=gen).half().to(device)
    bias = torch.randn(n, generator=gen).to(device)
    _check(sparse24_matmul(x, weight, bias, path="triton"), sparse24_matmul_ref(x, weight, bias))


@pytest.mark.parametrize("config", [SPLIT, LaunchConfig(16, 16, 16)], ids=["splitk", "bk16"])
def test_sparse24_kernel_configs(config: LaunchConfig, device: str, gen: torch.Generator) -> None:
    weight = Sparse24Weight.from_dense(torch.randn(40, 192, generator=gen), prune=True, dtype=torch.bfloat16)
    weight = weight.to(device)
    x = torch.randn(3, 192, generator=gen).half().to(device)
    _check(sparse24_matmul(x, weight, path="triton", config=config), sparse24_matmul_ref(x, weight))


SQ_GRIDS = [(4, 32), (4, None), (3, 32), (2, 16), (8, 48)]


@pytest.mark.parametrize("m", [1, 33], ids=["M1", "M33"])
@pytest.mark.parametrize(("bits", "group_size"), SQ_GRIDS, ids=[f"b{b}-g{g}" for b, g in SQ_GRIDS])
def test_sparse24_quant_kernel(bits: int, group_size: int | None, m: int, device: str,
                               gen: torch.Generator) -> None:
    n, k = 40, 192  # K/2 = 96 kept values per row: 3 groups of 32, 6 of 16, 2 of 48
    weight = Sparse24QuantWeight.from_dense(torch.randn(n, k, generator=gen), bits, group_size, prune=True)
    weight = weight.to(device)
    x = torch.randn(m, k, generator=gen).half().to(device)
    bias = torch.randn(n, generator=gen).to(device)
    _check(sparse24_quant_matmul(x, weight, bias, path="triton"), sparse24_quant_matmul_ref(x, weight, bias))


SQ_CONFIGS = [(SPLIT, 16), (EXPAND, 16), (GATHER, 48), (LaunchConfig(16, 16, 16), 32)]


@pytest.mark.parametrize(("config", "group_size"), SQ_CONFIGS, ids=["splitk", "expand-meta", "gather-meta", "bk16"])
@pytest.mark.parametrize("bits", [3, 4], ids=lambda b: f"b{b}")
def test_sparse24_quant_kernel_configs(config: LaunchConfig, group_size: int, bits: int, device: str,
                                       gen: torch.Generator) -> None:
    dense = torch.randn(40, 192, generator=gen)
    weight = Sparse24QuantWeight.from_dense(dense, bits, group_size, prune=True).to(device)
    x = torch.randn(5, 192, generator=gen).half().to(device)
    _check(sparse24_quant_matmul(x, weight, path="triton", config=config), sparse24_quant_matmul_ref(x, weight))


LLAMA = [(1, 4096, 4096), (16, 14336, 4096), (64, 4096, 14336), (256, 8192, 8192), (1, 28672, 8192)]


@pytest.mark.parametrize(("m", "n", "k"), LLAMA, ids=[f"M{m}-{n}x{k}" for m, n, k in LLAMA])
def test_pick_config_fills_gpu(m: int, n: int, k: int) -> None:
    cfg = pick_config(m, n, k)
    programs = -(-m // cfg.block_m) * -(-n // cfg.block_n) * cfg.split_k
    assert programs >= 128  # roughly one per SM at least
    assert -(-k // cfg.block_k) >= 2 * cfg.split_k  # every K slice gets >= 2 tiles
    assert cfg.block_m >= min(m, 128) or cfg.block_m == 128


def test_meta_mode_table() -> None:
    assert [meta_mode(g, groups, 64) for g, groups in [(128, 2), (64, 3), (32, 4), (96, 2), (100, 1)]] == [0, 0, 1, 2, 0]


def test_launch_config_validates() -> None:
    with pytest.raises(ValueError, match="block_k"):
        LaunchConfig(16, 16, 48)
    with pytest.raises(ValueError, match="split_k"):
        LaunchConfig(16, 16, 32, split_k=0)
