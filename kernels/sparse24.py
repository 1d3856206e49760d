"""2:4 semi-structured sparse weight formats: fp16/bf16 kept values, and 2:4 with low-bit kept values.

2:4 pattern: along K, every run of four columns ``[4i, 4i + 4)`` of a ``[N, K]`` weight holds at
most two non-zeros. Storage (format version 2):

- ``values``: ``[N, K / 2]``, the two kept values of group ``i`` at compressed columns ``2i`` and
  ``2i + 1``, in increasing order of their position inside the group;
- ``meta``: int32 ``[N, K / 32]``, the 2-bit position (0..3 inside its group of four) of every kept
  value, packed like codes (:mod:`layerbudget.kernels.packing`) in units of ``E`` two-bit fields
  interleaved in chunks of the *values'* chunk size ``V``: unit ``v`` field ``e`` of a chunk holds
  the position of kept value ``e * V / E + v`` of that chunk. ``E`` and ``V`` are those of the
  values' own packing, so the position of a kept value sits at the same (unit, field) as its code:
  fp16/bf16 values use ``E = 16`` (32-bit units) and the 2-bit chunk of ``K / 2`` values; 4-bit
  kept codes use ``E = 8`` (16-bit units), 8-bit codes ``E = 4`` (8-bit units), 2- and 3-bit codes
  ``E = 16``. Units fill the int32 words little-endian. Groups with fewer than two non-zeros keep
  explicit zeros at their lowest free positions. ``K`` must be a multiple of 32.

The 2:4 + low-bit format (`Sparse24QuantWeight`) stores the kept values ``[N, K / 2]`` as a
:class:`PackedQuantWeight` in word units (``unit=32``: a group's two codes sit in neighbouring
units of one field, like its positions) whose quantization groups run along the *compressed* axis: a group of
``g`` kept values spans ``2g`` dense columns, so every group holds exactly ``g`` real weights
(groups along dense K would hold only ``g / 2``). ``g = 64`` kept values therefore matches the span
of dense ``g = 128``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import chunk_values, fields_per_unit, pack_units, unpack_units
from .quant_weight import PackedQuantWeight, ShapeNK, _int_tensor

VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FORMAT_VERSION = 2
CODE_UNIT = 32  # the kept codes are packed in word units: a group's pair sits in neighbouring units


def check_24_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Validate a ``[N, K]`` shape for the 2:4 formats (K a positive multiple of 32)."""
    if len(shape) != 2:
        raise ValueError(f"weight must be 2-D [N, K], but got shape {tuple(shape)}.")
    n, k = int(shape[0]), int(shape[1])
    if n <= 0 or k <= 0 or k % 32 != 0:
        raise ValueError(f"2:4 formats need N > 0 and K a positive multiple of 32, but got shape {(n, k)}.")
    return n, k


