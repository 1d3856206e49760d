"""Bit-exact packing of 2-, 3-, 4- and 8-bit integer codes along K into int32 words, interleaved per chunk.

Layout (format version 2; the Triton kernels and every stored checkpoint rely on it):

- A *unit* holds ``E`` fields of ``width`` bits, field ``e`` at bits ``[e * width, (e + 1) * width)``.
  Units are int32 words for 2/4/8-bit codes (``E = 32 / bits``); fields of a unit are low bits first.
- The ``K`` values of a row are cut into chunks of ``V = E * C`` consecutive values held by ``C``
  consecutive units (``C`` = :func:`chunk_units`). Inside a chunk, unit ``v`` field ``e`` holds value
  ``e * C + v``: field ``e`` of the chunk's ``C`` units covers ``C`` *consecutive* values, so a kernel
  that extracts one field of a run of units multiplies it with one contiguous slice of activations.
- 3 bits: two planes per row, the low 2 bits of every value first (``K / 16`` words, 2-bit fields,
  ``E = 16``) and then the high bit (``K / 16`` halfwords, 1-bit fields, ``E = 16``), both interleaved
  with the same ``C``: low word ``v`` field ``e`` and high halfword ``v`` bit ``e`` of a chunk belong
  to the same value. ``K`` must be a multiple of 32 so the high plane fills whole words.
- ``C`` is the largest power of two up to 16 with ``K`` a multiple of ``E * C`` (16 units of 16-byte
  loads per chunk for the common ``K``; 1 unit, the plain little-endian layout, for the smallest).
  :func:`pack` accepts another chunk size ``V`` where a format needs its fields aligned with other
  packed data (the 2:4 + low-bit format packs its positions with the codes' ``V``).
- Words are stored as signed int32 (torch has no uint32 arithmetic everywhere); bit 31 is the sign
  bit, so readers mask after an arithmetic right shift.

Every layout uses exactly ``bits * K / 32`` words per row, so a packed ``[N, K]`` matrix occupies
``bits * N * K / 8`` bytes.
"""

from __future__ import annotations

import torch

PACK_BITS = (2, 3, 4, 8)
FORMAT_VERSION = 2
MAX_CHUNK_UNITS = 16
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_pack_bits(bits: int) -> None:
    """Raise ``ValueError`` unless ``bits`` is a packable width."""
    if bits not in PACK_BITS:
        raise ValueError(f"`bits` must be one of {PACK_BITS} for packed weights, but got bits={bits}.")


def fields_per_unit(bits: int) -> int:
    """``E``: values per packing unit (16 for 3 bits, whose two planes both hold 16 fields per unit)."""
    check_pack_bits(bits)
    return 16 if bits == 3 else 32 // bits


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


def chunk_units(bits: int, k: int) -> int:
    """``C``: units per interleaving chunk, the largest power of two up to 16 with ``E * C`` dividing K."""
    words_per_row(bits, k)  # validates K
    e = fields_per_unit(bits)
    c = MAX_CHUNK_UNITS
    while k % (e * c):
        c //= 2
    return c


def chunk_values(bits: int, k: int) -> int:
    """``V = E * C``: values per interleaving chunk of a row of ``k`` codes."""
    return fields_per_unit(bits) * chunk_units(bits, k)


