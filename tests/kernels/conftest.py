"""Kernel tests run the Triton kernels on CPU through the interpreter.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` kernel is defined, i.e. when
``layerbudget.kernels.triton_*`` is first imported. ``layerbudget.kernels`` imports those modules
lazily (on the first ``path="triton"`` call), so setting the variable here, at conftest import, is
early enough even when other test folders imported ``layerbudget.kernels`` before. On a host with
CUDA the variable is left alone and the same tests run the compiled kernels on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # on a GPU host the same tests compile and run the real kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")



@pytest.fixture
def gen() -> torch.Generator:
    """Seeded CPU generator; tests pass it explicitly instead of touching global RNG state."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def device() -> str:
    """Where the kernel tests run: the GPU when there is one, else the CPU interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"
