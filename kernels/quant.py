"""Asymmetric group-wise integer quantization grid shared by every quantizer, kernel and reference.

Convention (one definition for the whole project):
- the weight ``w`` has shape ``[N, K]`` (out_features, in_features) and groups run along K:
  group ``j`` covers columns ``[j*g, (j+1)*g)``; ``group_size=None`` means one group per row;
- per (row, group) an fp16/bf16 ``scale`` and an integer-valued ``zero`` (stored in the same dtype,
  exact for every zero in ``[0, 2**bits - 1]``), shapes ``[N, K // g]``;
- code ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)``; value ``w_hat = (q - zero) * scale``.
Scales are rounded to the storage dtype *before* codes are computed, so dequantizing the stored
codes and metadata reproduces exactly the weights that the search evaluated.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
_META_DTYPES = (torch.float16, torch.bfloat16)


def check_grid(shape: tuple[int, ...], bits: int, group_size: int | None) -> int:
    """Validate a quantization grid for a ``[N, K]`` weight and return the group size used."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"`bits` must be one of {SUPPORTED_BITS}, but got bits={bits}.")
    if len(shape) != 2:
        raise ValueError(f"weight must be 2-D [N, K], but got shape {tuple(shape)}.")
    k = shape[1]
    g = k if group_size is None else int(group_size)
    if g <= 0 or k % g != 0:
        raise ValueError(f"`group_size` must divide K={k}, but got group_size={group_size}.")
    return g


def group_params(
    w: torch.Tensor, bits: int, meta_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero for each row of ``w`` (``[..., g]`` → ``[...]``), rounded to ``meta_dtype``.

    The range ``[min(w, 0), max(w, 0)]`` spans ``2**bits - 1`` steps of ``scale``, rounded to the
    nearest ``meta_dtype`` value; where that is a subnormal below the exact step, the next value up,
    so that small ranges keep their own grid (their relative rounding is coarse). A group of zeros
    gets scale 1 (its codes all equal its zero point); a range too wide for ``meta_dtype`` is refused
    (its scale would be inf and its values NaN).
    """
    if meta_dtype not in _META_DTYPES:
        raise ValueError(f"`meta_dtype` must be float16 or bfloat16, but got {meta_dtype}.")
    qmax = 2**bits - 1
    wf = w.float()
    lo = wf.amin(dim=-1).clamp(max=0.0)
    hi = wf.amax(dim=-1).clamp(min=0.0)
    exact = (hi - lo) / qmax
    scale = exact.to(meta_dtype).float()
    info = torch.finfo(meta_dtype)
    short = (scale < info.tiny) & (scale < exact)  # a subnormal scale rounded down: the grid would miss the top
    scale = torch.where(short, scale + info.tiny * info.eps, scale)  # the next value up (exact in float32)
    if not torch.isfinite(scale).all():
        raise ValueError(
            f"a group's scale is not finite in {meta_dtype} at bits={bits}: the weights hold NaN/inf, or a "
            f"range (largest {float((hi - lo).nan_to_num(nan=float('inf')).max()):.4g}) beyond it; try torch.bfloat16."
        )
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale.to(meta_dtype), zero.to(meta_dtype)


def quantize_with(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """Integer codes (uint8) of ``w`` on a given grid; ``scale``/``zero`` broadcast against ``w``."""
    q = torch.round(w.float() / scale.float()) + zero.float()
    return q.clamp_(0, 2**bits - 1).to(torch.uint8)


def quantize_groupwise(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    meta_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest group-wise quantization of ``w: [N, K]``.

    Returns ``codes: uint8 [N, K]``, ``scales: [N, K // g]`` and ``zeros: [N, K // g]``.
    """
    g = check_grid(tuple(w.shape), bits, group_size)
    n, k = w.shape
    wg = w.reshape(n, k // g, g)  # [N, G, g]
    scale, zero = group_params(wg, bits, meta_dtype)  # [N, G]
    codes = quantize_with(wg, scale[..., None], zero[..., None], bits)
    return codes.reshape(n, k), scale, zero


def dequantize_groupwise(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`quantize_groupwise`: ``(q - zero) * scale`` → ``[N, K]`` in ``dtype``."""
    n, k = codes.shape
    groups = scales.shape[1]
    if scales.shape != zeros.shape or scales.shape[0] != n or k % groups != 0:
        raise ValueError(
            f"scales/zeros must both be [N, K // g] for codes {tuple(codes.shape)}, "
            f"but got {tuple(scales.shape)} and {tuple(zeros.shape)}."
        )
    qg = codes.reshape(n, groups, k // groups).float()
    w = (qg - zeros.float()[..., None]) * scales.float()[..., None]
    return w.reshape(n, k).to(dtype)


def bits_per_weight(bits: int, group_size: int | None, k: int, meta_bits: int = 32) -> float:
    """Storage bits per weight including per-group metadata (fp16 scale + fp16 zero by default)."""
    g = k if group_size is None else group_size
    return bits + meta_bits / g
