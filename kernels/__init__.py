"""Triton low-bit and sparse matmul kernels, packed weight formats, torch references and Linear modules.

Importing this package never imports Triton: the Triton kernels (``triton_lowbit``,
``triton_sparse``) load on the first ``path="triton"`` call, so the package works without a GPU or
Triton, and ``TRITON_INTERPRET=1`` only has to be set before that first kernel call.
"""

from __future__ import annotations

from .configs import DEQUANT_MIN_M, LaunchConfig, pick_config
from .modules import QuantLinear, Sparse24QuantLinear, SparseLinear
from .ops import (
    choose_path,
    lowbit_matmul,
    packed_matmul,
    sparse24_matmul,
    sparse24_quant_matmul,
    triton_available,
)
from .packing import PACK_BITS, pack, unpack, words_per_row
from .quant import (
    bits_per_weight,
    check_grid,
    dequantize_groupwise,
    group_params,
    quantize_groupwise,
    quantize_with,
)
from .quant_weight import PackedQuantWeight
from .reference import linear_ref, lowbit_matmul_ref, sparse24_matmul_ref, sparse24_quant_matmul_ref
from .sparse24 import Sparse24QuantWeight, Sparse24Weight, is_24_sparse, magnitude_prune_24

__all__ = [
    "DEQUANT_MIN_M",
    "PACK_BITS",
    "LaunchConfig",
    "PackedQuantWeight",
    "QuantLinear",
    "Sparse24QuantLinear",
    "Sparse24QuantWeight",
    "Sparse24Weight",
    "SparseLinear",
    "bits_per_weight",
    "check_grid",
    "choose_path",
    "dequantize_groupwise",
    "group_params",
    "is_24_sparse",
    "linear_ref",
    "lowbit_matmul",
    "lowbit_matmul_ref",
    "magnitude_prune_24",
    "pack",
    "packed_matmul",
    "pick_config",
    "quantize_groupwise",
    "quantize_with",
    "sparse24_matmul",
    "sparse24_matmul_ref",
    "sparse24_quant_matmul",
    "sparse24_quant_matmul_ref",
    "triton_available",
    "unpack",
    "words_per_row",
]
