"""Launch configurations (block sizes, split-K) and the Triton-vs-cuBLAS dispatch rule, per shape.

Block sizes come from a small heuristic table rather than ``triton.autotune`` so that the same
choice is made on a CPU host (interpreter tests) and on a GPU, and no timing runs at first call.
``python -m layerbudget.kernels.bench`` times both paths on a GPU; its ``best_path`` column is the
data from which :data:`DEQUANT_MIN_M` is set.

Dispatch rule (explicit, one threshold per format): with CUDA tensors, fp16/bf16 activations and
Triton installed, ``M < DEQUANT_MIN_M[format]`` runs the fused Triton kernel; larger ``M``
dequantizes the weight once and calls ``F.linear`` (cuBLAS), which wins once the matmul is compute
bound. On CPU tensors the torch reference runs.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("lowbit", "sparse24", "sparse24_quant")

# M at or above which the auto path dequantizes + calls cuBLAS instead of the fused kernel.
# Provisional values (set before any GPU timing of these kernels; refit from bench.py's
# `best_path` column on the target GPU): the weight-only kernels are bandwidth wins at decode and
# small batches; fp16 2:4 saves only 1.78x bytes, so its crossover comes earlier.
DEQUANT_MIN_M: dict[str, int] = {"lowbit": 128, "sparse24": 64, "sparse24_quant": 128}

# Programs wanted in flight to fill a GPU (about 2 per SM on an H100 with 132 SMs).
TARGET_PROGRAMS = 264
MAX_SPLIT_K = 16


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and split-K factor for one kernel launch."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"`{name}` must be a power of two >= 16, but got {name}={v}.")
        if self.split_k < 1:
            raise ValueError(f"`split_k` must be >= 1, but got split_k={self.split_k}.")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(v: int, lo: int, hi: int) -> int:
    p = lo
    while p < v and p < hi:
        p *= 2
    return p


def pick_config(m: int, n: int, k: int) -> LaunchConfig:
    """Heuristic tile table for ``y[M, N] = x[M, K] @ W[N, K]^T`` with a dequantize-in-registers B tile.

    Small M (decode) is bandwidth bound: narrow N tiles, long K tiles, split-K until about
    :data:`TARGET_PROGRAMS` programs run. Large M uses square-ish tensor-core tiles.
    """
    if m <= 16:
        bm, bn, bk, warps = 16, 64, 128, 4
    elif m <= 64:
        bm, bn, bk, warps = _pow2_at_least(m, 32, 64), 64, 64, 4
    else:
        bm, bn, bk, warps = (64 if m <= 128 else 128), 128, 64, 8
    num_kb = _cdiv(k, bk)
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    split = 1
    while split * 2 <= MAX_SPLIT_K and tiles * split * 2 <= TARGET_PROGRAMS and num_kb >= split * 4:
        split *= 2
    return LaunchConfig(bm, bn, bk, split, warps, 3)


def dequant_min_m(fmt: str) -> int:
    """Threshold of the dispatch rule for one format (see module docstring)."""
    if fmt not in DEQUANT_MIN_M:
        raise ValueError(f"unknown kernel format {fmt!r}; known formats: {sorted(DEQUANT_MIN_M)}.")
    return DEQUANT_MIN_M[fmt]
