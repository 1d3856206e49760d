"""PackedQuantWeight: agrees with the project grid, exact storage size, validation, tensor-dict round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerbudget.kernels.packing import FORMAT_VERSIONS
from layerbudget.kernels.quant import dequantize_groupwise, quantize_groupwise
from layerbudget.kernels.quant_weight import PackedQuantWeight

GRIDS = [(2, 32), (2, 64), (3, 128), (3, None), (4, 128), (4, 64), (8, 32), (8, None)]


@pytest.mark.parametrize(("bits", "group_size"), GRIDS, ids=[f"b{b}-g{g}" for b, g in GRIDS])
@pytest.mark.parametrize("meta_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_from_dense_matches_grid(bits: int, group_size: int | None, meta_dtype: torch.dtype,
                                 gen: torch.Generator) -> None:
    n, k = 24, 256
    w = torch.randn(n, k, generator=gen)
    qw = PackedQuantWeight.from_dense(w, bits, group_size, meta_dtype)
    codes, scales, zeros = quantize_groupwise(w, bits, group_size, meta_dtype)
    assert torch.equal(qw.codes(), codes)
    assert torch.equal(qw.scales, scales) and torch.equal(qw.zeros, zeros)
    assert torch.equal(qw.dequantize(), dequantize_groupwise(codes, scales, zeros))
    g = k if group_size is None else group_size
    # storage: exactly bits*N*K/8 bytes of codes + scale and zero per (row, group)
    assert qw.nbytes == bits * n * k // 8 + 2 * n * (k // g) * 2
    assert qw.bits_per_weight == pytest.approx(bits + 32 / g)


def test_tensor_dict_round_trip_through_safetensors(tmp_path, gen: torch.Generator) -> None:
    qw = PackedQuantWeight.from_dense(torch.randn(8, 96, generator=gen), 3, None, torch.bfloat16)
    path = tmp_path / "w.safetensors"
    save_file(qw.to_tensors("layer.0."), str(path))
    back = PackedQuantWeight.from_tensors(load_file(str(path)), "layer.0.")
    assert back.shape == qw.shape and back.bits == 3 and back.group_size is None
    assert torch.equal(back.dequantize(), qw.dequantize())


def test_from_tensors_rejects_other_versions(gen: torch.Generator) -> None:
    t = PackedQuantWeight.from_dense(torch.randn(4, 64, generator=gen), 4, 32).to_tensors()
    t["format_version"] = torch.tensor(99)
    with pytest.raises(ValueError, match="version 99"):
        PackedQuantWeight.from_tensors(t)
    t["format_version"] = torch.tensor(FORMAT_VERSIONS[32])  # word units: what the 2:4 formats store
    with pytest.raises(ValueError, match="version 2; expected 3"):
        PackedQuantWeight.from_tensors(t)
    assert PackedQuantWeight.from_tensors(t, unit=32).unit == 32
    t["format_version"] = torch.tensor(FORMAT_VERSIONS[16])
    del t["packed"]
    with pytest.raises(ValueError, match="missing tensor 'packed'"):
        PackedQuantWeight.from_tensors(t)


def _parts(n: int = 4, k: int = 64, bits: int = 4, g: int = 32):
    qw = PackedQuantWeight.from_dense(torch.ones(n, k), bits, g)
    return qw.packed, qw.scales, qw.zeros


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bits": 5}, "bits"),
        ({"group_size": 48}, "group_size"),
        ({"shape": (4, 96)}, "packed"),
        ({"scales": torch.ones(4, 2)}, "scales"),
        ({"scales": torch.ones(4, 3, dtype=torch.float16)}, "scales"),
        ({"zeros": torch.zeros(2, 4, dtype=torch.float16).t()}, "contiguous"),
        ({"packed": torch.zeros(4, 8, dtype=torch.int64)}, "packed"),
        ({"shape": (4, 60)}, "multiple of 8"),
    ],
)
def test_construction_validates(change: dict, match: str) -> None:
    packed, scales, zeros = _parts()
    kwargs = {"packed": packed, "scales": scales, "zeros": zeros, "bits": 4, "group_size": 32, "shape": (4, 64)}
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        PackedQuantWeight(**kwargs)


def test_from_dense_rejects_bad_grid() -> None:
    with pytest.raises(ValueError, match="group_size"):
        PackedQuantWeight.from_dense(torch.ones(4, 96), 4, 64)
    with pytest.raises(ValueError, match="bits"):
        PackedQuantWeight.from_dense(torch.ones(4, 64), 6, 32)
    with pytest.raises(ValueError, match="2-D"):
        PackedQuantWeight.from_dense(torch.ones(64), 4, 32)
