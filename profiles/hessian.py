"""Calibration statistics of a Linear layer's inputs: the GPTQ/SparseGPT Hessian and Wanda's norms.

A layer ``y = x Wᵀ`` with ``W: [N, K]`` sees inputs ``x: [..., K]``. The layer-wise reconstruction
loss ``‖W X − Ŵ X‖²`` has the Hessian ``H = 2/n Σ_t x_t x_tᵀ`` (``[K, K]``, ``n`` = number of
tokens), and Wanda scores a weight by ``|W_ij| · ‖X_j‖`` with ``‖X_j‖² = Σ_t x_tj²``.
:class:`HessianAccumulator` collects both from batches of inputs. :func:`inverse_hessian_cholesky`
turns ``H`` into the upper Cholesky factor of the dampened inverse that GPTQ and SparseGPT sweep with.
"""

from __future__ import annotations

import math
import warnings

import torch

_ACC_DTYPES = (torch.float32, torch.float64)


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Raise a ValueError naming ``what`` if ``x`` holds NaN or Inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{what} must be finite, but {int(bad.sum())} of {x.numel()} values are NaN/Inf "
            f"(shape {tuple(x.shape)})."
        )


class HessianAccumulator:
    """Running statistics of a Linear layer's inputs ``x: [..., K]``.

    Keeps running *means* (not sums) of ``x xᵀ`` and ``x²`` over all tokens seen, updated as
    ``mean += (batch_mean - mean) * b / (n + b)``, which stays well scaled however many tokens
    arrive. ``dtype`` is the accumulation dtype (float64 by default; float32 halves memory and is
    much faster on consumer GPUs). The accumulator lives on ``device`` (default CPU); batches are
    moved there.

    Example::

        acc = HessianAccumulator(768)
        for x in inputs:          # x: [B, S, 768]
            acc.update(x)
        H = acc.hessian()         # [768, 768]
        sq = acc.x_sqnorm()       # [768]
    """

    def __init__(
        self,
        in_features: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if int(in_features) <= 0:
            raise ValueError(f"`in_features` must be positive, but got in_features={in_features}.")
        if dtype not in _ACC_DTYPES:
            raise ValueError(f"`dtype` must be float32 or float64, but got dtype={dtype}.")
        self.in_features = int(in_features)
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._xxt_mean = torch.zeros(self.in_features, self.in_features, dtype=dtype, device=self.device)
        self._sq_mean = torch.zeros(self.in_features, dtype=dtype, device=self.device)
        self.n_tokens = 0

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of layer inputs ``x: [..., K]`` (every leading index is one token)."""
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs must have shape [..., K] with K={self.in_features}, but got {tuple(x.shape)}."
            )
        if x.is_complex():
            raise ValueError(f"inputs must be real-valued, but got dtype {x.dtype}.")
        xt = x.detach().reshape(-1, self.in_features).to(device=self.device, dtype=self.dtype)  # [T, K]
        _check_finite(xt, "layer inputs")
        b = xt.shape[0]
        if b == 0:
            return
        frac = b / (self.n_tokens + b)
        batch_xxt = (xt.T @ xt) / b  # [K, K]
        batch_sq = (xt * xt).mean(dim=0)  # [K]
        self._xxt_mean += (batch_xxt - self._xxt_mean) * frac
        self._sq_mean += (batch_sq - self._sq_mean) * frac
        self.n_tokens += b

    def _require_data(self) -> None:
        if self.n_tokens == 0:
            raise ValueError("no calibration tokens seen yet: call `update(x)` with non-empty inputs first.")

    def hessian(self) -> torch.Tensor:
        """``H = 2/n Σ_t x_t x_tᵀ``: ``[K, K]`` in the accumulation dtype."""
        self._require_data()
        return 2.0 * self._xxt_mean

    def x_sqnorm(self) -> torch.Tensor:
        """Per-input-feature squared norm ``‖X_j‖² = Σ_t x_tj²``: ``[K]`` (Wanda's statistic)."""
        self._require_data()
        return self._sq_mean * self.n_tokens


def check_weight(weight: torch.Tensor) -> None:
    """Validate a weight: 2-D ``[N, K]``, floating point, finite."""
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [N, K], but got shape {tuple(weight.shape)}.")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, but got dtype {weight.dtype}.")
    bad = ~torch.isfinite(weight)
    if bool(bad.any()):
        raise ValueError(f"weight must be finite, but {int(bad.sum())} values are NaN/Inf.")


def check_hessian(H: torch.Tensor, k: int) -> None:
    """Validate that ``H`` is a finite ``[K, K]`` matrix for a weight with ``K`` input features."""
    if H.ndim != 2 or H.shape[0] != k or H.shape[1] != k:
        raise ValueError(f"Hessian must be [K, K] with K={k}, but got shape {tuple(H.shape)}.")
    _check_finite(H, "Hessian")
    neg = torch.diagonal(H) < 0
    if bool(neg.any()):
        raise ValueError(
            f"Hessian diagonal must be non-negative (H_jj = 2/n Σ x_j²), but {int(neg.sum())} entries "
            "are negative."
        )


def inverse_hessian_cholesky(
    H: torch.Tensor,
    damp: float,
    *,
    perm: torch.Tensor | None = None,
    max_tries: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor ``U`` of the dampened inverse Hessian, and the dead-input mask.

    Steps: inputs with ``H_jj == 0`` (never active) are *dead*: their diagonal is set to 1 (the
    caller zeroes those weight columns); ``H`` is reordered as ``H[perm][:, perm]`` if ``perm`` is
    given (the sweep order, e.g. GPTQ's act-order); then ``H += d · mean(diag H) · I`` and
    ``H⁻¹ = Uᵀ U`` with ``U`` upper triangular, computed in float64. If a Cholesky fails (``H`` not
    positive definite), ``d`` is multiplied by 10 and it is retried, up to ``max_tries`` attempts in
    all (``damp == 0`` retries from 0.01), with a RuntimeWarning naming the dampening that worked.

    Returns ``U: float64 [K, K]`` (in ``perm`` order) and ``dead: bool [K]`` (natural order).
    Raises ValueError if every attempt fails.
    """
    if not math.isfinite(damp) or damp < 0:
        raise ValueError(f"`damp` must be a finite number >= 0, but got damp={damp}.")
    k = H.shape[0]
    h = H.detach().to(torch.float64).clone()  # H: [K, K]
    diag = torch.diagonal(h)  # view: [K]
    dead = diag == 0
    diag[dead] = 1.0
    if perm is not None:
        h = h[perm][:, perm]
    mean_diag = float(diag.mean())
    eye = torch.eye(k, dtype=torch.float64, device=h.device)
    tried: list[float] = []
    for attempt in range(max_tries):
        d = damp * 10.0**attempt if damp > 0 else (0.0 if attempt == 0 else 0.01 * 10.0 ** (attempt - 1))
        tried.append(d)
        lower, info = torch.linalg.cholesky_ex(h + d * mean_diag * eye)  # [K, K]
        if int(info) != 0:
            continue
        hinv = torch.cholesky_inverse(lower)  # [K, K]
        upper, info = torch.linalg.cholesky_ex(hinv, upper=True)  # [K, K]
        if int(info) != 0 or not bool(torch.isfinite(upper).all()):
            continue
        if attempt > 0:
            warnings.warn(
                f"Hessian was not positive definite with damp={damp}; used damp={d} instead.",
                RuntimeWarning,
                stacklevel=3,
            )
        return upper, dead
    raise ValueError(
        f"Hessian is not positive definite even after dampening (tried damp={tried} × mean diagonal "
        f"{mean_diag:.3g}); check the calibration inputs."
    )
