"""Seeded random launches of every fused kernel against the torch reference.

The other kernel tests pin a shape and the table's launch per case; here each case draws a format
(low-bit 2/3/4/8 bits, 2:4, 2:4 + low-bit), a group size, a shape with ragged N and M, activations
that start at an odd element (the kernels read them as wider words), an fp32 or 16-bit bias, and a
launch from the configurations ``kernels.bench`` times (split-K included), so that the launch space a
GPU sweep explores computes what the reference computes. The same seed gives the same cases.
"""

from __future__ import annotations

import random

import pytest
import torch
from kernel_checks import assert_near_reference

from layerbudget.kernels.bench import candidates, with_split
from layerbudget.kernels.configs import LaunchConfig, pick_config
from layerbudget.kernels.ops import code_bits, format_of, kernel_supported, packed_matmul
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24

CASES = 48


def _weight(rng: random.Random, gen: torch.Generator):
    """A drawn packed weight that the fused kernels take (draws again where the group does not suit K)."""
    while True:
        fmt = rng.choice(["lowbit"] * 3 + ["sparse24", "sparse24_quant"])
        bits, group = rng.choice([2, 3, 4, 8]), rng.choice([32, 64, 128, 256])
        n, k = rng.choice([16, 31, 64, 100, 200]), rng.choice([128, 192, 256, 384, 640, 1024, 2048])
        w = (torch.randn(n, k, generator=gen) * 0.05).half()
        try:
            if fmt == "lowbit":
                weight = PackedQuantWeight.from_dense(w, bits, group)
            elif fmt == "sparse24":
                weight = Sparse24Weight.from_dense(w, prune=True)
            else:
                weight = Sparse24QuantWeight.from_dense(magnitude_prune_24(w), bits, group)
        except ValueError:  # a group that does not divide K
            continue
        if kernel_supported(weight):
            return weight


def _case(seed: int, device: str):
    """One drawn case: weight, activations, bias and launch."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    weight = _weight(rng, gen)
    n, k, fmt, cbits = weight.n, weight.k, format_of(weight), code_bits(weight)
    m = rng.choice([1, 2, 3, 4, 5, 9, 16, 17, 33, 70])
    kernel = rng.choice(["gemv", "tc"]) if m <= 4 else "tc"
    # the interpreter's bf16 dot is wrong, so bf16 activations go to the decode kernels there
    dtype = rng.choice([torch.float16, torch.bfloat16]) if kernel == "gemv" or device == "cuda" else torch.float16
    pool = [pick_config(m, n, k, fmt, kernel, cbits, getattr(weight, "group", None)), *candidates(kernel, m, quick=True)]
    cfg = rng.choice([c for c in pool if kernel == "gemv" or m <= 16 or c.block_m >= 16])
    cfg = rng.choice(with_split(cfg, m, n, k, fmt, cbits))
    if rng.random() < 0.3:  # a split the table would not choose
        cfg = LaunchConfig(cfg.kernel, cfg.block_m, cfg.block_n, cfg.block_k, rng.choice([2, 3, 8]),
                           cfg.num_warps, cfg.num_stages)
    offset = rng.choice([0, 1, 2, 3, 4])
    x = torch.randn(m * k + offset, generator=gen).to(device=device, dtype=dtype)[offset:].view(m, k)
    bias = None
    if rng.random() < 0.4:
        bias = (torch.randn(n, generator=gen) * 0.1).to(device=device, dtype=rng.choice([dtype, torch.float32]))
    return weight.to(device), x, bias, cfg


@pytest.mark.parametrize("seed", range(CASES))
def test_a_random_launch_computes_the_reference(seed: int, device: str) -> None:
    weight, x, bias, cfg = _case(seed, device)
    ref = packed_matmul(x, weight, bias, path="reference")
    try:
        y = packed_matmul(x, weight, bias, path="triton", config=cfg)
    except ValueError as e:  # a tensor-core launch whose K step cannot hold a run of fields of one group
        assert "use path='dequant'" in str(e), (cfg.name, e)
        pytest.skip(str(e))
    assert_near_reference(y, ref)


def test_the_draws_reach_every_kernel_and_format() -> None:
    drawn = [_case(s, "cpu") for s in range(CASES)]
    kinds = {(type(w).__name__, cfg.kernel, cfg.split_k > 1, cfg.block_m > 16) for w, _, _, cfg in drawn}
    assert {k[1] for k in kinds} == {"gemv", "tc"} and any(k[2] for k in kinds) and any(k[3] for k in kinds)
    assert {k[0] for k in kinds} == {"PackedQuantWeight", "Sparse24Weight", "Sparse24QuantWeight"}
