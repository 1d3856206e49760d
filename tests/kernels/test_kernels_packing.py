"""Bit packing: exact round trips (property tests), exact storage size, documented bit positions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerbudget.kernels.packing import PACK_BITS, chunk_units, k_multiple, pack, unpack, words_per_row


@st.composite
def codes_case(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    bits = draw(st.sampled_from(PACK_BITS))
    rows = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))  # leading dims
    k = k_multiple(bits) * draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    extreme = draw(st.sampled_from(["random", "zeros", "max"]))
    shape = (*rows, k)
    if extreme == "zeros":
        codes = torch.zeros(shape, dtype=torch.uint8)
    elif extreme == "max":
        codes = torch.full(shape, 2**bits - 1, dtype=torch.uint8)
    else:
        codes = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.uint8)
    return codes, bits


@settings(max_examples=150, deadline=None)
@given(codes_case())
def test_pack_unpack_round_trip(case: tuple[torch.Tensor, int]) -> None:
    codes, bits = case
    packed = pack(codes, bits)
    k = codes.shape[-1]
    assert packed.dtype == torch.int32
    assert packed.shape == (*codes.shape[:-1], words_per_row(bits, k))
    assert packed.numel() * 4 * 8 == bits * codes.numel()  # no wasted bit
    assert torch.equal(unpack(packed, bits, k), codes)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PACK_BITS), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_unpack_pack_round_trip_on_any_words(bits: int, runs: int, seed: int) -> None:
    """Every int32 bit pattern is a valid packing: unpack then pack gives the same words."""
    k = 32 * runs
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(-(2**31), 2**31, (3, words_per_row(bits, k)), generator=g, dtype=torch.int64)
    words = words.to(torch.int32)
    assert torch.equal(pack(unpack(words, bits, k), bits), words)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_documented_layout_power_of_two(bits: int) -> None:
    per = 32 // bits
    codes = torch.zeros(1, per * 16, dtype=torch.uint8)  # one chunk of C = 16 words
    codes[0, 3 * 16 + 5] = 1  # value e*C + v with e = 3, v = 5 -> word 5, field 3
    assert chunk_units(bits, per * 16) == 16
    expect = [0] * 16
    expect[5] = 1 << (3 * bits)
    assert pack(codes, bits).tolist() == [expect]
    small = torch.zeros(1, per * 2, dtype=torch.uint8)  # K = 2E: chunks of C = 2 words
    small[0, per + 1] = 1  # e = per / 2, v = 1
    assert pack(small, bits).tolist() == [[0, 1 << 16]]


def test_documented_layout_three_bit() -> None:
    codes = torch.zeros(1, 64, dtype=torch.uint8)  # E = 16 fields per unit, C = 4 units per chunk
    codes[0, 7 * 4 + 2] = 0b110  # e = 7, v = 2: low bits 0b10 in low word 2 at bit 14, high bit in halfword 2 at bit 7
    assert pack(codes, 3).tolist() == [[0, 0, 0b10 << 14, 0, 0, 1 << 7]]
    codes[0, 7 * 4 + 2] = 0
    codes[0, 15 * 4 + 3] = 0b100  # high bit of e = 15, v = 3: bit 15 of halfword 3, the sign bit of word 4 + 1
    assert pack(codes, 3)[0, 5].item() == -(2**31)


def test_chunk_can_be_chosen() -> None:
    codes = torch.randint(0, 16, (3, 256), dtype=torch.uint8)
    for chunk in (8, 32, 128):
        assert torch.equal(unpack(pack(codes, 4, chunk), 4, 256, chunk), codes)
    with pytest.raises(ValueError, match="chunk"):
        pack(codes, 4, 24)


@pytest.mark.parametrize(
    ("codes", "bits", "match"),
    [
        (torch.zeros(2, 32, dtype=torch.uint8), 5, "bits"),
        (torch.zeros(2, 24, dtype=torch.uint8), 3, "multiple of 32"),
        (torch.zeros(2, 12, dtype=torch.uint8), 2, "multiple of 16"),
        (torch.full((2, 32), 4, dtype=torch.uint8), 2, r"\[0, 3\]"),
        (torch.zeros(2, 32), 4, "integer"),
    ],
)
def test_pack_rejects_bad_input(codes: torch.Tensor, bits: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pack(codes, bits)


def test_unpack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="int32"):
        unpack(torch.zeros(2, 4, dtype=torch.int64), 4, 32)
    with pytest.raises(ValueError, match="4 words"):
        unpack(torch.zeros(2, 5, dtype=torch.int32), 4, 32)
