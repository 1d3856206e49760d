"""Tests for the calibration-statistics accumulator and GPTQ on the project quantization grid."""

from __future__ import annotations

import pytest
import torch

from layerbudget.kernels.quant import dequantize_groupwise, quantize_groupwise, quantize_with
from layerbudget.profiles.gptq import _gptq, gptq_quantize
from layerbudget.profiles.hessian import HessianAccumulator, inverse_hessian_cholesky

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


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = correlated_inputs()
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1))  # W: [N, K]
    acc = HessianAccumulator(K)
    acc.update(x)
    return w, acc.hessian(), x


# ---- HessianAccumulator ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_accumulator_matches_direct_statistics(dtype: torch.dtype, tol: float) -> None:
    x = correlated_inputs(seed=3, k=16, t=60)
    acc = HessianAccumulator(16, dtype=dtype)
    acc.update(x[:30].reshape(3, 10, 16))  # [B, S, K]
    acc.update(x[30:30])  # empty batch is a no-op
    acc.update(x[30:].to(torch.float16).to(torch.float32))  # [T, K]
    xr = torch.cat([x[:30], x[30:].to(torch.float16).to(torch.float32)]).double()
    assert acc.n_tokens == 60
    h = acc.hessian()
    assert h.dtype == dtype and h.shape == (16, 16)
    torch.testing.assert_close(h.double(), 2.0 * xr.T @ xr / 60, rtol=tol, atol=tol)
    torch.testing.assert_close(acc.x_sqnorm().double(), (xr**2).sum(0), rtol=tol, atol=tol)


def test_accumulator_rejects_bad_inputs() -> None:
    acc = HessianAccumulator(8)
    with pytest.raises(ValueError, match="no calibration tokens"):
        acc.hessian()
    with pytest.raises(ValueError, match=r"K=8"):
        acc.update(torch.randn(4, 7))
    bad = torch.randn(4, 8)
    bad[1, 2] = float("nan")
    bad[3, 0] = float("inf")
    with pytest.raises(ValueError, match="2 of 32 values are NaN/Inf"):
        acc.update(bad)
    assert acc.n_tokens == 0
    with pytest.raises(ValueError, match="in_features"):
        HessianAccumulator(0)
    with pytest.raises(ValueError, match="float32 or float64"):
        HessianAccumulator(8, dtype=torch.float16)


