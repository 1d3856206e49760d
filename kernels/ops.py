"""Input-checking wrappers and dispatch for the packed-weight matmuls (Triton, dequant + cuBLAS, or reference).

Public entry points: :func:`lowbit_matmul`, :func:`sparse24_matmul`, :func:`sparse24_quant_matmul`
and :func:`packed_matmul` (dispatch on the weight's type). Each takes ``x: [M, K]`` (2-D,
contiguous), a packed weight and an optional ``bias: [N]``, and returns ``[M, N]`` in ``x.dtype``.
Bad inputs raise ``ValueError`` naming the argument and what was expected, before any kernel runs.

``path``:
- ``"auto"`` (default): CPU tensors → ``"reference"``; CUDA tensors → ``"triton"`` when Triton is
  installed, ``x`` is fp16/bf16, the weight's groups suit the kernels and
  ``M < DEQUANT_MIN_M`` of its format and code width (:mod:`.configs`), else ``"dequant"``;
- ``"triton"``: a fused kernel — the decode kernel (:mod:`.triton_gemv`) for ``M <= GEMV_MAX_M``,
  else the tensor-core kernel, unless ``config`` names one; on CPU tensors only when
  ``TRITON_INTERPRET=1`` was set before the kernels were first loaded (tests do this in
  ``tests/kernels/conftest.py``);
- ``"dequant"``: materialize ``W_hat`` in ``x.dtype`` (one Triton kernel on CUDA, torch elsewhere)
  and call ``F.linear`` (cuBLAS on GPU);
- ``"reference"``: the pure-torch reference (:mod:`.reference`).

The Triton modules are imported on first use of ``"triton"``, never at package import, so
``layerbudget.kernels`` imports without a GPU or without Triton, and the interpreter setting is read
only when a kernel is first needed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F

from .configs import LaunchConfig, dispatch_path, pick_config, tc_step_fields
from .packing import chunk_units
from .quant_weight import PackedQuantWeight
from .reference import linear_ref, lowbit_matmul_ref, sparse24_matmul_ref, sparse24_quant_matmul_ref
from .sparse24 import Sparse24QuantWeight, Sparse24Weight

Path = Literal["auto", "triton", "dequant", "reference"]
PATHS = ("auto", "triton", "dequant", "reference")
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
REFERENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
PackedWeight = PackedQuantWeight | Sparse24Weight | Sparse24QuantWeight


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (without importing it; looked up once)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _triton_module(name: str) -> ModuleType:
    if not triton_available():
        raise ValueError("path='triton' needs the `triton` package, which is not installed.")
    return importlib.import_module(f"{__package__}.triton_{name}")


def kernel_supported(weight: PackedWeight) -> bool:
    """Whether the fused kernels take this weight: every field's run of values stays in one group (``2 C``
    values for halfword units, ``C`` for word units), and dense codes come in the halfword units they read."""
    if isinstance(weight, Sparse24Weight):
        return True
    if isinstance(weight, Sparse24QuantWeight):  # the two kept values of a 2:4 group also share a group
        q = weight.values
        return q.group % max(2, chunk_units(q.bits, q.k)) == 0
    return weight.unit == 16 and weight.group % (2 * chunk_units(weight.bits, weight.k)) == 0


def _check_inputs(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None, path: str) -> None:
    if path not in PATHS:
        raise ValueError(f"`path` must be one of {PATHS}, but got path={path!r}.")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`x` must be a torch.Tensor, but got {type(x).__name__}.")
    n, k = weight.shape
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"`x` must be 2-D [M, K] with K={k}, but got shape {tuple(x.shape)}.")
    if x.dtype not in REFERENCE_DTYPES:
        raise ValueError(f"`x` must have dtype in {REFERENCE_DTYPES}, but got {x.dtype}.")
    if not x.is_contiguous():
        raise ValueError(f"`x` must be contiguous, but got strides {x.stride()} for shape {tuple(x.shape)}.")
    if x.device != weight.device:
        raise ValueError(f"`x` is on {x.device} but the weight is on {weight.device}.")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.ndim != 1 or bias.shape[0] != n:
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"`bias` must be 1-D [N] with N={n}, but got {got}.")
        if bias.dtype not in REFERENCE_DTYPES:
            raise ValueError(f"`bias` must have dtype in {REFERENCE_DTYPES}, but got {bias.dtype}.")
        if not bias.is_contiguous() or bias.device != x.device:
            raise ValueError(f"`bias` must be contiguous and on {x.device}, but got device {bias.device}.")


def choose_path(x: torch.Tensor, fmt: str, path: str = "auto", supported: bool = True, bits: int | None = None) -> str:
    """Resolve ``"auto"`` to the concrete path for activations ``x: [M, K]`` and a weight of format ``fmt`` with
    ``bits``-bit codes (see module docstring)."""
    if path != "auto":
        return path
    if x.device.type != "cuda":
        return "reference"
    if not triton_available() or x.dtype not in KERNEL_DTYPES or not supported:
        return "dequant"
    return "dequant" if dispatch_path(x.shape[0], fmt, bits) == "dequant" else "triton"


def _triton_ready(x: torch.Tensor, module: ModuleType) -> None:
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"path='triton' needs `x` in {KERNEL_DTYPES}, but got {x.dtype}.")
    if x.device.type != "cuda" and not module.INTERPRET:
        raise ValueError(
            f"path='triton' on {x.device.type} tensors needs TRITON_INTERPRET=1 set before the Triton "
            "kernels are first loaded; use CUDA tensors or path='reference'."
        )


def _run(
    x: torch.Tensor,  # [M, K]
    weight: PackedWeight,
    bias: torch.Tensor | None,  # [N]
    path: str,
    fmt: str,
    reference: Callable[[torch.Tensor, PackedWeight, torch.Tensor | None], torch.Tensor],
    config: LaunchConfig | None,
) -> torch.Tensor:  # [M, N]
    _check_inputs(x, weight, bias, path)
    supported = kernel_supported(weight)
    requested = path
    path = choose_path(x, fmt, path, supported, code_bits(weight))
    if x.shape[0] == 0:
        return x.new_zeros(0, weight.n)
    if path == "triton":
        if not supported:
            raise ValueError(
                "path='triton' needs every run of values of a packed field inside one quantization group; "
                f"group size {_group(weight)} does not suit K={weight.k}: use path='dequant'."
            )
        cfg = config or pick_config(x.shape[0], weight.n, weight.k, fmt, bits=code_bits(weight),
                                    group=getattr(weight, "group", None))
        if cfg.kernel == "tc" and fmt == "lowbit" and tc_step_fields(weight.bits, weight.k, weight.group,
                                                                   cfg.block_k) is None:
            if requested != "auto" or config is not None:
                raise ValueError(
                    "the tensor-core kernel needs runs of fields inside one quantization group; group size "
                    f"{weight.group} does not suit K={weight.k}: use path='dequant'."
                )
            path = "dequant"  # no run of fields fits a dot inside one group
    if path == "reference":
        return reference(x, weight, bias)
    if path == "dequant":
        w = dequantize(weight, x.dtype)
        if x.dtype == torch.float32 or x.device.type == "cuda":
            return F.linear(x, w, None if bias is None else bias.to(x.dtype))
        return linear_ref(x, w, bias)
    module = _triton_module("gemv" if cfg.kernel == "gemv" else "lowbit" if fmt == "lowbit" else "sparse")
    _triton_ready(x, module)
    return getattr(module, f"{cfg.kernel}_{fmt}")(x, weight, bias, cfg)


def code_bits(weight: PackedWeight) -> int | None:
    """Bits per code of a low-bit or 2:4 + low-bit weight (``None``: 2:4 fp16), as the dispatch rule reads it."""
    return None if isinstance(weight, Sparse24Weight) else weight.bits


def _group(weight: PackedWeight) -> int:
    return (weight.values if isinstance(weight, Sparse24QuantWeight) else weight).group  # type: ignore[union-attr]


def dequantize(weight: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``W_hat: [N, K]`` in ``dtype``: one Triton kernel for CUDA weights and fp16/bf16, else torch."""
    fused = weight.device.type == "cuda" and dtype in KERNEL_DTYPES and triton_available() and kernel_supported(weight)
    if isinstance(weight, PackedQuantWeight):
        return _triton_module("lowbit").dequantize_lowbit(weight, dtype) if fused else weight.dequantize(dtype)
    return _triton_module("sparse").dequantize_sparse24(weight, dtype) if fused else weight.to_dense(dtype)


