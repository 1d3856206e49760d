"""Input-checking wrappers and the dispatch rule: clear ValueErrors, never a silent wrong result."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from layerbudget.kernels.configs import DEQUANT_MIN_M, dequant_min_m
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="dispatch to Triton/cuBLAS needs CUDA tensors")
def test_dispatch_rule_on_gpu() -> None:
    for fmt, threshold in DEQUANT_MIN_M.items():
        assert choose_path(torch.zeros(threshold - 1, 8, dtype=torch.float16, device="cuda"), fmt) == "triton"
        assert choose_path(torch.zeros(threshold, 8, dtype=torch.float16, device="cuda"), fmt) == "dequant"
        assert choose_path(torch.zeros(1, 8, device="cuda"), fmt) == "dequant"  # fp32 activations


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
