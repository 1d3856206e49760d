"""Tests for SparseGPT, Wanda and magnitude pruning: exact sparsity, n:m patterns, error ordering."""

from __future__ import annotations

import pytest
import torch

from layerbudget.kernels.quant import dequantize_groupwise, quantize_groupwise
from layerbudget.profiles.hessian import HessianAccumulator
from layerbudget.profiles.sparsegpt import sparsegpt_prune, sparsegpt_prune_quantize
from layerbudget.profiles.wanda import magnitude_prune, num_pruned, wanda_prune

N, K, T = 48, 128, 768


def correlated_inputs(seed: int = 0, k: int = K, t: int = T) -> torch.Tensor:
    """Correlated activations ``X: [T, K]`` with a few large outlier features."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5  # [K, K]
    x = torch.randn(t, k, generator=g) @ mix + 0.3 * torch.randn(t, k, generator=g)  # [T, K]
    x[:, :4] *= 10.0
    return x


def rel_output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """``‖W X − Ŵ X‖² / ‖W X‖²`` on inputs ``x: [T, K]``."""
    return float(((x @ (w - w_hat).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    acc = HessianAccumulator(x.shape[1])
    acc.update(x)
    return acc.hessian(), acc.x_sqnorm()


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = correlated_inputs()
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1))  # W: [N, K]
    h, sq = stats(x)
    return w, h, sq, x


def prune_with(method: str, w, h, sq, sparsity, pattern=None, block_size: int = 128) -> torch.Tensor:
    if method == "sparsegpt":
        return sparsegpt_prune(w, h, sparsity, pattern=pattern, block_size=block_size)
    if method == "wanda":
        return wanda_prune(w, sq, sparsity, pattern=pattern)
    return magnitude_prune(w, sparsity, pattern=pattern)


METHODS = ["sparsegpt", "wanda", "magnitude"]


def test_num_pruned_rounds_half_up() -> None:
    assert [num_pruned(10, s) for s in (0.0, 0.25, 0.5, 0.7, 1.0)] == [0, 3, 5, 7, 10]
    assert num_pruned(7, 0.5) == 4 and num_pruned(132, 0.7) == 92 and num_pruned(132, 0.3) == 40


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("method", METHODS)
def test_unstructured_sparsity_is_exact(method: str, sparsity: float) -> None:
    # K = 132 is not a multiple of the SparseGPT block (32): the per-block quotas must add up
    x = correlated_inputs(seed=2, k=132, t=300)
    w = torch.randn(24, 132, generator=torch.Generator().manual_seed(3))
    h, sq = stats(x)
    out = prune_with(method, w, h, sq, sparsity, block_size=32)
    assert out.shape == w.shape and out.dtype == w.dtype
    zeros = out == 0
    if method == "magnitude":  # one comparison group: the whole matrix
        assert int(zeros.sum()) == num_pruned(24 * 132, sparsity)
    else:  # one comparison group per output row
        assert zeros.sum(dim=1).tolist() == [num_pruned(132, sparsity)] * 24
    if method != "sparsegpt":  # kept weights are untouched
        assert torch.equal(out[~zeros], w[~zeros])


@pytest.mark.parametrize("method", METHODS)
def test_2_4_pattern_is_valid(problem, method: str) -> None:
    w, h, sq, _ = problem
    out = prune_with(method, w, h, sq, None, pattern="2:4", block_size=30)  # block rounds down to 28
    per4 = (out == 0).reshape(N, K // 4, 4).sum(dim=-1)
    assert bool((per4 == 2).all())
    same = prune_with(method, w, h, sq, 0.5, pattern="2:4")
    assert torch.equal(same == 0, prune_with(method, w, h, sq, None, pattern="2:4") == 0)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_error_order_sparsegpt_wanda_magnitude(problem, sparsity: float) -> None:
    w, h, sq, x = problem
    errs = {m: rel_output_error(w, prune_with(m, w, h, sq, sparsity), x) for m in METHODS}
    print(f"sparsity={sparsity}: " + ", ".join(f"{m}={e:.4f}" for m, e in errs.items()))
    assert errs["sparsegpt"] < errs["wanda"] <= errs["magnitude"]


def test_error_order_2_4(problem) -> None:
    w, h, sq, x = problem
    errs = {m: rel_output_error(w, prune_with(m, w, h, sq, None, pattern="2:4"), x) for m in METHODS}
    print("2:4: " + ", ".join(f"{m}={e:.4f}" for m, e in errs.items()))
    assert errs["sparsegpt"] < 0.75 * errs["wanda"]
    assert errs["wanda"] <= 1.05 * errs["magnitude"]


def test_sparsegpt_with_diagonal_hessian_is_per_row_wanda() -> None:
    # no correlations: no OBS update reaches other columns and the saliency w²/[H⁻¹]_jj is
    # w² · H_jj (up to a constant), i.e. Wanda's score squared; one block covers the whole row
    g = torch.Generator().manual_seed(6)
    w = torch.randn(16, 64, generator=g)
    sq = torch.rand(64, generator=g) + 0.1
    got = sparsegpt_prune(w, torch.diag(sq), 0.6, block_size=64, damp=0.0)
    torch.testing.assert_close(got, wanda_prune(w, sq, 0.6), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "pattern,sparsity", [(None, 0.5), (None, 0.7), ("2:4", None)], ids=["u50", "u70", "2:4"]
)
def test_sparsegpt_prune_quantize(problem, pattern: str | None, sparsity: float | None) -> None:
    w, h, sq, x = problem
    codes, scales, zeros, keep = sparsegpt_prune_quantize(w, h, sparsity, 4, 32, pattern=pattern)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert scales.shape == zeros.shape == (N, K // 32) and keep.dtype == torch.bool
    deq = dequantize_groupwise(codes, scales, zeros)
    assert bool((deq[~keep] == 0).all())  # pruned weights dequantize to exactly zero, no mask needed
    if pattern is None:
        assert (~keep).sum(dim=1).tolist() == [num_pruned(K, sparsity)] * N
    else:
        assert bool(((~keep).reshape(N, K // 4, 4).sum(dim=-1) == 2).all())
    joint = rel_output_error(w, deq, x)
    wanda_rtn = rel_output_error(
        w, dequantize_groupwise(*quantize_groupwise(wanda_prune(w, sq, sparsity, pattern=pattern), 4, 32)), x
    )
    pruned_only = rel_output_error(w, sparsegpt_prune(w, h, sparsity, pattern=pattern), x)
    print(
        f"{pattern or sparsity}: sparsegpt+4b={joint:.4f} wanda+rtn4b={wanda_rtn:.4f} sparsegpt={pruned_only:.4f}"
    )
    assert pruned_only <= joint < wanda_rtn


def test_pruners_keep_dtype() -> None:
    w = torch.randn(8, 16).half()
    assert wanda_prune(w, torch.ones(16), 0.5).dtype == torch.float16
    assert magnitude_prune(w, 0.5).dtype == torch.float16
    assert sparsegpt_prune(w, torch.eye(16), 0.5).dtype == torch.float16


@pytest.mark.parametrize(
    "sparsity,pattern,match",
    [
        (1.5, None, r"`sparsity` must lie in \[0, 1\], but got sparsity=1.5"),
        (-0.1, None, r"`sparsity` must lie in \[0, 1\]"),
        (None, None, r"`sparsity` is required"),
        (0.7, "2:4", r"pattern '2:4' implies sparsity 0.5, but got sparsity=0.7"),
        (None, "2-4", r"'n:m' such as '2:4'"),
        (None, "4:2", r"needs 0 < n < m"),
        (None, "2:5", r"needs K divisible by 5, but the weight has K=128"),
    ],
    ids=["over1", "negative", "missing", "mismatch", "syntax", "n>=m", "K%m"],
)
@pytest.mark.parametrize("method", METHODS)
def test_pruners_reject_bad_sparsity(method: str, sparsity, pattern, match: str) -> None:
    w = torch.randn(4, 128)
    with pytest.raises(ValueError, match=match):
        prune_with(method, w, torch.eye(128), torch.ones(128), sparsity, pattern)


@pytest.mark.parametrize("method", METHODS)
def test_2_4_needs_k_divisible_by_4(method: str) -> None:
    w = torch.randn(4, 130)
    with pytest.raises(ValueError, match=r"pattern '2:4' needs K divisible by 4, but the weight has K=130"):
        prune_with(method, w, torch.eye(130), torch.ones(130), None, "2:4")


def test_pruners_reject_bad_tensors() -> None:
    w = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"`x_sqnorm` must have shape \[K\]=\[16\]"):
        wanda_prune(w, torch.ones(15), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        wanda_prune(w, -torch.ones(16), 0.5)
    with pytest.raises(ValueError, match=r"Hessian must be \[K, K\] with K=16"):
        sparsegpt_prune(w, torch.eye(8), 0.5)
    nan_w = w.clone()
    nan_w[0, 0] = float("nan")
    for fn in (lambda: magnitude_prune(nan_w, 0.5), lambda: sparsegpt_prune(nan_w, torch.eye(16), 0.5)):
        with pytest.raises(ValueError, match="weight must be finite, but 1 values are NaN/Inf"):
            fn()
    with pytest.raises(ValueError, match="weight must be 2-D"):
        magnitude_prune(torch.randn(16), 0.5)
    with pytest.raises(ValueError, match=r"`bits` must be one of"):
        sparsegpt_prune_quantize(w, torch.eye(16), 0.5, 7, None)
    with pytest.raises(ValueError, match=r"`group_size` must divide K=16"):
        sparsegpt_prune_quantize(w, torch.eye(16), 0.5, 4, 5)
