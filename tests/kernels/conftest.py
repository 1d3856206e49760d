"""Kernel tests run the Triton kernels on CPU through the interpreter (``TRITON_INTERPRET=1``, set in
``tests/conftest.py`` before anything imports Triton); on a host with CUDA the same tests compile
and run the real kernels on the GPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """Seeded CPU generator; tests pass it explicitly instead of touching global RNG state."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def device() -> str:
    """Where the kernel tests run: the GPU when there is one, else the CPU interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"