def lowbit_matmul(
    x: torch.Tensor,
    weight: PackedQuantWeight,
    bias: torch.Tensor | None = None,
    *,
    path: Path = "auto",
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """``y = x @ W_hat^T + bias`` for a 2/3/4/8-bit packed weight; ``x: [M, K]`` → ``[M, N]``."""
    if not isinstance(weight, PackedQuantWeight):
        raise ValueError(f"`weight` must be a PackedQuantWeight, but got {type(weight).__name__}.")
    return _run(x, weight, bias, path, "lowbit", lowbit_matmul_ref, config)


def sparse24_matmul(
    x: torch.Tensor,
    weight: Sparse24Weight,
    bias: torch.Tensor | None = None,
    *,
    path: Path = "auto",
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """``y = x @ W^T + bias`` for a 2:4 sparse weight; ``x: [M, K]`` → ``[M, N]``."""
    if not isinstance(weight, Sparse24Weight):
        raise ValueError(f"`weight` must be a Sparse24Weight, but got {type(weight).__name__}.")
    return _run(x, weight, bias, path, "sparse24", sparse24_matmul_ref, config)


def sparse24_quant_matmul(
    x: torch.Tensor,
    weight: Sparse24QuantWeight,
    bias: torch.Tensor | None = None,
    *,
    path: Path = "auto",
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """``y = x @ W_hat^T + bias`` for a 2:4 + low-bit weight; ``x: [M, K]`` → ``[M, N]``."""
    if not isinstance(weight, Sparse24QuantWeight):
        raise ValueError(f"`weight` must be a Sparse24QuantWeight, but got {type(weight).__name__}.")
    return _run(x, weight, bias, path, "sparse24_quant", sparse24_quant_matmul_ref, config)


def format_of(weight: PackedWeight) -> str:
    """Format name used by the dispatch table (``"lowbit"``, ``"sparse24"``, ``"sparse24_quant"``)."""
    if isinstance(weight, PackedQuantWeight):
        return "lowbit"
    if isinstance(weight, Sparse24QuantWeight):
        return "sparse24_quant"
    if isinstance(weight, Sparse24Weight):
        return "sparse24"
    raise ValueError(
        "`weight` must be a PackedQuantWeight, Sparse24Weight or Sparse24QuantWeight, "
        f"but got {type(weight).__name__}."
    )


def packed_matmul(
    x: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None = None,
    *,
    path: Path = "auto",
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """Dispatch on the weight's format to the matching matmul above."""
    fn = {"lowbit": lowbit_matmul, "sparse24": sparse24_matmul, "sparse24_quant": sparse24_quant_matmul}
    return fn[format_of(weight)](x, weight, bias, path=path, config=config)
