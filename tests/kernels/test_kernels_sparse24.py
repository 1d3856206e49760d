"""2:4 formats: pruning, pattern validation, exact round trips, storage size, documented meta layout."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight, is_24_sparse, magnitude_prune_24


def test_magnitude_prune_keeps_two_largest(gen: torch.Generator) -> None:
    w = torch.randn(6, 64, generator=gen)
    p = magnitude_prune_24(w)
    assert is_24_sparse(p) and not is_24_sparse(w)
    groups, kept = w.reshape(6, 16, 4).abs(), p.reshape(6, 16, 4) != 0
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_and_size(dtype: torch.dtype, gen: torch.Generator) -> None:
    n, k = 10, 96
    dense = magnitude_prune_24(torch.randn(n, k, generator=gen)).to(dtype)
    dense[0, :8] = 0  # groups with fewer than two non-zeros keep explicit zeros
    sw = Sparse24Weight.from_dense(dense)
    assert torch.equal(sw.to_dense(), dense)
    assert sw.nbytes == n * k // 2 * dense.element_size() + n * k // 32 * 4  # values + 2 bits per kept value
    if dtype == torch.float16:
        assert sw.bits_per_weight == pytest.approx(9.0)


def test_documented_meta_layout() -> None:
    dense = torch.zeros(1, 64)  # K/2 = 32 kept values: E = 16 positions per word, C = 2 words per chunk
    dense[0, 4 * 3 + 1] = 1.0  # group 3 keeps positions 1 and 3: kept values 6 and 7
    dense[0, 4 * 3 + 3] = 2.0
    sw = Sparse24Weight.from_dense(dense)
    pos = [0, 1] * 16  # empty groups keep positions (0, 1)
    pos[6], pos[7] = 1, 3
    words = [sum(pos[e * 2 + v] << (2 * e) for e in range(16)) for v in range(2)]  # kept e*C + v: word v, field e
    assert sw.meta.tolist() == [[w - (1 << 32) if w >= 1 << 31 else w for w in words]]  # stored as int32
    assert sw.values[0, 6:8].tolist() == [1.0, 2.0]
    assert sw.positions()[0].tolist() == pos


def test_quant_meta_units_follow_the_codes(gen: torch.Generator) -> None:
    """With 4-bit kept codes the positions come in 16-bit units of 8 fields, aligned with the code words."""
    dense = magnitude_prune_24(torch.randn(2, 512, generator=gen))
    sq = Sparse24QuantWeight.from_dense(dense, 4, 64)
    pos = sq.positions().to(torch.int64)  # [2, 256]: chunks of C = 16 words of 8 codes
    halves = sq.meta.view(torch.int16).to(torch.int64) & 0xFFFF  # [2, 32] units
    for unit in (0, 5, 17):
        c, v = divmod(unit, 16)
        expect = sum(int(pos[1, c * 128 + e * 16 + v]) << (2 * e) for e in range(8))
        assert int(halves[1, unit]) == expect


def test_from_dense_validates_pattern(gen: torch.Generator) -> None:
    w = torch.randn(4, 64, generator=gen)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        Sparse24Weight.from_dense(w)
    assert is_24_sparse(Sparse24Weight.from_dense(w, prune=True).to_dense())
    with pytest.raises(ValueError, match="multiple of 32"):
        Sparse24Weight.from_dense(torch.zeros(4, 48))


def test_from_parts_validates_meta() -> None:
    values = torch.zeros(2, 16)
    bad = torch.full((2, 1), 0x55555555, dtype=torch.int32)  # every position 1: not increasing
    with pytest.raises(ValueError, match="not a valid 2:4 pattern"):
        Sparse24Weight.from_parts(values, bad, (2, 32))
    with pytest.raises(ValueError, match="meta"):
        Sparse24Weight(values, torch.zeros(2, 2, dtype=torch.int32), (2, 32))
    with pytest.raises(ValueError, match="values"):
        Sparse24Weight(values.to(torch.int32), bad, (2, 32))


def test_tensor_dict_round_trip(tmp_path, gen: torch.Generator) -> None:
    sw = Sparse24Weight.from_dense(torch.randn(4, 64, generator=gen), prune=True, dtype=torch.float16)
    save_file(sw.to_tensors("s."), str(tmp_path / "s.safetensors"))
    back = Sparse24Weight.from_tensors(load_file(str(tmp_path / "s.safetensors")), "s.")
    assert torch.equal(back.to_dense(), sw.to_dense())


@pytest.mark.parametrize(("bits", "group_size"), [(4, 64), (4, 32), (3, None), (2, 16), (8, 64)])
def test_sparse_quant_matches_grid_on_kept_values(bits: int, group_size: int | None, gen: torch.Generator) -> None:
    n, k = 8, 256
    dense = magnitude_prune_24(torch.randn(n, k, generator=gen))
    sq = Sparse24QuantWeight.from_dense(dense, bits, group_size)
    kept = Sparse24Weight.from_dense(dense)
    ref = PackedQuantWeight.from_dense(kept.values, bits, group_size, unit=32)  # groups along the compressed axis
    assert torch.equal(sq.values.packed, ref.packed)
    expect = Sparse24Weight(ref.dequantize(), kept.meta, (n, k)).to_dense()
    assert torch.equal(sq.to_dense(), expect)
    assert is_24_sparse(sq.to_dense())
    g = k // 2 if group_size is None else group_size
    assert sq.nbytes == bits * n * (k // 2) // 8 + 4 * n * (k // 2 // g) + n * k // 32 * 4
    t = sq.to_tensors("w.")
    assert torch.equal(Sparse24QuantWeight.from_tensors(t, "w.").to_dense(), sq.to_dense())


def test_sparse_quant_group_counts_kept_values() -> None:
    with pytest.raises(ValueError, match="K/2=48"):
        Sparse24QuantWeight.from_dense(torch.zeros(4, 96), 4, 64)
