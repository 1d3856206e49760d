"""Split-K scratch buffers shared by the kernels (an fp32 workspace and per-tile arrival counters) and the
buffers of a tensor-core launch.

Both stay all-zero between launches: the kernels that use them (see
:func:`layerbudget.kernels.triton_common.arrive`) leave them as they found them, so they are
allocated (zeroed) once per device and grown when a larger launch needs more. Launches on one
device that run concurrently on different streams must not use split-K at the same time.
"""

from __future__ import annotations

import torch

_BUFFERS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def split_k_buffers(device: torch.device, values: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(workspace fp32 [>= values], counters int32 [>= tiles])`` on ``device``, all zero."""
    ws, lock = _BUFFERS.get(device, (None, None))
    if ws is None or ws.numel() < values or lock.numel() < tiles:
        size = max(values, 0 if ws is None else ws.numel())
        count = max(tiles, 0 if lock is None else lock.numel())
        ws = torch.zeros(size, dtype=torch.float32, device=device)
        lock = torch.zeros(count, dtype=torch.int32, device=device)
        _BUFFERS[device] = (ws, lock)
    return ws, lock


def tile_launch(x: torch.Tensor, n: int, block_n: int, block_m: int, split_k: int, slices: int | None = None
                ) -> tuple[tuple[int, int, int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a launch of ``x: [M, K]`` against ``N`` weight rows needs: the grid (weight tiles, split-K slices,
    activation tiles), the output ``[M, N]`` in ``x.dtype``, and the workspace (``slices`` of ``[M, N]``, by
    default one per split; the decode kernels add their partials into one) and counters; without split-K the
    two are ``x`` (never touched)."""
    m = x.shape[0]
    grid = (-(-n // block_n), split_k, -(-m // block_m))
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    slices = split_k if slices is None else slices
    ws, lock = (x, x) if split_k == 1 else split_k_buffers(x.device, slices * m * n, grid[0] * grid[2])
    return grid, out, ws, lock