def magnitude_prune_24(weight: torch.Tensor) -> torch.Tensor:
    """Keep the two largest-magnitude entries of every group of four along K; zero the rest."""
    n, k = weight.shape
    if k % 4 != 0:
        raise ValueError(f"K must be a multiple of 4 for 2:4 pruning, but got K={k}.")
    groups = weight.reshape(n, k // 4, 4)  # [N, K/4, 4]
    top = groups.abs().float().topk(2, dim=-1).indices  # [N, K/4, 2]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return (groups * mask).reshape(n, k)


def is_24_sparse(weight: torch.Tensor) -> bool:
    """True when every group of four along K of ``weight: [N, K]`` has at most two non-zeros."""
    n, k = weight.shape
    if k % 4 != 0:
        return False
    return bool(((weight.reshape(n, k // 4, 4) != 0).sum(-1) <= 2).all())


def _select_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept values ``[N, K/2]`` (weight dtype) and their positions ``[N, K/2]`` of a 2:4 weight."""
    n, k = weight.shape
    groups = weight.reshape(n, k // 4, 4)  # [N, K/4, 4]
    nonzero = groups != 0
    bad = int((nonzero.sum(-1) > 2).sum())
    if bad:
        raise ValueError(
            f"weight is not 2:4 sparse: {bad} groups of four along K have more than two non-zeros; "
            "prune first (prune=True or magnitude_prune_24)."
        )
    pos = torch.arange(4, device=weight.device)
    key = nonzero.to(torch.int64) * 4 + (3 - pos)  # non-zeros first, then lowest positions; unique
    idx = key.topk(2, dim=-1).indices.sort(dim=-1).values  # [N, K/4, 2]
    values = groups.gather(-1, idx).reshape(n, k // 2)
    return values, idx.reshape(n, k // 2)


def _check_meta(meta: torch.Tensor, n: int, k: int) -> None:
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.int32:
        got = meta.dtype if isinstance(meta, torch.Tensor) else type(meta).__name__
        raise ValueError(f"`meta` must be an int32 tensor, but got {got}.")
    if tuple(meta.shape) != (n, k // 32):
        raise ValueError(f"`meta` must have shape {(n, k // 32)}, but got {tuple(meta.shape)}.")
    if not meta.is_contiguous():
        raise ValueError(f"`meta` must be contiguous, but got strides {meta.stride()}.")


def meta_layout(k: int, bits: int | None) -> tuple[int, int]:
    """``(E, V)`` of the positions of a 2:4 ``[N, K]`` weight whose kept values are ``bits``-bit codes
    (``None``: fp16/bf16/fp32 kept values, laid out like 2-bit codes)."""
    b = 2 if bits is None else bits
    return fields_per_unit(b), chunk_values(b, k // 2)


def pack_positions(pos: torch.Tensor, e: int, chunk: int) -> torch.Tensor:
    """Positions ``[N, K/2]`` (0..3) → int32 meta ``[N, K/32]`` in units of ``e`` two-bit fields."""
    n, half = pos.shape
    units = pack_units(pos.to(torch.int64), 2, e, chunk)  # [N, K/2/e], each below 2**(2e)
    unit_bytes = e // 4
    as_bytes = (units[..., None] >> (8 * torch.arange(unit_bytes, device=pos.device))) & 0xFF
    return as_bytes.to(torch.uint8).reshape(n, half // 4).view(torch.int32)


def unpack_positions(meta: torch.Tensor, k: int, e: int, chunk: int) -> torch.Tensor:
    """Inverse of :func:`pack_positions`: uint8 ``[N, K/2]``."""
    n = meta.shape[0]
    unit_bytes = e // 4
    as_bytes = meta.contiguous().view(torch.uint8).reshape(n, -1, unit_bytes).to(torch.int64)
    units = (as_bytes << (8 * torch.arange(unit_bytes, device=meta.device))).sum(-1)
    return unpack_units(units, 2, e, chunk).to(torch.uint8)


def positions(meta: torch.Tensor, k: int, bits: int | None = None) -> torch.Tensor:
    """Positions (0..3) of the kept values, uint8 ``[N, K/2]``, from packed ``meta: [N, K/32]``."""
    return unpack_positions(meta, k, *meta_layout(k, bits))


def validate_meta(meta: torch.Tensor, k: int, bits: int | None = None) -> None:
    """Raise ``ValueError`` unless both positions of every group are distinct and increasing."""
    pos = positions(meta, k, bits).reshape(meta.shape[0], k // 4, 2)
    bad = int((pos[..., 0] >= pos[..., 1]).sum())
    if bad:
        raise ValueError(f"`meta` is not a valid 2:4 pattern: {bad} groups have positions not increasing.")


def _scatter_dense(values: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
    n = values.shape[0]
    idx = pos.reshape(n, k // 4, 2).to(torch.int64)  # [N, K/4, 2]
    dense = torch.zeros(n, k // 4, 4, dtype=values.dtype, device=values.device)
    return dense.scatter_(-1, idx, values.reshape(n, k // 4, 2)).reshape(n, k)


@dataclass(frozen=True)
class Sparse24Weight(ShapeNK):
    """2:4 sparse weight: kept values ``[N, K/2]`` + packed 2-bit positions ``[N, K/32]``."""

    values: torch.Tensor  # fp16|bf16|fp32 [N, K/2]
    meta: torch.Tensor  # int32 [N, K/32]
    shape: tuple[int, int]  # (N, K)

    def __post_init__(self) -> None:
        n, k = check_24_shape(self.shape)
        object.__setattr__(self, "shape", (n, k))
        if not isinstance(self.values, torch.Tensor) or self.values.dtype not in VALUE_DTYPES:
            got = self.values.dtype if isinstance(self.values, torch.Tensor) else type(self.values).__name__
            raise ValueError(f"`values` must have dtype in {VALUE_DTYPES}, but got {got}.")
        if tuple(self.values.shape) != (n, k // 2) or not self.values.is_contiguous():
            raise ValueError(
                f"`values` must be contiguous with shape {(n, k // 2)}, but got {tuple(self.values.shape)} "
                f"with strides {self.values.stride()}."
            )
        _check_meta(self.meta, n, k)
        if self.meta.device != self.values.device:
            raise ValueError(f"`meta` is on {self.meta.device} but `values` is on {self.values.device}.")

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.meta.numel() * 4

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.n * self.k)

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, *, prune: bool = False, dtype: torch.dtype | None = None
    ) -> Sparse24Weight:
        """Compress a 2:4 weight ``[N, K]`` (validated), or magnitude-prune it first with ``prune=True``.

        ``dtype`` of the kept values defaults to the weight's dtype.
        """
        n, k = check_24_shape(tuple(weight.shape))
        w = weight.detach()
        if prune:
            w = magnitude_prune_24(w)
        values, pos = _select_24(w)
        dtype = w.dtype if dtype is None else dtype
        return cls(values.to(dtype).contiguous(), pack_positions(pos, *meta_layout(k, None)), (n, k))

    @classmethod
    def from_parts(cls, values: torch.Tensor, meta: torch.Tensor, shape: tuple[int, int]) -> Sparse24Weight:
        """Build from stored tensors, checking that ``meta`` encodes a valid 2:4 pattern."""
        out = cls(values, meta, shape)
        validate_meta(out.meta, out.k)
        return out

    @classmethod
    def from_positions(cls, values: torch.Tensor, pos: torch.Tensor, shape: tuple[int, int]) -> Sparse24Weight:
        """Build from kept values ``[N, K/2]`` and their positions ``[N, K/2]`` (validated)."""
        n, k = check_24_shape(shape)
        return cls.from_parts(values, pack_positions(pos.to(torch.uint8), *meta_layout(k, None)), (n, k))

    def positions(self) -> torch.Tensor:
        """uint8 ``[N, K/2]`` position (0..3) of every kept value inside its group of four."""
        return positions(self.meta, self.k)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense ``[N, K]`` weight with zeros at the pruned positions."""
        dense = _scatter_dense(self.values, self.positions(), self.k)
        return dense if dtype is None else dense.to(dtype)

    def to(self, device: torch.device | str) -> Sparse24Weight:
        return Sparse24Weight(self.values.to(device), self.meta.to(device), self.shape)

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}values": self.values,
            f"{prefix}meta": self.meta,
            f"{prefix}shape": torch.tensor(self.shape, dtype=torch.int64),
            f"{prefix}format_version": torch.tensor(FORMAT_VERSION, dtype=torch.int64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> Sparse24Weight:
        version = _int_tensor(tensors, f"{prefix}format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported 2:4 format version {version}; expected {FORMAT_VERSION}.")
        for key in ("values", "meta", "shape"):
            if f"{prefix}{key}" not in tensors:
                raise ValueError(f"missing tensor {prefix}{key!r}; got keys {sorted(tensors)}.")
        shape = tensors[f"{prefix}shape"]
        return cls.from_parts(
            tensors[f"{prefix}values"].contiguous(),
            tensors[f"{prefix}meta"].contiguous(),
            (int(shape[0]), int(shape[1])),
        )


@dataclass(frozen=True)
class Sparse24QuantWeight(ShapeNK):
    """2:4 sparse weight whose kept values are low-bit quantized (groups along the compressed axis)."""

    values: PackedQuantWeight  # shape (N, K/2): codes, scales, zeros of the kept values
    meta: torch.Tensor  # int32 [N, K/32]
    shape: tuple[int, int]  # (N, K)

    def __post_init__(self) -> None:
        n, k = check_24_shape(self.shape)
        object.__setattr__(self, "shape", (n, k))
        if not isinstance(self.values, PackedQuantWeight):
            raise ValueError(f"`values` must be a PackedQuantWeight, but got {type(self.values).__name__}.")
        if self.values.unit != CODE_UNIT:
            raise ValueError(f"`values` must be packed in {CODE_UNIT}-bit units, but got unit={self.values.unit}.")
        if self.values.shape != (n, k // 2):
            raise ValueError(f"`values` must have shape {(n, k // 2)}, but got {self.values.shape}.")
        _check_meta(self.meta, n, k)
        if self.meta.device != self.values.device:
            raise ValueError(f"`meta` is on {self.meta.device} but `values` is on {self.values.device}.")

    @property
    def bits(self) -> int:
        return self.values.bits

    @property
    def group_size(self) -> int | None:
        """Group size in kept values (along the compressed K/2 axis); None = per-channel."""
        return self.values.group_size

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.meta.numel() * 4

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.n * self.k)

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bits: int = 4,
        group_size: int | None = 64,
        meta_dtype: torch.dtype = torch.float16,
        *,
        prune: bool = False,
    ) -> Sparse24QuantWeight:
        """Compress (and with ``prune=True`` first magnitude-prune) ``[N, K]``, then quantize kept values.

        ``group_size`` counts kept values along the compressed axis (64 kept = 128 dense columns).
        """
        n, k = check_24_shape(tuple(weight.shape))
        if group_size is not None and (group_size <= 0 or (k // 2) % group_size != 0):
            raise ValueError(
                f"`group_size` counts kept values and must divide K/2={k // 2}, but got group_size={group_size}."
            )
        sparse = Sparse24Weight.from_dense(weight, prune=prune, dtype=torch.float32)
        values = PackedQuantWeight.from_dense(sparse.values, bits, group_size, meta_dtype, CODE_UNIT)
        return cls.from_positions(values, sparse.positions(), sparse.shape)

    @classmethod
    def from_positions(
        cls, values: PackedQuantWeight, pos: torch.Tensor, shape: tuple[int, int]
    ) -> Sparse24QuantWeight:
        """Build from packed kept values and their positions ``[N, K/2]`` (validated)."""
        n, k = check_24_shape(shape)
        meta = pack_positions(pos.to(torch.uint8), *meta_layout(k, values.bits))
        out = cls(values, meta, (n, k))
        validate_meta(out.meta, out.k, out.bits)
        return out

    def positions(self) -> torch.Tensor:
        return positions(self.meta, self.k, self.bits)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``[N, K]`` dequantized weight (kept values computed in fp32, then cast)."""
        return _scatter_dense(self.values.dequantize(torch.float32), self.positions(), self.k).to(dtype)

    def to(self, device: torch.device | str) -> Sparse24QuantWeight:
        return Sparse24QuantWeight(self.values.to(device), self.meta.to(device), self.shape)

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = self.values.to_tensors(f"{prefix}values.")
        out[f"{prefix}meta"] = self.meta
        out[f"{prefix}shape"] = torch.tensor(self.shape, dtype=torch.int64)
        out[f"{prefix}format_version"] = torch.tensor(FORMAT_VERSION, dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> Sparse24QuantWeight:
        version = _int_tensor(tensors, f"{prefix}format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported 2:4 format version {version}; expected {FORMAT_VERSION}.")
        for key in ("meta", "shape"):
            if f"{prefix}{key}" not in tensors:
                raise ValueError(f"missing tensor {prefix}{key!r}; got keys {sorted(tensors)}.")
        shape = tensors[f"{prefix}shape"]
        out = cls(
            PackedQuantWeight.from_tensors(tensors, f"{prefix}values.", CODE_UNIT),
            tensors[f"{prefix}meta"].contiguous(),
            (int(shape[0]), int(shape[1])),
        )
        validate_meta(out.meta, out.k, out.bits)
        return out