def _check_chunk(bits: int, k: int, chunk: int | None) -> int:
    """The chunk size in values (``V``), defaulting to :func:`chunk_values`; validated."""
    words_per_row(bits, k)
    if chunk is None:
        return chunk_values(bits, k)
    e = fields_per_unit(bits)
    if chunk <= 0 or chunk % e or k % chunk or (chunk // e) & (chunk // e - 1):
        raise ValueError(
            f"`chunk` must be {e} times a power of two and divide K={k} for {bits}-bit codes, but got chunk={chunk}."
        )
    return chunk


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret non-negative int64 values below 2**32 as int32 bit patterns."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def interleave(vals: torch.Tensor, e: int, chunk: int) -> torch.Tensor:
    """``[..., K]`` values → ``[..., K / E, E]``: unit ``c*C + v`` gets values ``c*V + f*C + v`` as fields ``f``."""
    lead, k = vals.shape[:-1], vals.shape[-1]
    c = chunk // e
    chunks = vals.reshape(*lead, k // chunk, e, c)  # value c*V + f*C + v at [c, f, v]
    return chunks.transpose(-1, -2).reshape(*lead, k // e, e)


def deinterleave(fields: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inverse of :func:`interleave`: ``[..., K / E, E]`` → ``[..., K]``."""
    lead, units, e = fields.shape[:-2], fields.shape[-2], fields.shape[-1]
    c = chunk // e
    return fields.reshape(*lead, units // c, c, e).transpose(-1, -2).reshape(*lead, units * e)


def pack_units(vals: torch.Tensor, width: int, e: int, chunk: int) -> torch.Tensor:
    """Interleave ``vals: [..., K]`` (int64, each below ``2**width``) into int64 units of ``e`` fields."""
    shifts = torch.arange(e, device=vals.device, dtype=torch.int64) * width
    return (interleave(vals, e, chunk) << shifts).sum(dim=-1)  # [..., K/E]


def unpack_units(units: torch.Tensor, width: int, e: int, chunk: int) -> torch.Tensor:
    """Inverse of :func:`pack_units`: int64 units ``[..., K/E]`` → int64 values ``[..., K]``."""
    shifts = torch.arange(e, device=units.device, dtype=torch.int64) * width
    return deinterleave((units[..., None] >> shifts) & ((1 << width) - 1), chunk)


def _halfwords_to_words(half: torch.Tensor) -> torch.Tensor:
    """int64 halfwords ``[..., 2W]`` (each below 2**16) → int32 words ``[..., W]``, halfword 2i low."""
    pairs = half.reshape(*half.shape[:-1], half.shape[-1] // 2, 2)
    return _to_int32(pairs[..., 0] | (pairs[..., 1] << 16))


def _words_to_halfwords(words: torch.Tensor) -> torch.Tensor:
    w64 = words.to(torch.int64) & 0xFFFFFFFF
    return torch.stack([w64 & 0xFFFF, w64 >> 16], dim=-1).reshape(*words.shape[:-1], words.shape[-1] * 2)


def pack(codes: torch.Tensor, bits: int, chunk: int | None = None) -> torch.Tensor:
    """Pack integer codes ``[..., K]`` (values in ``[0, 2**bits)``) into int32 words ``[..., bits*K/32]``.

    ``chunk`` (values per interleaving chunk, ``V``) defaults to :func:`chunk_values`.
    """
    check_pack_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.dtype not in _INT_DTYPES:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"`codes` must be an integer tensor, but got {got}.")
    if codes.ndim == 0:
        raise ValueError("`codes` must have at least one dimension (K last), but got a scalar.")
    k = codes.shape[-1]
    chunk = _check_chunk(bits, k, chunk)
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2**bits):
        raise ValueError(
            f"`codes` must lie in [0, {2**bits - 1}] for bits={bits}, "
            f"but got values in [{int(c.min())}, {int(c.max())}]."
        )
    if bits != 3:
        return _to_int32(pack_units(c, bits, 32 // bits, chunk))
    low = _to_int32(pack_units(c & 3, 2, 16, chunk))  # [..., K/16] words
    high = _halfwords_to_words(pack_units(c >> 2, 1, 16, chunk))  # [..., K/32] words of two halfwords
    return torch.cat([low, high], dim=-1)


def unpack(packed: torch.Tensor, bits: int, k: int, chunk: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 ``[..., bits*k/32]`` → uint8 codes ``[..., k]``."""
    check_pack_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"`packed` must be an int32 tensor, but got {got}.")
    w = words_per_row(bits, k)
    chunk = _check_chunk(bits, k, chunk)
    if packed.ndim == 0 or packed.shape[-1] != w:
        raise ValueError(
            f"`packed` must have {w} words in its last dim for K={k} at {bits} bits, "
            f"but got shape {tuple(packed.shape)}."
        )
    words = packed.to(torch.int64) & 0xFFFFFFFF
    if bits != 3:
        return unpack_units(words, bits, 32 // bits, chunk).to(torch.uint8)
    low = unpack_units(words[..., : k // 16], 2, 16, chunk)
    high = unpack_units(_words_to_halfwords(packed[..., k // 16 :]), 1, 16, chunk)
    return (low | (high << 2)).to(torch.uint8)
