"""`nn.Module` drop-ins for ``nn.Linear`` holding packed weights: QuantLinear, SparseLinear, Sparse24QuantLinear.

Each module keeps its packed tensors as buffers (so ``state_dict`` holds the packed weight and a
freshly constructed module of the same configuration loads it), plus an optional ``bias`` buffer.
``forward`` accepts ``x: [..., K]``, flattens it to ``[M, K]`` and calls
:func:`layerbudget.kernels.ops.packed_matmul`: the Triton kernel (or dequant + cuBLAS at large M)
on CUDA, the torch reference on CPU, which equals ``F.linear(x, dequantized_weight(), bias)``.
``path`` and ``kernel`` (a module attribute each) choose the path and, for Triton, the kernel
(``"gemv"`` or ``"tc"`` with the launch table's configuration; ``None``: the dispatch rule).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .configs import pick_config
from .ops import PackedWeight, Path, format_of, packed_matmul
from .packing import words_per_row
from .quant import check_grid
from .quant_weight import PackedQuantWeight
from .sparse24 import CODE_UNIT, Sparse24QuantWeight, Sparse24Weight, check_24_shape


class _PackedLinear(nn.Module):
    """Shared forward/bias handling; subclasses define ``packed_weight()``."""

    in_features: int
    out_features: int
    path: Path = "auto"
    kernel: str | None = None  # the fused kernel the Triton path takes ("gemv", "tc"); None: the dispatch rule
    _FIXED_DTYPE = ("scales", "zeros", "values")  # storage dtypes that module dtype casts must not touch

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _PackedLinear:
        """Move packed buffers with the module but never cast them (``.half()``, ``.to(dtype)``)."""
        saved: dict[str, torch.dtype] = {}
        for name in self._FIXED_DTYPE:
            buf = self._buffers.get(name)
            if buf is not None and buf.is_floating_point():
                saved[name] = buf.dtype
                self._buffers[name] = buf.view(torch.int16 if buf.element_size() == 2 else torch.int32)
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, dtype in saved.items():
                self._buffers[name] = self._buffers[name].view(dtype)

    def _init_bias(self, bias: torch.Tensor | None) -> None:
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"`bias` must have shape ({self.out_features},), but got {tuple(bias.shape)}.")
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())

    def packed_weight(self) -> PackedWeight:  # pragma: no cover - abstract
        raise NotImplementedError

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``[N, K]`` weight this module multiplies by."""
        w = self.packed_weight()
        return w.dequantize(dtype) if isinstance(w, PackedQuantWeight) else w.to_dense(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight (bias excluded)."""
        return self.packed_weight().nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"`x` must have shape [..., {self.in_features}], but got {tuple(x.shape)}.")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).contiguous()  # [M, K]
        weight = self._current_weight()
        config = None
        if self.kernel is not None:  # that kernel with the launch table's configuration
            config = pick_config(x2.shape[0], self.out_features, self.in_features, format_of(weight), self.kernel,
                                 getattr(weight, "bits", None), getattr(weight, "group", None))
        y = packed_matmul(x2, weight, self.bias, path=self.path, config=config)  # [M, N]
        return y.reshape(*lead, self.out_features)

    def _current_weight(self) -> PackedWeight:
        """:meth:`packed_weight`, built (and validated) again only when a buffer was replaced or changed
        (inference-mode tensors keep no version counter: then it is built every call)."""
        try:
            key = tuple((id(b), b._version) for b in self._buffers.values() if b is not None)
        except RuntimeError:
            return self.packed_weight()
        cached = self.__dict__.get("_packed_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.packed_weight())
            self.__dict__["_packed_cache"] = cached
        return cached[1]


class QuantLinear(_PackedLinear):
    """Linear layer with a 2/3/4/8-bit group-wise quantized weight (:class:`PackedQuantWeight`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int | None = 128,
        bias: bool = True,
        meta_dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        g = check_grid((out_features, in_features), bits, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        n, k = out_features, in_features
        self.register_buffer("packed", torch.zeros(n, words_per_row(bits, k), dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(n, k // g, dtype=meta_dtype, device=device))
        self.register_buffer("zeros", torch.zeros(n, k // g, dtype=meta_dtype, device=device))
        self._init_bias(torch.zeros(n, device=device) if bias else None)

    @classmethod
    def from_packed(cls, weight: PackedQuantWeight, bias: torch.Tensor | None = None) -> QuantLinear:
        n, k = weight.shape
        mod = cls(k, n, weight.bits, weight.group_size, bias=False, meta_dtype=weight.meta_dtype, device="meta")
        mod.packed, mod.scales, mod.zeros = weight.packed, weight.scales, weight.zeros
        mod._init_bias(bias)
        return mod

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int | None = 128,
        meta_dtype: torch.dtype = torch.float16,
    ) -> QuantLinear:
        """Round-to-nearest quantize ``linear.weight`` on the project grid."""
        weight = PackedQuantWeight.from_dense(linear.weight.detach(), bits, group_size, meta_dtype)
        return cls.from_packed(weight, linear.bias)

    def packed_weight(self) -> PackedQuantWeight:
        return PackedQuantWeight(self.packed, self.scales, self.zeros, self.bits, self.group_size,
                                 (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


class SparseLinear(_PackedLinear):
    """Linear layer with a 2:4 semi-structured sparse weight (:class:`Sparse24Weight`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        n, k = check_24_shape((out_features, in_features))
        self.in_features, self.out_features = k, n
        self.register_buffer("values", torch.zeros(n, k // 2, dtype=dtype, device=device))
        # positions (0, 1) in every group: nibble 0b0100 repeated eight times per word
        self.register_buffer("meta", torch.full((n, k // 32), 0x44444444, dtype=torch.int32, device=device))
        self._init_bias(torch.zeros(n, device=device) if bias else None)

    @classmethod
    def from_packed(cls, weight: Sparse24Weight, bias: torch.Tensor | None = None) -> SparseLinear:
        n, k = weight.shape
        mod = cls(k, n, bias=False, dtype=weight.values.dtype, device="meta")
        mod.values, mod.meta = weight.values, weight.meta
        mod._init_bias(bias)
        return mod

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, prune: bool = True, dtype: torch.dtype | None = None
    ) -> SparseLinear:
        """Magnitude-prune ``linear.weight`` to 2:4 (``prune=False``: it must already be 2:4)."""
        return cls.from_packed(Sparse24Weight.from_dense(linear.weight.detach(), prune=prune, dtype=dtype),
                               linear.bias)

    def packed_weight(self) -> Sparse24Weight:
        return Sparse24Weight(self.values, self.meta, (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, sparsity=2:4, "
                f"bias={self.bias is not None}")


class Sparse24QuantLinear(_PackedLinear):
    """Linear layer with a 2:4 sparse weight whose kept values are low-bit (:class:`Sparse24QuantWeight`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int | None = 64,
        bias: bool = True,
        meta_dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        n, k = check_24_shape((out_features, in_features))
        g = check_grid((n, k // 2), bits, group_size)
        self.in_features, self.out_features = k, n
        self.bits, self.group_size = bits, group_size
        self.register_buffer("packed", torch.zeros(n, words_per_row(bits, k // 2), dtype=torch.int32,
                                                   device=device))
        self.register_buffer("scales", torch.ones(n, k // 2 // g, dtype=meta_dtype, device=device))
        self.register_buffer("zeros", torch.zeros(n, k // 2 // g, dtype=meta_dtype, device=device))
        self.register_buffer("meta", torch.full((n, k // 32), 0x44444444, dtype=torch.int32, device=device))
        self._init_bias(torch.zeros(n, device=device) if bias else None)

    @classmethod
    def from_packed(cls, weight: Sparse24QuantWeight, bias: torch.Tensor | None = None) -> Sparse24QuantLinear:
        n, k = weight.shape
        q = weight.values
        mod = cls(k, n, q.bits, q.group_size, bias=False, meta_dtype=q.meta_dtype, device="meta")
        mod.packed, mod.scales, mod.zeros, mod.meta = q.packed, q.scales, q.zeros, weight.meta
        mod._init_bias(bias)
        return mod

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int | None = 64,
        meta_dtype: torch.dtype = torch.float16,
        *,
        prune: bool = True,
    ) -> Sparse24QuantLinear:
        """Magnitude-prune to 2:4 (unless ``prune=False``), then quantize the kept values."""
        weight = Sparse24QuantWeight.from_dense(linear.weight.detach(), bits, group_size, meta_dtype, prune=prune)
        return cls.from_packed(weight, linear.bias)

    def packed_weight(self) -> Sparse24QuantWeight:
        n, k = self.out_features, self.in_features
        values = PackedQuantWeight(self.packed, self.scales, self.zeros, self.bits, self.group_size, (n, k // 2),
                                   CODE_UNIT)
        return Sparse24QuantWeight(values, self.meta, (n, k))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, sparsity=2:4, "
                f"bits={self.bits}, group_size={self.group_size}, bias={self.bias is not None}")
