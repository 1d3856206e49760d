"""Bit-exact packing of 2-, 3-, 4- and 8-bit integer codes along K into int32 words.

Layout (the Triton kernels and every stored checkpoint rely on it; change it only with a new
format version):

- Codes ``q`` have shape ``[..., K]`` with ``0 <= q < 2**bits``; they are packed along the last
  axis (K) into little-endian int32 words, one row after another (row-major ``[..., W]``).
- ``bits`` in {2, 4, 8}: ``E = 32 // bits`` values per word. Value ``j`` of a row lives in word
  ``j // E`` at bits ``[(j % E) * bits, (j % E) * bits + bits)``. ``W = K * bits / 32``; ``K`` must
  be a multiple of ``E`` (16, 8, 4).
- ``bits == 3``: K is cut into runs of 32 values; run ``r`` owns the three consecutive words
  ``3r, 3r + 1, 3r + 2``. Word ``3r`` holds the low two bits of values ``32r + 0 .. 32r + 15``
  (value ``32r + i`` at bits ``[2i, 2i + 2)``), word ``3r + 1`` the low two bits of values
  ``32r + 16 .. 32r + 31`` (value ``32r + 16 + i`` at bits ``[2i, 2i + 2)``), and word ``3r + 2``
  the high bit of all 32 values (value ``32r + i`` at bit ``i``). ``W = 3K / 32``; ``K`` must be a
  multiple of 32. No bit is wasted.
- Words are stored as signed int32 (torch has no uint32 arithmetic everywhere); bit 31 is simply
  the sign bit, so readers must mask after an arithmetic right shift.

Every layout uses exactly ``bits * K / 32`` words per row, so a packed ``[N, K]`` matrix occupies
``bits * N * K / 8`` bytes.
"""

from __future__ import annotations

import torch

PACK_BITS = (2, 3, 4, 8)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_pack_bits(bits: int) -> None:
    """Raise ``ValueError`` unless ``bits`` is a packable width."""
    if bits not in PACK_BITS:
        raise ValueError(f"`bits` must be one of {PACK_BITS} for packed weights, but got bits={bits}.")


def k_multiple(bits: int) -> int:
    """Smallest K granularity that packs into whole words: 16, 32, 8, 4 for 2, 3, 4, 8 bits."""
    check_pack_bits(bits)
    return 32 if bits == 3 else 32 // bits


def words_per_row(bits: int, k: int) -> int:
    """Number of int32 words holding ``k`` codes of width ``bits`` (``bits * k / 32``)."""
    unit = k_multiple(bits)
    if k <= 0 or k % unit != 0:
        raise ValueError(f"K must be a positive multiple of {unit} to pack {bits}-bit codes, but got K={k}.")
    return k * bits // 32


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret non-negative int64 values below 2**32 as int32 bit patterns."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pack_fields(vals: torch.Tensor, width: int) -> torch.Tensor:
    """Pack ``vals: [..., W, 32 // width]`` (int64, each < 2**width) into int32 ``[..., W]``."""
    per = 32 // width
    shifts = torch.arange(per, device=vals.device, dtype=torch.int64) * width  # [E]
    return _to_int32((vals << shifts).sum(dim=-1))


def _unpack_fields(words: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`_pack_fields`: int32 ``[..., W]`` → int64 ``[..., W, 32 // width]``."""
    per = 32 // width
    shifts = torch.arange(per, device=words.device, dtype=torch.int64) * width  # [E]
    w64 = words.to(torch.int64) & 0xFFFFFFFF  # [..., W]
    return (w64[..., None] >> shifts) & ((1 << width) - 1)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``[..., K]`` (values in ``[0, 2**bits)``) into int32 words ``[..., bits*K/32]``."""
    check_pack_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.dtype not in _INT_DTYPES:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"`codes` must be an integer tensor, but got {got}.")
    if codes.ndim == 0:
        raise ValueError("`codes` must have at least one dimension (K last), but got a scalar.")
    k = codes.shape[-1]
    w = words_per_row(bits, k)
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2**bits):
        raise ValueError(
            f"`codes` must lie in [0, {2**bits - 1}] for bits={bits}, "
            f"but got values in [{int(c.min())}, {int(c.max())}]."
        )
    lead = c.shape[:-1]
    if bits != 3:
        return _pack_fields(c.reshape(*lead, w, 32 // bits), bits)  # [..., W]
    runs = c.reshape(*lead, k // 32, 32)  # [..., R, 32]
    low = _pack_fields((runs & 3).reshape(*lead, k // 32, 2, 16), 2)  # [..., R, 2]
    high = _pack_fields(runs >> 2, 1)[..., None]  # [..., R, 1]
    return torch.cat([low, high], dim=-1).reshape(*lead, w)  # [..., 3R]


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 ``[..., bits*k/32]`` → uint8 codes ``[..., k]``."""
    check_pack_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"`packed` must be an int32 tensor, but got {got}.")
    w = words_per_row(bits, k)
    if packed.ndim == 0 or packed.shape[-1] != w:
        raise ValueError(
            f"`packed` must have {w} words in its last dim for K={k} at {bits} bits, "
            f"but got shape {tuple(packed.shape)}."
        )
    lead = packed.shape[:-1]
    if bits != 3:
        return _unpack_fields(packed, bits).reshape(*lead, k).to(torch.uint8)
    runs = packed.reshape(*lead, k // 32, 3)  # [..., R, 3]
    low = _unpack_fields(runs[..., :2], 2).reshape(*lead, k // 32, 32)  # [..., R, 32]
    high = _unpack_fields(runs[..., 2], 1)  # [..., R, 32]
    return (low | (high << 2)).reshape(*lead, k).to(torch.uint8)
