"""Wanda and magnitude pruning of a ``[N, K]`` weight, plus the sparsity rules shared by all pruners.

Shared conventions (also used by :mod:`layerbudget.profiles.sparsegpt`):

- ``sparsity`` is the fraction of weights set to zero, in ``[0, 1]``.
- Unstructured pruning zeroes exactly ``num_pruned(count, sparsity) = floor(sparsity · count + 0.5)``
  weights ("round half up") in every comparison group: the whole matrix for magnitude pruning,
  each output row (``count = K``) for Wanda and SparseGPT.
- ``pattern="n:m"`` (e.g. ``"2:4"``) keeps exactly ``n`` of every ``m`` consecutive weights along K
  in every row; ``K % m == 0`` is required and ``sparsity`` must be ``None`` or equal ``1 - n/m``.
- The pruning mask zeroes exactly that many entries; a weight that was already zero may also be
  among the kept ones. Ties are broken deterministically (lower column index is pruned first).
"""

from __future__ import annotations

import torch

from layerbudget.options import num_pruned
from layerbudget.profiles.hessian import check_weight


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"n:m"`` → ``(n, m)`` (keep ``n`` of every ``m``); ``None`` → ``None`` (unstructured)."""
    if pattern is None:
        return None
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"`pattern` must be None or 'n:m' such as '2:4', but got pattern={pattern!r}.")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise ValueError(f"`pattern` 'n:m' needs 0 < n < m, but got pattern={pattern!r}.")
    return n, m


def resolve_sparsity(
    sparsity: float | None, pattern: str | None, shape: tuple[int, ...]
) -> tuple[float, tuple[int, int] | None]:
    """Validate ``sparsity``/``pattern`` for a ``[N, K]`` weight; return the sparsity and ``(n, m)``."""
    nm = parse_pattern(pattern)
    if nm is not None:
        n, m = nm
        implied = 1.0 - n / m
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
            raise ValueError(
                f"pattern {pattern!r} implies sparsity {implied}, but got sparsity={sparsity} "
                "(pass sparsity=None or the implied value)."
            )
        if shape[1] % m != 0:
            raise ValueError(
                f"pattern {pattern!r} needs K divisible by {m}, but the weight has K={shape[1]} "
                f"(shape {tuple(shape)})."
            )
        return implied, nm
    if sparsity is None:
        raise ValueError("`sparsity` is required for unstructured pruning (pattern=None).")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"`sparsity` must lie in [0, 1], but got sparsity={sparsity}.")
    return s, None


def lowest_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (True = prune) of the ``k`` lowest scores in each row of ``score: [R, C]``."""
    mask = torch.zeros_like(score, dtype=torch.bool)  # [R, C]
    if k > 0:
        idx = torch.argsort(score, dim=1, stable=True)[:, :k]  # [R, k]
        mask.scatter_(1, idx, True)
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask (True = prune) of the ``m - n`` lowest scores of every ``m`` consecutive along K."""
    r, c = score.shape
    grouped = score.reshape(r * (c // m), m)  # [R * C/m, m]
    return lowest_per_row(grouped, m - n).reshape(r, c)


def _apply(weight: torch.Tensor, prune: torch.Tensor) -> torch.Tensor:
    return weight.masked_fill(prune, 0)


def wanda_prune(
    weight: torch.Tensor,
    x_sqnorm: torch.Tensor,
    sparsity: float | None,
    *,
    pattern: str | None = None,
) -> torch.Tensor:
    """Wanda pruning (Sun et al., 2023): score ``|W_ij| · ‖X_j‖``, compared within each output row.

    ``weight: [N, K]``; ``x_sqnorm: [K]`` is ``‖X_j‖² = Σ_t x_tj²`` (see
    :meth:`HessianAccumulator.x_sqnorm`; any positive scaling gives the same mask). Unstructured:
    each row loses exactly ``floor(sparsity·K + 0.5)`` weights; ``pattern="2:4"``: 2 of every 4
    consecutive along K. Returns a pruned copy in ``weight``'s dtype.
    """
    check_weight(weight)
    s, nm = resolve_sparsity(sparsity, pattern, tuple(weight.shape))
    k = weight.shape[1]
    if x_sqnorm.shape != (k,):
        raise ValueError(f"`x_sqnorm` must have shape [K]=[{k}], but got {tuple(x_sqnorm.shape)}.")
    if not bool(torch.isfinite(x_sqnorm).all()) or bool((x_sqnorm < 0).any()):
        raise ValueError("`x_sqnorm` must be finite and non-negative (squared norms of the inputs).")
    xnorm = x_sqnorm.to(device=weight.device, dtype=torch.float32).sqrt()  # [K]
    score = weight.float().abs() * xnorm[None, :]  # [N, K]
    prune = nm_mask(score, *nm) if nm is not None else lowest_per_row(score, num_pruned(k, s))
    return _apply(weight, prune)


def magnitude_prune(
    weight: torch.Tensor, sparsity: float | None, *, pattern: str | None = None
) -> torch.Tensor:
    """Magnitude pruning of ``weight: [N, K]`` by ``|W_ij|``.

    Unstructured: one comparison group for the whole matrix, exactly ``floor(sparsity·N·K + 0.5)``
    weights are zeroed; ``pattern="2:4"``: 2 of every 4 consecutive along K in each row.
    Returns a pruned copy in ``weight``'s dtype.
    """
    check_weight(weight)
    s, nm = resolve_sparsity(sparsity, pattern, tuple(weight.shape))
    score = weight.float().abs()  # [N, K]
    if nm is not None:
        prune = nm_mask(score, *nm)
    else:
        flat = score.reshape(1, -1)  # [1, N*K]
        prune = lowest_per_row(flat, num_pruned(flat.shape[1], s)).reshape(weight.shape)
    return _apply(weight, prune)
