"""Bit-exact packing of 2-, 3-, 4- and 8-bit integer codes along K into int32 words, interleaved per chunk.

Layout (the Triton kernels and every stored checkpoint rely on it):

- The ``K`` values of a row are cut into chunks of ``V`` consecutive values held by a run of *units*;
  a unit holds its fields low bits first, and units fill the int32 words little-endian.
- Halfword units (``unit=16``, format version 3, what the dense low-bit kernels read): a halfword
  holds ``H = 16 / bits`` fields and a chunk ``2 C`` halfwords; halfword ``s`` field ``j`` of a chunk
  holds value ``j * 2C + s``. Field ``j`` of a chunk's halfwords covers ``2 C`` *consecutive* values,
  and field ``j`` of the two halfwords of one word holds two neighbouring values, so a kernel that
  extracts field ``j`` of both halves of a run of words at once multiplies it with one contiguous
  slice of activations, inside one quantization group wherever the group is a multiple of ``2 C``.
- Word units (``unit=32``, format version 2, what the 2:4 kernels read for their kept codes): a word
  holds ``E = 32 / bits`` fields and a chunk ``C`` words; word ``v`` field ``e`` holds value ``e * C + v``.
- 3 bits: two planes per row, the low 2 bits of every value first (``K / 16`` words of 2-bit fields)
  and then the high bit (``K / 32`` words of 1-bit fields), both interleaved with the same chunk:
  with halfword units the low plane's halfword ``s`` field ``j`` and the high plane's *byte* ``s`` bit
  ``j`` belong to the same value; with word units the low plane's word ``v`` field ``e`` and the high
  plane's halfword ``v`` bit ``e``. ``K`` must be a multiple of 32 so the high plane fills whole words.
- ``C`` is the largest power of two up to 16 with ``K`` a multiple of ``V = E * C`` (``E`` the fields of a
  32-bit word; 3 bits: 16); the same ``V`` serves both unit widths. :func:`pack` accepts another chunk
  size ``V`` where a format needs its fields aligned with other packed data (the 2:4 + low-bit format
  packs its positions with the codes' ``V``).
- Words are stored as signed int32 (torch has no uint32 arithmetic everywhere); bit 31 is the sign
  bit, so readers mask after an arithmetic right shift.

Every layout uses exactly ``bits * K / 32`` words per row, so a packed ``[N, K]`` matrix occupies
``bits * N * K / 8`` bytes.
"""

from __future__ import annotations

import torch

PACK_BITS = (2, 3, 4, 8)
UNIT_BITS = (16, 32)
FORMAT_VERSIONS = {16: 3, 32: 2}  # the stored format version of each unit width
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


def check_unit(unit: int) -> None:
    """Raise ``ValueError`` unless ``unit`` is a packing unit width."""
    if unit not in UNIT_BITS:
        raise ValueError(f"`unit` must be one of {UNIT_BITS} bits, but got unit={unit}.")


def _planes(bits: int, unit: int) -> list[tuple[int, int]]:
    """``(field width, unit width)`` of each plane, in storage order (the code's low bits first)."""
    if bits != 3:
        return [(bits, unit)]
    return [(2, unit), (1, unit // 2)]


def pack(codes: torch.Tensor, bits: int, chunk: int | None = None, unit: int = 16) -> torch.Tensor:
    """Pack integer codes ``[..., K]`` (values in ``[0, 2**bits)``) into int32 words ``[..., bits*K/32]``.

    ``chunk`` (values per interleaving chunk, ``V``) defaults to :func:`chunk_values`; ``unit``: 16
    (halfword units) or 32 (word units), see the module docstring.
    """
    check_pack_bits(bits)
    check_unit(unit)
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
    out, shift = [], 0
    for width, unit_width in _planes(bits, unit):
        vals = (c >> shift) & ((1 << width) - 1)
        shift += width
        units = pack_units(vals, width, unit_width // width, chunk)
        if unit_width < 32:  # narrower units fill the words little-endian (a chunk of one word: no interleaving)
            units = pack_units(units, unit_width, 32 // unit_width, 32 // unit_width)
        out.append(_to_int32(units))
    return torch.cat(out, dim=-1)


def unpack(packed: torch.Tensor, bits: int, k: int, chunk: int | None = None, unit: int = 16) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 ``[..., bits*k/32]`` → uint8 codes ``[..., k]``."""
    check_pack_bits(bits)
    check_unit(unit)
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
    codes, start, shift = 0, 0, 0
    for width, unit_width in _planes(bits, unit):
        words = packed[..., start : start + k * width // 32]
        start += k * width // 32
        units = words.to(torch.int64) & 0xFFFFFFFF
        if unit_width < 32:
            units = unpack_units(units, unit_width, 32 // unit_width, 32 // unit_width)
        codes = codes | (unpack_units(units, width, unit_width // width, chunk) << shift)
        shift += width
    return codes.to(torch.uint8)
