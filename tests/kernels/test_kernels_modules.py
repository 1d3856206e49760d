"""QuantLinear / SparseLinear / Sparse24QuantLinear: construction, CPU forward = F.linear, state_dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerbudget.kernels.modules import QuantLinear, Sparse24QuantLinear, SparseLinear
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.sparse24 import is_24_sparse

BUILDERS = {
    "quant-b4-g128": lambda lin: QuantLinear.from_linear(lin, bits=4, group_size=128),
    "quant-b3-perchannel": lambda lin: QuantLinear.from_linear(lin, bits=3, group_size=None),
    "quant-b2-g64-bf16": lambda lin: QuantLinear.from_linear(lin, bits=2, group_size=64, meta_dtype=torch.bfloat16),
    "quant-b8-g32": lambda lin: QuantLinear.from_linear(lin, bits=8, group_size=32),
    "sparse24": lambda lin: SparseLinear.from_linear(lin),
    "sparse24-b4-g64": lambda lin: Sparse24QuantLinear.from_linear(lin, bits=4, group_size=64),
}
EMPTY = {
    "quant-b4-g128": lambda: QuantLinear(256, 48, bits=4, group_size=128),
    "quant-b3-perchannel": lambda: QuantLinear(256, 48, bits=3, group_size=None),
    "quant-b2-g64-bf16": lambda: QuantLinear(256, 48, bits=2, group_size=64, meta_dtype=torch.bfloat16),
    "quant-b8-g32": lambda: QuantLinear(256, 48, bits=8, group_size=32),
    "sparse24": lambda: SparseLinear(256, 48, dtype=torch.float32),
    "sparse24-b4-g64": lambda: Sparse24QuantLinear(256, 48, bits=4, group_size=64),
}


@pytest.fixture
def linear(gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(256, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 256, generator=gen) * 0.05)
        lin.bias.copy_(torch.randn(48, generator=gen))
    return lin


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_cpu_forward_equals_f_linear(name: str, dtype: torch.dtype, linear: nn.Linear, gen: torch.Generator) -> None:
    mod = BUILDERS[name](linear)
    x = torch.randn(2, 3, 256, generator=gen).to(dtype)  # [B, S, K]
    y = mod(x)
    assert y.shape == (2, 3, 48) and y.dtype == dtype
    expect = F.linear(x.float(), mod.dequantized_weight(dtype).float(), linear.bias.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), expect, rtol=tol, atol=tol)
    if dtype == torch.float32:  # the dequantized weight is what the module multiplies by
        torch.testing.assert_close(y, F.linear(x, mod.dequantized_weight(), linear.bias))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_state_dict_round_trip(name: str, linear: nn.Linear, gen: torch.Generator) -> None:
    mod = BUILDERS[name](linear)
    state = mod.state_dict()
    assert "weight" not in state and "bias" in state
    assert any(t.dtype == torch.int32 for t in state.values())  # packed storage
    fresh = EMPTY[name]()
    fresh.load_state_dict(state)
    x = torch.randn(4, 256, generator=gen)
    torch.testing.assert_close(fresh(x), mod(x), rtol=0, atol=0)


def test_from_packed_and_sizes(linear: nn.Linear, gen: torch.Generator) -> None:
    packed = PackedQuantWeight.from_dense(linear.weight, 4, 128)
    mod = QuantLinear.from_packed(packed, linear.bias)
    assert torch.equal(mod.dequantized_weight(), packed.dequantize())
    assert mod.nbytes == 4 * 48 * 256 // 8 + 2 * 48 * 2 * 2
    nobias = QuantLinear.from_packed(packed)
    x = torch.randn(1, 256, generator=gen)
    torch.testing.assert_close(mod(x) - nobias(x), linear.bias[None].detach())


def test_sparse_module_prunes_and_validates(linear: nn.Linear) -> None:
    assert is_24_sparse(SparseLinear.from_linear(linear).dequantized_weight())
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        SparseLinear.from_linear(linear, prune=False)


def test_dtype_casts_leave_packed_storage_alone(linear: nn.Linear) -> None:
    mod = QuantLinear.from_linear(linear, bits=4, group_size=128)
    before = mod.dequantized_weight()
    mod.to(torch.bfloat16)
    assert mod.scales.dtype == torch.float16 and mod.bias.dtype == torch.bfloat16
    assert torch.equal(mod.dequantized_weight(), before)
    sparse = SparseLinear.from_linear(linear, dtype=torch.float16).float()
    assert sparse.values.dtype == torch.float16


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: QuantLinear(96, 8, bits=4, group_size=64), "group_size"),
        (lambda: QuantLinear(128, 8, bits=5, group_size=64), "bits"),
        (lambda: SparseLinear(48, 8), "multiple of 32"),
        (lambda: Sparse24QuantLinear(128, 8, bits=4, group_size=128), "group_size"),
    ],
)
def test_module_constructors_validate(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_forward_rejects_wrong_in_features(linear: nn.Linear) -> None:
    mod = QuantLinear.from_linear(linear, bits=4, group_size=128)
    with pytest.raises(ValueError, match=r"\[\.\.\., 256\]"):
        mod(torch.zeros(2, 128))  # would silently reshape to [1, 256] without the check


def test_modules_replace_linear_in_a_model(gen: torch.Generator) -> None:
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))
    x = torch.randn(5, 64, generator=gen)
    model[0] = QuantLinear.from_linear(model[0], bits=8, group_size=32)
    model[2] = SparseLinear.from_linear(model[2])
    assert model(x).shape == (5, 32)


def test_forward_follows_buffer_changes(linear: nn.Linear, gen: torch.Generator) -> None:
    """The module reuses its packed weight between calls but sees loaded or edited buffers."""
    mod = QuantLinear.from_linear(linear, bits=4, group_size=32)
    x = torch.randn(3, linear.in_features, generator=gen)
    first = mod(x)
    other = QuantLinear.from_linear(nn.Linear(linear.in_features, linear.out_features), bits=4, group_size=32)
    mod.load_state_dict({k: v.clone() for k, v in other.state_dict().items()})
    torch.testing.assert_close(mod(x), other(x))
    mod.scales.mul_(2)  # an in-place edit
    torch.testing.assert_close(mod(x), torch.nn.functional.linear(x, mod.dequantized_weight(), mod.bias))
    assert not torch.equal(first, mod(x))


def test_kernel_attribute_picks_the_fused_kernel(monkeypatch, gen: torch.Generator) -> None:
    """``kernel="tc"`` sends even one activation row to the tensor-core kernel (for 4-bit codes the one-dot-per-field
    kernel) with the launch table's configuration; ``None`` keeps the dispatch rule (the decode kernel)."""
    from layerbudget.kernels import triton_fielddot

    calls = []
    run = triton_fielddot.tc_fields
    monkeypatch.setattr(triton_fielddot, "tc_fields", lambda *args: calls.append(args[3]) or run(*args))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mod = QuantLinear.from_linear(nn.Linear(256, 40), bits=4, group_size=128).to(device)
    mod.path = "triton"
    x = torch.randn(1, 256, generator=gen).half().to(device)
    ref = torch.nn.functional.linear(x.float(), mod.dequantized_weight().to(device), mod.bias.float())
    for kernel, expected in ((None, 0), ("tc", 1)):
        mod.kernel = kernel
        y = mod(x).float()
        assert (y - ref).norm() <= 1e-3 * ref.norm() and len(calls) == expected
    assert calls[0].kernel == "tc" and calls[0].block_m == 8
    mod.kernel = "mma"
    with pytest.raises(ValueError, match="kernel"):
        mod(x)
