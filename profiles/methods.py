"""Compression-method registries (pruners, quantizers) and the stored form of one compressed weight.

An option is applied in two steps: an optional pruner (``magnitude``, ``wanda``, ``sparsegpt``) and an
optional quantizer (``rtn``, ``gptq``), each looked up by name. The result is a dict of tensors that
the database stores and :func:`decode` turns back into the exact weight the search evaluates:

- quantized: ``packed`` (the kernels' int32 layout for 2/3/4/8 bits) or ``planes`` (``bits``·N·K/8
  bytes of bit planes for 5/6 bits or K the kernel layout does not cover), ``bits`` (int8 scalar),
  ``scales``/``zeros`` (fp16 ``[N, K // g]``);
- sparse fp16: ``values`` (fp16, kept weights in row-major order) and ``mask`` (bit-packed ``[N*K]``);
- sparse + quantized: the quantized tensors and ``mask`` (pruned weights decode to 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.kernels.packing import PACK_BITS, k_multiple, pack, unpack
from layerbudget.kernels.quant import dequantize_groupwise, quantize_groupwise
from layerbudget.options import Option, num_pruned
from layerbudget.profiles.gptq import gptq_quantize
from layerbudget.profiles.sparsegpt import sparsegpt_prune_mask, sparsegpt_prune_quantize
from layerbudget.profiles.wanda import lowest_per_row


@dataclass
class UnitStats:
    """Calibration statistics of one unit's input activations (what GPTQ/SparseGPT/Wanda need)."""

    hessian: torch.Tensor | None = None  # [K, K]  2/n Σ x xᵀ
    x_sqnorm: torch.Tensor | None = None  # [K]     Σ x_j² over calibration tokens


Pruner = Callable[[torch.Tensor, "UnitStats | None", Option], tuple[torch.Tensor, torch.Tensor]]
Quantizer = Callable[[torch.Tensor, "UnitStats | None", Option], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

_PRUNERS: dict[str, Pruner] = {}
_QUANTIZERS: dict[str, Quantizer] = {}


def register_pruner(name: str) -> Callable[[Pruner], Pruner]:
    def deco(fn: Pruner) -> Pruner:
        _PRUNERS[name] = fn
        return fn

    return deco


def register_quantizer(name: str) -> Callable[[Quantizer], Quantizer]:
    def deco(fn: Quantizer) -> Quantizer:
        _QUANTIZERS[name] = fn
        return fn

    return deco


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise LayerbudgetError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}") from None


