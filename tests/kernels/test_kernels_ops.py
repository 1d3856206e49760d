"""Input-checking wrappers and the dispatch rule: clear ValueErrors, never a silent wrong result."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from layerbudget.kernels.configs import (
    DEQUANT_MIN_M,
    GEMV_MAX_M,
    check_thresholds,
    dequant_min_m,
    dispatch_path,
    pick_config,
    threshold_key,
)
from layerbudget.kernels.ops import choose_path, lowbit_matmul, packed_matmul, sparse24_matmul
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight


@pytest.fixture
def qweight(gen: torch.Generator) -> PackedQuantWeight:
    return PackedQuantWeight.from_dense(torch.randn(40, 128, generator=gen), 4, 32)


@pytest.mark.parametrize(
    ("x", "bias", "path", "match"),
    [
        (torch.zeros(2, 96, dtype=torch.float16), None, "auto", "K=128"),
        (torch.zeros(2, 2, 128, dtype=torch.float16), None, "auto", "2-D"),
        (torch.zeros(2, 128, dtype=torch.int32), None, "auto", "`x` must have dtype"),
        (torch.zeros(128, 2, dtype=torch.float16).t(), None, "auto", "contiguous"),
        (torch.zeros(2, 128, dtype=torch.float16), torch.zeros(39), "auto", "`bias` must be 1-D"),
        (torch.zeros(2, 128, dtype=torch.float16), torch.zeros(40, dtype=torch.int64), "auto", "`bias` must have"),
        (torch.zeros(2, 128, dtype=torch.float16), None, "fast", "`path` must be one of"),
        (torch.zeros(2, 128, dtype=torch.float32), None, "triton", "path='triton' needs `x` in"),
        ("not a tensor", None, "auto", "torch.Tensor"),
    ],
    ids=["k-mismatch", "3d", "int-x", "non-contiguous", "bias-shape", "bias-dtype", "path", "fp32-triton", "type"],
)
def test_wrapper_rejects_bad_inputs(qweight: PackedQuantWeight, x, bias, path: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lowbit_matmul(x, qweight, bias, path=path)


def test_wrapper_rejects_wrong_weight_type(qweight: PackedQuantWeight) -> None:
    with pytest.raises(ValueError, match="Sparse24Weight"):
        sparse24_matmul(torch.zeros(1, 128), qweight)
    with pytest.raises(ValueError, match="PackedQuantWeight, Sparse24Weight or Sparse24QuantWeight"):
        packed_matmul(torch.zeros(1, 128), torch.zeros(40, 128))


def test_dispatch_rule() -> None:
    x_cpu = torch.zeros(1, 8, dtype=torch.float16)
    assert choose_path(x_cpu, "lowbit") == "reference"
    assert choose_path(x_cpu, "lowbit", "triton") == "triton"
    x_meta = torch.empty(DEQUANT_MIN_M["lowbit"] - 1, 8, dtype=torch.float16, device="meta")
    assert choose_path(x_meta, "lowbit") == "reference"  # not CUDA
    with pytest.raises(ValueError, match="unknown kernel format"):
        dequant_min_m("nope")


def test_the_threshold_tables_have_an_entry_per_format_and_only_known_keys() -> None:
    check_thresholds(GEMV_MAX_M)
    check_thresholds(DEQUANT_MIN_M)
    with pytest.raises(ValueError, match=r"lacks \['sparse24_quant'\]"):
        check_thresholds({"lowbit": 4, "sparse24": 4})
    with pytest.raises(ValueError, match=r"unknown \['lowbit/5', 'sparse24/4'\]"):
        check_thresholds({"lowbit": 4, "sparse24": 4, "sparse24_quant": 4, "sparse24/4": 1, "lowbit/5": 1})
    with pytest.raises(ValueError, match="non-negative integers"):
        check_thresholds({"lowbit": 4, "sparse24": 4, "sparse24_quant": 4, "lowbit/3": -1})
    assert threshold_key("lowbit", 3) == "lowbit/3" and threshold_key("lowbit") == "lowbit"
    assert threshold_key("sparse24", 16) == "sparse24"  # 2:4 fp16 has no codes
    with pytest.raises(ValueError, match="`bits` must be one of"):
        threshold_key("sparse24_quant", 5)


@pytest.fixture
def fresh_launches():
    """Launches chosen after a test changes the threshold tables, and none of its choices kept after it."""
    pick_config.cache_clear()
    yield
    pick_config.cache_clear()


def test_a_code_width_entry_overrides_its_formats_threshold(monkeypatch, fresh_launches) -> None:
    monkeypatch.setitem(GEMV_MAX_M, "lowbit/2", 0)
    monkeypatch.setitem(DEQUANT_MIN_M, "sparse24_quant/4", 2)
    assert [dispatch_path(1, "lowbit", b) for b in (2, 3, 4, 8, None)] == ["tc", "gemv", "gemv", "gemv", "gemv"]
    assert [dispatch_path(m, "lowbit", 2) for m in (1, 15, 16)] == ["tc", "tc", "dequant"]
    assert pick_config(1, 4096, 4096, "lowbit", bits=2, group=64).kernel == "tc"
    assert pick_config(1, 4096, 4096, "lowbit", bits=4, group=128).kernel == "gemv"
    assert [dispatch_path(m, "sparse24_quant", 4) for m in (1, 2)] == ["gemv", "dequant"]
    # a launch on the Triton path past DEQUANT_MIN_M still takes the fused kernel the decode threshold gives
    assert pick_config(2, 4096, 4096, "sparse24_quant", bits=4, group=64).kernel == "gemv"
    assert dispatch_path(2, "sparse24_quant", 2) == "gemv" and dispatch_path(2, "sparse24") == "gemv"


def test_the_modules_dispatch_by_their_weights_code_width(monkeypatch, fresh_launches, gen) -> None:
    from layerbudget.kernels import ops

    chosen = []
    monkeypatch.setattr(ops, "pick_config", lambda *a, **kw: chosen.append(pick_config(*a, **kw)) or chosen[-1])
    monkeypatch.setitem(GEMV_MAX_M, "lowbit/2", 0)
    x = torch.randn(1, 128, generator=gen).half()
    for bits in (2, 4):
        w = PackedQuantWeight.from_dense(torch.randn(16, 128, generator=gen), bits, 64)
        torch.testing.assert_close(lowbit_matmul(x, w, path="triton").float(),
                                   lowbit_matmul(x, w, path="reference").float(), rtol=1e-2, atol=1e-2)
    assert [c.kernel for c in chosen] == ["tc", "gemv"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="dispatch to Triton/cuBLAS needs CUDA tensors")
def test_dispatch_rule_on_gpu() -> None:
    for key in DEQUANT_MIN_M:
        fmt, _, bits = key.partition("/")
        bits = int(bits) if bits else None
        threshold = dequant_min_m(fmt, bits)
        assert choose_path(torch.zeros(threshold - 1, 8, dtype=torch.float16, device="cuda"), fmt, bits=bits) == "triton"
        assert choose_path(torch.zeros(threshold, 8, dtype=torch.float16, device="cuda"), fmt, bits=bits) == "dequant"
        assert choose_path(torch.zeros(1, 8, device="cuda"), fmt, bits=bits) == "dequant"  # fp32 activations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["auto", "reference", "dequant"])
def test_cpu_paths_agree(qweight: PackedQuantWeight, dtype: torch.dtype, path: str, gen: torch.Generator) -> None:
    x = torch.randn(3, 128, generator=gen).to(dtype)
    bias = torch.randn(40, generator=gen)
    y = lowbit_matmul(x, qweight, bias, path=path)
    expect = torch.nn.functional.linear(x.float(), qweight.dequantize(dtype).float(), bias)
    assert y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.float(), expect, rtol=tol, atol=tol)


def test_empty_batch(qweight: PackedQuantWeight) -> None:
    assert lowbit_matmul(torch.zeros(0, 128, dtype=torch.float16), qweight, path="triton").shape == (0, 40)


def test_all_formats_through_packed_matmul(gen: torch.Generator) -> None:
    dense = torch.randn(40, 128, generator=gen)
    x = torch.randn(2, 128, generator=gen)
    for w in (
        PackedQuantWeight.from_dense(dense, 3, None),
        Sparse24Weight.from_dense(dense, prune=True),
        Sparse24QuantWeight.from_dense(dense, 4, 32, prune=True),
    ):
        dense_hat = w.dequantize() if isinstance(w, PackedQuantWeight) else w.to_dense(torch.float32)
        torch.testing.assert_close(packed_matmul(x, w), x @ dense_hat.T)
    expect = (x.half().float() @ w.to_dense(torch.float16).float().T).half()
    torch.testing.assert_close(packed_matmul(x.half(), w), expect, rtol=2e-3, atol=2e-3)


def test_package_import_does_not_import_triton() -> None:
    code = (
        "import sys, layerbudget.kernels as k; "
        "assert not any(m == 'triton' or m.startswith('triton.') or 'kernels.triton_' in m for m in sys.modules), "
        "sorted(m for m in sys.modules if 'triton' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
