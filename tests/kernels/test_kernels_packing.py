"""Bit packing: exact round trips (property tests), exact storage size, documented bit positions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerbudget.kernels.packing import (
    PACK_BITS,
    UNIT_BITS,
    chunk_units,
    k_multiple,
    pack,
    unpack,
    words_per_row,
)


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
@given(codes_case(), st.sampled_from(UNIT_BITS))
def test_pack_unpack_round_trip(case: tuple[torch.Tensor, int], unit: int) -> None:
    codes, bits = case
    packed = pack(codes, bits, unit=unit)
    k = codes.shape[-1]
    assert packed.dtype == torch.int32
    assert packed.shape == (*codes.shape[:-1], words_per_row(bits, k))
    assert packed.numel() * 4 * 8 == bits * codes.numel()  # no wasted bit
    assert torch.equal(unpack(packed, bits, k, unit=unit), codes)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PACK_BITS), st.integers(1, 4), st.integers(0, 2**31 - 1), st.sampled_from(UNIT_BITS))
def test_unpack_pack_round_trip_on_any_words(bits: int, runs: int, seed: int, unit: int) -> None:
    """Every int32 bit pattern is a valid packing: unpack then pack gives the same words."""
    k = 32 * runs
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(-(2**31), 2**31, (3, words_per_row(bits, k)), generator=g, dtype=torch.int64)
    words = words.to(torch.int32)
    assert torch.equal(pack(unpack(words, bits, k, unit=unit), bits, unit=unit), words)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_documented_layout_halfword_units(bits: int) -> None:
    per = 16 // bits  # fields per halfword
    k = per * 32  # one chunk of C = 16 words, 2C = 32 halfwords
    assert chunk_units(bits, k) == 16
    codes = torch.zeros(1, k, dtype=torch.uint8)
    codes[0, 1 * 32 + 5] = 1  # value j*2C + s with j = 1, s = 5 -> halfword 5 (word 2, high half), field 1
    expect = [0] * 16
    expect[2] = 1 << (16 + bits)
    assert pack(codes, bits).tolist() == [expect]
    small = torch.zeros(1, per * 4, dtype=torch.uint8)  # K = 2E: chunks of C = 2 words, 4 halfwords
    small[0, 4 + 1] = 1  # j = 1, s = 1: word 0, high half, field 1
    assert pack(small, bits).tolist() == [[1 << (16 + bits), 0]]


def test_documented_layout_three_bit_halfword_units() -> None:
    codes = torch.zeros(1, 64, dtype=torch.uint8)  # C = 4 words per chunk: 8 halfwords of 8 two-bit fields
    codes[0, 5 * 8 + 3] = 0b110  # j = 5, s = 3: low bits 0b10 in halfword 3 (word 1, high half) at bit 10,
    # the high bit in byte 3 of the high plane (word 4) at bit 5
    assert pack(codes, 3).tolist() == [[0, 0b10 << (16 + 10), 0, 0, 1 << (24 + 5), 0]]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_documented_layout_word_units(bits: int) -> None:
    per = 32 // bits
    codes = torch.zeros(1, per * 16, dtype=torch.uint8)  # one chunk of C = 16 words
    codes[0, 3 * 16 + 5] = 1  # value e*C + v with e = 3, v = 5 -> word 5, field 3
    assert chunk_units(bits, per * 16) == 16
    expect = [0] * 16
    expect[5] = 1 << (3 * bits)
    assert pack(codes, bits, unit=32).tolist() == [expect]
    small = torch.zeros(1, per * 2, dtype=torch.uint8)  # K = 2E: chunks of C = 2 words
    small[0, per + 1] = 1  # e = per / 2, v = 1
    assert pack(small, bits, unit=32).tolist() == [[0, 1 << 16]]


def test_documented_layout_three_bit_word_units() -> None:
    codes = torch.zeros(1, 64, dtype=torch.uint8)  # E = 16 fields per unit, C = 4 units per chunk
    codes[0, 7 * 4 + 2] = 0b110  # e = 7, v = 2: low bits 0b10 in low word 2 at bit 14, high bit in halfword 2 at bit 7
    assert pack(codes, 3, unit=32).tolist() == [[0, 0, 0b10 << 14, 0, 0, 1 << 7]]
    codes[0, 7 * 4 + 2] = 0
    codes[0, 15 * 4 + 3] = 0b100  # high bit of e = 15, v = 3: bit 15 of halfword 3, the sign bit of word 4 + 1
    assert pack(codes, 3, unit=32)[0, 5].item() == -(2**31)


def test_chunk_can_be_chosen() -> None:
    codes = torch.randint(0, 16, (3, 256), dtype=torch.uint8)
    for chunk in (8, 32, 128):
        assert torch.equal(unpack(pack(codes, 4, chunk), 4, 256, chunk), codes)
    with pytest.raises(ValueError, match="chunk"):
        pack(codes, 4, 24)
    with pytest.raises(ValueError, match="unit"):
        pack(codes, 4, unit=8)


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
