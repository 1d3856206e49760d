"""Hardware specs for latency models: GPU datasheet peaks, and this machine's CPU measured on demand.

A :class:`Hardware` gives what the roofline needs: memory bandwidth, dense matmul throughput, the
bytes of one activation element, and two efficiency factors plus a per-kernel overhead that start
at the ideal roofline (1, 1, 0) and are fitted to measured latency tables when there are any
(:func:`layerbudget.profiles.latency.calibrate`).

GPU numbers are the vendors' datasheet peaks for dense fp16 tensor-core math with fp32 accumulate
(no 2:4 sparsity bonus) and HBM/GDDR bandwidth; they are specifications, not measurements.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from layerbudget.errors import LayerbudgetError


@dataclass(frozen=True)
class Hardware:
    """What a roofline latency model needs to know about one device."""

    name: str
    bandwidth_gbs: float  # memory bandwidth, GB/s (1e9 bytes per second)
    tflops: float  # dense matmul throughput in the activation dtype, 1e12 FLOP/s
    act_bytes: int = 2  # bytes per activation/dense-weight element (fp16 on GPUs)
    source: str = "datasheet"
    bw_efficiency: float = 1.0  # fraction of bandwidth a memory-bound kernel reaches
    flop_efficiency: float = 1.0  # fraction of peak a compute-bound kernel reaches
    overhead_us: float = 0.0  # fixed cost per kernel launch

    def calibrated(self, bw_efficiency: float, flop_efficiency: float, overhead_us: float, source: str) -> Hardware:
        return dataclasses.replace(
            self, bw_efficiency=bw_efficiency, flop_efficiency=flop_efficiency, overhead_us=overhead_us, source=source
        )


GPUS: dict[str, Hardware] = {
    h.name: h
    for h in (
        Hardware("h100", bandwidth_gbs=3350.0, tflops=989.4),  # H100 SXM5 80 GB, HBM3
        Hardware("h200", bandwidth_gbs=4800.0, tflops=989.4),  # H200 SXM 141 GB, HBM3e
        Hardware("a100", bandwidth_gbs=2039.0, tflops=312.0),  # A100 SXM4 80 GB, HBM2e
        Hardware("l40s", bandwidth_gbs=864.0, tflops=362.05),  # L40S 48 GB, GDDR6
        Hardware("rtx4090", bandwidth_gbs=1008.0, tflops=165.2),  # GeForce RTX 4090 24 GB, GDDR6X
    )
}
CPU = "cpu"


def known_targets() -> list[str]:
    """Latency targets: ``cpu`` (measured on this machine) and every GPU with a datasheet entry."""
    return [CPU, *GPUS]


def gpu(name: str) -> Hardware:
    try:
        return GPUS[name]
    except KeyError:
        raise LayerbudgetError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}") from None


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def measure_cpu(*, copy_mib: int = 256, matmul: int = 1024, repeats: int = 5) -> Hardware:
    """This machine's CPU at the current torch thread count: copy bandwidth and fp32 matmul rate.

    Bandwidth counts read + write bytes of a ``copy_mib`` MiB tensor copy; throughput is a square
    fp32 matmul of size ``matmul`` (2·n³ FLOPs). Both are medians of ``repeats`` runs.
    """
    src = torch.empty(copy_mib << 20, dtype=torch.uint8)
    src.fill_(1)
    dst = torch.empty_like(src)
    sec = _median_seconds(lambda: dst.copy_(src), repeats)
    bandwidth = 2 * src.numel() / sec / 1e9
    a = torch.randn(matmul, matmul)
    b = torch.randn(matmul, matmul)
    sec = _median_seconds(lambda: a @ b, repeats)
    tflops = 2 * matmul**3 / sec / 1e12
    return Hardware(CPU, bandwidth_gbs=bandwidth, tflops=tflops, act_bytes=4, source=f"measured, {torch.get_num_threads()} threads")