# ---- GPTQ --------------------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act_order"])
@pytest.mark.parametrize("bits,group_size", [(2, 32), (3, None), (4, 64), (8, 32)])
def test_gptq_output_lies_on_grid(problem, bits: int, group_size: int | None, act_order: bool) -> None:
    w, h, _ = problem
    codes, scales, zeros, w_hat = _gptq(
        w, h, bits, group_size, damp=0.01, act_order=act_order, block_size=48, meta_dtype=torch.float16
    )
    g = K if group_size is None else group_size
    assert codes.dtype == torch.uint8 and codes.shape == (N, K)
    assert scales.shape == zeros.shape == (N, K // g)
    assert scales.dtype == zeros.dtype == torch.float16
    assert int(codes.max()) <= 2**bits - 1
    assert torch.equal(zeros, zeros.round()) and float(zeros.min()) >= 0 and float(zeros.max()) <= 2**bits - 1
    deq = dequantize_groupwise(codes, scales, zeros)
    assert torch.equal(deq, w_hat)  # storage round-trip reproduces the sweep exactly
    requant = quantize_with(
        deq.reshape(N, K // g, g), scales[..., None].float(), zeros[..., None].float(), bits
    ).reshape(N, K)
    assert torch.equal(requant, codes)
    public = gptq_quantize(w, h, bits, group_size, act_order=act_order, block_size=48)
    assert all(torch.equal(a, b) for a, b in zip(public, (codes, scales, zeros)))


@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act_order"])
@pytest.mark.parametrize("group_size", [32, None], ids=["g32", "row"])
@pytest.mark.parametrize("bits", [2, 3])
def test_gptq_beats_rtn_on_correlated_inputs(
    problem, bits: int, group_size: int | None, act_order: bool
) -> None:
    w, h, x = problem
    rtn = rel_output_error(w, dequantize_groupwise(*quantize_groupwise(w, bits, group_size)), x)
    gptq = rel_output_error(
        w, dequantize_groupwise(*gptq_quantize(w, h, bits, group_size, act_order=act_order)), x
    )
    print(f"bits={bits} g={group_size} act_order={act_order}: rtn={rtn:.4f} gptq={gptq:.4f}")
    assert gptq < 0.75 * rtn


def test_gptq_with_diagonal_hessian_equals_rtn() -> None:
    # uncorrelated inputs: no error is propagated, so GPTQ must reduce to RTN in natural order,
    # also when act-order visits the columns in a shuffled order (the diagonal is not sorted)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 64, generator=g)
    h = torch.diag(torch.rand(64, generator=g) + 0.5)
    for act_order in (False, True):
        got = gptq_quantize(w, h, 3, 16, act_order=act_order)
        want = quantize_groupwise(w, 3, 16)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_gptq_does_not_depend_on_block_size(problem) -> None:
    w, h, _ = problem
    ref = _gptq(w, h, 3, 32, damp=0.01, act_order=True, block_size=128, meta_dtype=torch.float16)
    for bs in (1, 20):
        out = _gptq(w, h, 3, 32, damp=0.01, act_order=True, block_size=bs, meta_dtype=torch.float16)
        assert float((out[0] != ref[0]).float().mean()) < 0.01
        torch.testing.assert_close(out[3], ref[3], rtol=0, atol=0.05)


def test_act_order_keeps_static_natural_groups() -> None:
    # group 0 holds tiny weights, group 1 large ones; the most active input lies in group 1, so the
    # act-order sweep starts there — the scales must still describe natural-order groups.
    g = torch.Generator().manual_seed(4)
    w = torch.cat([0.01 * torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)], dim=1)
    x = torch.randn(256, 32, generator=g)
    x[:, 20] *= 20.0
    h = 2.0 * x.T @ x / 256
    _, scales, _ = gptq_quantize(w, h, 4, 16, act_order=True)
    assert bool((scales[:, 0].float() * 3 < scales[:, 1].float()).all())


def test_gptq_zeroes_dead_inputs(problem) -> None:
    w, _, x = problem
    x = x.clone()
    x[:, [5, 70]] = 0.0
    h = 2.0 * x.T @ x / x.shape[0]
    for act_order in (False, True):
        deq = dequantize_groupwise(*gptq_quantize(w, h, 3, 32, act_order=act_order))
        assert bool(torch.isfinite(deq).all())
        assert torch.equal(deq[:, [5, 70]], torch.zeros(N, 2))


def test_gptq_retries_dampening_for_indefinite_hessian() -> None:
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(5)))
    eig = torch.ones(32)
    eig[-1] = -0.05  # fails with damp=0.01·mean(diag), passes with 0.1
    h = q @ torch.diag(eig) @ q.T
    w = torch.randn(8, 32)
    with pytest.warns(RuntimeWarning, match="used damp=0.1"):
        codes, _, _ = gptq_quantize(w, h, 4, 16)
    assert codes.shape == (8, 32)
    bad = torch.block_diag(*[torch.tensor([[1.0, 3.0], [3.0, 1.0]])] * 16)  # eigenvalues 4 and -2
    with pytest.raises(ValueError, match=r"not positive definite even after dampening \(tried damp="):
        gptq_quantize(w, bad, 4, 16)
    with pytest.raises(ValueError, match="not positive definite"):
        inverse_hessian_cholesky(bad, 0.0)
    with pytest.raises(ValueError, match="diagonal must be non-negative"):
        gptq_quantize(w, -torch.eye(32), 4, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bits": 7}, r"`bits` must be one of"),
        ({"group_size": 48}, r"`group_size` must divide K=128"),
        ({"group_size": 0}, r"`group_size` must divide"),
        ({"H": torch.eye(64)}, r"Hessian must be \[K, K\] with K=128"),
        ({"H": torch.full((128, 128), float("nan"))}, r"Hessian must be finite"),
        ({"weight": torch.randn(2, 8, 128)}, r"weight must be 2-D"),
        ({"weight": torch.full((4, 128), float("inf"))}, r"weight must be finite"),
        ({"damp": -0.1}, r"`damp` must be a finite number >= 0"),
        ({"block_size": 0}, r"`block_size` must be a positive integer"),
        ({"meta_dtype": torch.float32}, r"`meta_dtype` must be float16 or bfloat16"),
    ],
    ids=["bits", "group", "group0", "H-shape", "H-nan", "w-3d", "w-inf", "damp", "block", "meta"],
)
def test_gptq_rejects_bad_inputs(kwargs: dict, match: str) -> None:
    args = {"weight": torch.randn(4, 128), "H": torch.eye(128), "bits": 4, "group_size": 32}
    args.update(kwargs)
    extra = {k: args.pop(k) for k in ("damp", "block_size", "meta_dtype") if k in args}
    with pytest.raises(ValueError, match=match):
        gptq_quantize(args["weight"], args["H"], args["bits"], args["group_size"], **extra)
