"""`PackedQuantWeight`: a weight-only quantized ``[N, K]`` matrix in the packed storage format.

Storage, for a weight of shape ``[N, K]`` (out_features, in_features):

- ``packed``: int32 ``[N, bits * K / 32]``, the codes of each row packed along K with the
  interleaved layout of :mod:`layerbudget.kernels.packing` (chunks of ``V`` values; 3 bits: a plane
  of low 2-bit fields, then a plane of high bits) in halfword units (``unit=16``, format version 3:
  what the dense kernels read) or word units (``unit=32``, format version 2: the 2:4 kernels' kept codes);
- ``scales``, ``zeros``: fp16 or bf16 ``[N, K / g]`` on the grid of :mod:`layerbudget.kernels.quant`
  (asymmetric, ``w_hat = (q - zero) * scale``, groups of ``g`` consecutive columns along K;
  ``group_size=None`` is one group per row, i.e. per-channel). Zeros are integer-valued.

``nbytes`` is exactly ``bits * N * K / 8`` plus the two metadata tensors. ``to_tensors`` flattens
everything (integers included, as int64 tensors) into a dict ready for ``safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import (
    FORMAT_VERSIONS,
    check_pack_bits,
    check_unit,
    chunk_values,
    k_multiple,
    pack,
    unpack,
    words_per_row,
)
from .quant import dequantize_groupwise, quantize_groupwise

META_DTYPES = (torch.float16, torch.bfloat16)


def _meta_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _int_tensor(tensors: dict[str, torch.Tensor], key: str) -> int:
    if key not in tensors:
        raise ValueError(f"missing tensor {key!r}; got keys {sorted(tensors)}.")
    t = tensors[key]
    if t.numel() != 1:
        raise ValueError(f"{key!r} must hold one integer, but got shape {tuple(t.shape)}.")
    return int(t.item())


class ShapeNK:
    """``n`` and ``k`` of a weight format whose ``shape`` is the dense ``(N, K)``."""

    shape: tuple[int, int]

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def k(self) -> int:
        return self.shape[1]


@dataclass(frozen=True)
class PackedQuantWeight(ShapeNK):
    """Packed asymmetric group-wise quantized weight; validated on construction (shapes, dtypes, device)."""

    packed: torch.Tensor  # int32 [N, bits*K/32]
    scales: torch.Tensor  # fp16|bf16 [N, K/g]
    zeros: torch.Tensor  # fp16|bf16 [N, K/g], integer-valued
    bits: int
    group_size: int | None  # None: one group per row (per-channel)
    shape: tuple[int, int]  # (N, K)
    unit: int = 16  # packing unit width: 16 (dense kernels) or 32 (2:4 kept codes)

    def __post_init__(self) -> None:
        check_pack_bits(self.bits)
        check_unit(self.unit)
        if len(self.shape) != 2 or min(self.shape) <= 0:
            raise ValueError(f"`shape` must be (N, K) with positive sizes, but got shape={self.shape}.")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        n, k = self.shape
        if k % k_multiple(self.bits) != 0:
            raise ValueError(
                f"K must be a multiple of {k_multiple(self.bits)} for {self.bits}-bit packing, but got K={k}."
            )
        g = self.group
        if g <= 0 or k % g != 0:
            raise ValueError(f"`group_size` must divide K={k}, but got group_size={self.group_size}.")
        for name, t, dtypes in (
            ("packed", self.packed, (torch.int32,)),
            ("scales", self.scales, META_DTYPES),
            ("zeros", self.zeros, META_DTYPES),
        ):
            if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"`{name}` must have dtype in {dtypes}, but got {got}.")
            if not t.is_contiguous():
                raise ValueError(f"`{name}` must be contiguous (row-major), but got strides {t.stride()}.")
            if t.device != self.packed.device:
                raise ValueError(f"`{name}` is on {t.device} but `packed` is on {self.packed.device}.")
        want = (n, words_per_row(self.bits, k))
        if tuple(self.packed.shape) != want:
            raise ValueError(f"`packed` must have shape {want}, but got {tuple(self.packed.shape)}.")
        for name, t in (("scales", self.scales), ("zeros", self.zeros)):
            if tuple(t.shape) != (n, k // g):
                raise ValueError(f"`{name}` must have shape {(n, k // g)}, but got {tuple(t.shape)}.")
        if self.zeros.dtype != self.scales.dtype:
            raise ValueError(f"`zeros` dtype {self.zeros.dtype} differs from `scales` dtype {self.scales.dtype}.")

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def group(self) -> int:
        """Effective group size along K (K itself for per-channel)."""
        return self.shape[1] if self.group_size is None else int(self.group_size)

    @property
    def num_groups(self) -> int:
        return self.k // self.group

    @property
    def chunk(self) -> int:
        """Values per interleaving chunk of the packed rows (:func:`~layerbudget.kernels.packing.chunk_values`)."""
        return chunk_values(self.bits, self.k)

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def meta_dtype(self) -> torch.dtype:
        return self.scales.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes plus scales and zeros."""
        return _meta_bytes(self.packed) + _meta_bytes(self.scales) + _meta_bytes(self.zeros)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.n * self.k)

    # --- constructors --------------------------------------------------------------------------
    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bits: int,
        group_size: int | None,
        unit: int = 16,
    ) -> PackedQuantWeight:
        """Pack existing codes ``[N, K]`` (e.g. from GPTQ) with their ``[N, K/g]`` scales and zeros, in units of
        ``unit`` bits."""
        if codes.ndim != 2:
            raise ValueError(f"`codes` must be 2-D [N, K], but got shape {tuple(codes.shape)}.")
        return cls(
            pack(codes, bits, unit=unit).contiguous(),
            scales.contiguous(),
            zeros.contiguous(),
            bits,
            group_size,
            (codes.shape[0], codes.shape[1]),
            unit,
        )

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bits: int = 4,
        group_size: int | None = 128,
        meta_dtype: torch.dtype = torch.float16,
        unit: int = 16,
    ) -> PackedQuantWeight:
        """Round-to-nearest quantize a dense ``[N, K]`` weight on the project grid and pack it."""
        check_pack_bits(bits)
        if weight.ndim != 2:
            raise ValueError(f"`weight` must be 2-D [N, K], but got shape {tuple(weight.shape)}.")
        codes, scales, zeros = quantize_groupwise(weight.detach(), bits, group_size, meta_dtype)
        return cls.from_codes(codes, scales, zeros, bits, group_size, unit)

    # --- views -------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """Unpacked codes, uint8 ``[N, K]``."""
        return unpack(self.packed, self.bits, self.k, unit=self.unit)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``w_hat = (q - zero) * scale`` of shape ``[N, K]`` (computed in fp32, cast to ``dtype``)."""
        return dequantize_groupwise(self.codes(), self.scales, self.zeros, dtype)

    def to(self, device: torch.device | str) -> PackedQuantWeight:
        return PackedQuantWeight(
            self.packed.to(device),
            self.scales.to(device),
            self.zeros.to(device),
            self.bits,
            self.group_size,
            self.shape,
            self.unit,
        )

    # --- serialisation ------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat dict of tensors (for ``safetensors``); integers are stored as int64 scalars."""

        def scalar(v: int) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.int64)

        return {
            f"{prefix}packed": self.packed,
            f"{prefix}scales": self.scales,
            f"{prefix}zeros": self.zeros,
            f"{prefix}bits": scalar(self.bits),
            f"{prefix}group_size": scalar(0 if self.group_size is None else self.group_size),
            f"{prefix}shape": torch.tensor(self.shape, dtype=torch.int64),
            f"{prefix}format_version": scalar(FORMAT_VERSIONS[self.unit]),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "", unit: int = 16) -> PackedQuantWeight:
        """Inverse of :meth:`to_tensors` for a weight packed in units of ``unit`` bits; validates the format
        version (the unit's) and every shape."""
        check_unit(unit)
        version = _int_tensor(tensors, f"{prefix}format_version")
        if version != FORMAT_VERSIONS[unit]:
            raise ValueError(f"unsupported packed format version {version}; expected {FORMAT_VERSIONS[unit]}.")
        shape_t = tensors.get(f"{prefix}shape")
        if shape_t is None or shape_t.numel() != 2:
            raise ValueError(f"{prefix}shape must hold (N, K), but got {shape_t}.")
        g = _int_tensor(tensors, f"{prefix}group_size")
        for key in ("packed", "scales", "zeros"):
            if f"{prefix}{key}" not in tensors:
                raise ValueError(f"missing tensor {prefix}{key!r}; got keys {sorted(tensors)}.")
        return cls(
            tensors[f"{prefix}packed"].contiguous(),
            tensors[f"{prefix}scales"].contiguous(),
            tensors[f"{prefix}zeros"].contiguous(),
            _int_tensor(tensors, f"{prefix}bits"),
            None if g == 0 else g,
            (int(shape_t[0]), int(shape_t[1])),
            unit,
        )
