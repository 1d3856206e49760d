"""Bit packing: exact round trips (property tests), exact storage size, documented bit positions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerbudget.kernels.packing import PACK_BITS, k_multiple, pack, unpack, words_per_row


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
    codes = torch.zeros(1, per * 2, dtype=torch.uint8)
    codes[0, per + 1] = 1  # value j = per + 1 -> word 1, shift bits
    packed = pack(codes, bits)
    assert packed.tolist() == [[0, 1 << bits]]


def test_documented_layout_three_bit() -> None:
    codes = torch.zeros(1, 64, dtype=torch.uint8)
    codes[0, 32 + 17] = 0b110  # run 1, value 17: low bits 0b10 in word 3+1 at bit 2, high bit in word 3+2 at bit 17
    packed = pack(codes, 3)
    assert packed.tolist() == [[0, 0, 0, 0, 0b10 << 2, 1 << 17]]
    codes[0, 31] = 0b111  # high bit of value 31 is the sign bit of word 2
    assert pack(codes, 3)[0, 2].item() == -(2**31)


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