@register_pruner("magnitude")
def magnitude_prune(w: torch.Tensor, stats: UnitStats | None, option: Option) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the smallest-|w| weights: ``round(sparsity·K)`` per output row, or 2 of every 4 along K."""
    return _prune_by_score(w, w.abs(), option)


def _prune_by_score(w: torch.Tensor, score: torch.Tensor, option: Option) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the highest-scoring weights; returns (pruned weight, keep mask)."""
    n, k = w.shape
    if option.pattern == "2:4":
        s4 = score.reshape(n, k // 4, 4)  # [N, K/4, 4]
        drop = s4.argsort(dim=-1, stable=True)[..., :2]
        mask = torch.ones_like(s4, dtype=torch.bool).scatter_(-1, drop, False).reshape(n, k)
    else:
        mask = ~lowest_per_row(score, num_pruned(k, option.sparsity))  # type: ignore[arg-type]
    return w * mask, mask


def _need(stats: UnitStats | None, field: str, option: Option) -> torch.Tensor:
    value = getattr(stats, field, None) if stats is not None else None
    if value is None:
        raise LayerbudgetError(f"option {option.name!r} needs calibration statistics ({field}) for this unit")
    return value


@register_pruner("wanda")
def wanda(w: torch.Tensor, stats: UnitStats | None, option: Option) -> tuple[torch.Tensor, torch.Tensor]:
    """Wanda: score ``|W_ij|·‖X_j‖`` compared within each output row (or each group of 4 for 2:4)."""
    xnorm = _need(stats, "x_sqnorm", option).float().sqrt()  # [K]
    return _prune_by_score(w, w.abs() * xnorm[None, :], option)


@register_pruner("sparsegpt")
def sparsegpt(w: torch.Tensor, stats: UnitStats | None, option: Option) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: OBS-updated pruning with the layer Hessian."""
    return sparsegpt_prune_mask(w, _need(stats, "hessian", option), option.sparsity, pattern=option.pattern)


@register_quantizer("rtn")
def rtn_quantize(w: torch.Tensor, stats: UnitStats | None, option: Option):
    """Round-to-nearest on the project grid (:mod:`layerbudget.kernels.quant`)."""
    return quantize_groupwise(w, option.bits, option.group_size)  # type: ignore[arg-type]


@register_quantizer("gptq")
def gptq(w: torch.Tensor, stats: UnitStats | None, option: Option):
    """GPTQ with the layer Hessian, on the project grid."""
    return gptq_quantize(w, _need(stats, "hessian", option), option.bits, option.group_size)  # type: ignore[arg-type]


def compress(option: Option, weight: torch.Tensor, stats: UnitStats | None = None) -> dict[str, torch.Tensor]:
    """Compress a dense ``[N, K]`` weight under ``option`` into the tensors the database stores."""
    reason = option.applies_to(tuple(weight.shape))  # type: ignore[arg-type]
    if reason:
        raise LayerbudgetError(f"option {option.name!r} does not apply: {reason}")
    w = weight.float()
    if not torch.isfinite(w).all():
        raise LayerbudgetError(f"weight to compress with {option.name!r} contains NaN or Inf")
    out: dict[str, torch.Tensor] = {}
    mask = None
    if option.sparse == "sparsegpt" and option.quant == "gptq":  # prune and quantize in one sweep
        h = _need(stats, "hessian", option)
        codes, scales, zeros, mask = sparsegpt_prune_quantize(
            w, h, option.sparsity, option.bits, option.group_size, pattern=option.pattern  # type: ignore[arg-type]
        )
        out.update(codes=codes, scales=scales, zeros=zeros)
    elif option.sparse is not None:
        w, mask = _lookup(_PRUNERS, option.sparse, "pruning method")(w, stats, option)
        if option.quant is None:
            out["values"] = w[mask].to(torch.float16)
    if option.quant is not None and "codes" not in out:
        codes, scales, zeros = _lookup(_QUANTIZERS, option.quant, "quantization method")(w, stats, option)
        out.update(codes=codes, scales=scales, zeros=zeros)
    if "codes" in out:
        out.update(store_codes(out.pop("codes"), option.bits))  # type: ignore[arg-type]
    if mask is not None:
        out["mask"] = torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))
    if not out:
        raise LayerbudgetError(f"option {option.name!r} has nothing to compress (dense and drop are not stored)")
    return out


def decode(tensors: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """The float32 ``[N, K]`` weight described by stored tensors (inverse of :func:`compress`)."""
    n, k = shape
    mask = None
    if "mask" in tensors:
        bits = np.unpackbits(tensors["mask"].numpy(), count=n * k)
        mask = torch.from_numpy(bits.astype(bool)).reshape(n, k)
    if "bits" in tensors:
        w = dequantize_groupwise(load_codes(tensors, shape), tensors["scales"], tensors["zeros"])
        return w * mask if mask is not None else w
    if "values" in tensors and mask is not None:
        w = torch.zeros(n, k, dtype=torch.float32)
        w[mask] = tensors["values"].float()
        return w
    raise LayerbudgetError(f"stored variant has unknown tensors {sorted(tensors)}")


def store_codes(codes: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Pack uint8 codes ``[N, K]`` into exactly ``bits``·N·K/8 bytes (kernel layout when it applies)."""
    n, k = codes.shape
    tag = {"bits": torch.tensor(bits, dtype=torch.int8)}
    if bits in PACK_BITS and k % k_multiple(bits) == 0:
        return {**tag, "packed": pack(codes, bits)}
    low = np.unpackbits(codes.numpy().reshape(-1, 1), axis=1, bitorder="little")[:, :bits]  # [N*K, bits]
    return {**tag, "planes": torch.from_numpy(np.packbits(low.reshape(-1), bitorder="little"))}


def load_codes(tensors: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`store_codes`: uint8 codes ``[N, K]``."""
    n, k = shape
    bits = int(tensors["bits"])
    if "packed" in tensors:
        return unpack(tensors["packed"], bits, k)
    flat = np.unpackbits(tensors["planes"].numpy(), count=n * k * bits, bitorder="little").reshape(n * k, bits)
    codes = np.packbits(np.pad(flat, ((0, 0), (0, 8 - bits))), axis=1, bitorder="little")
    return torch.from_numpy(codes.reshape(n, k))
