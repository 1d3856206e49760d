"""Benchmark of the packed-weight matmuls against fp16 cuBLAS and the memory roofline, written to CSV.

Usage: ``python -m layerbudget.kernels.bench --out FILE.csv [--shapes 4096x4096,...] [--ms 1,16]
[--formats w4g128,2:4]``. Needs a CUDA GPU and Triton; on any other host it prints one line and
exits with status 2 instead of reporting numbers.

Timing: ``triton.testing.do_bench`` (median of repeated runs; it flushes the L2 cache between
calls, so weights that would fit in L2 are not read from cache). Each row reports, for weight
shape ``N x K`` and ``M`` activation rows:

- ``ms_triton`` (fused kernel), ``ms_dequant`` (dequantize + ``F.linear``), ``ms_fp16``
  (``F.linear`` with the dense fp16 weight) and ``ms_auto`` / ``path_auto``: what the dispatching
  wrapper runs (rule in :mod:`layerbudget.kernels.configs`); ``best_path`` is the faster of the two,
  the data from which ``DEQUANT_MIN_M`` is set;
- ``gbps_auto``: (stored weight bytes incl. metadata + x + y bytes) / ``ms_auto``, and
  ``frac_copy_bw``: that over the device-to-device copy bandwidth measured in the same run
  (``copy_gbps``, counting read + write bytes);
- ``speedup_vs_fp16`` = ``ms_fp16 / ms_auto``; ``max_rel_err``: Triton vs dequant path.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .configs import dequant_min_m
from .ops import PackedWeight, choose_path, format_of, packed_matmul, triton_available
from .quant_weight import PackedQuantWeight
from .sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24

LLAMA_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672))
BATCH_ROWS = (1, 16, 64, 256)
TIMER = "triton.testing.do_bench median, L2 flushed between calls"


@dataclass(frozen=True)
class BenchFormat:
    """One weight format of the benchmark and how to build it from a dense fp16 weight."""

    name: str
    build: Callable[[torch.Tensor], PackedWeight] | None  # None: the fp16 baseline itself


FORMATS: dict[str, BenchFormat] = {
    f.name: f
    for f in (
        BenchFormat("fp16", None),
        BenchFormat("w4g128", lambda w: PackedQuantWeight.from_dense(w, 4, 128)),
        BenchFormat("w3g128", lambda w: PackedQuantWeight.from_dense(w, 3, 128)),
        BenchFormat("w2g64", lambda w: PackedQuantWeight.from_dense(w, 2, 64)),
        BenchFormat("w8g128", lambda w: PackedQuantWeight.from_dense(w, 8, 128)),
        BenchFormat("2:4", lambda w: Sparse24Weight.from_dense(w, prune=True)),
        # 64 kept values per group = 128 dense columns
        BenchFormat("2:4+w4g64", lambda w: Sparse24QuantWeight.from_dense(magnitude_prune_24(w), 4, 64)),
    )
}

COLUMNS = (
    "gpu", "date", "torch", "triton", "timer", "copy_gbps", "n", "k", "m", "format", "bits_per_weight",
    "weight_bytes", "path_auto", "ms_fp16", "ms_triton", "ms_dequant", "ms_auto", "gbps_auto",
    "frac_copy_bw", "speedup_vs_fp16", "best_path", "max_rel_err",
)


def _bench(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second, GB/s) of a ``nbytes`` buffer."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def bench_shape(
    n: int,
    k: int,
    ms: tuple[int, ...],
    formats: list[str],
    copy_gbps: float,
    device: str = "cuda",
    timer: Callable[[Callable[[], object]], float] = _bench,
) -> list[dict]:
    """All rows for one weight shape ``[N, K]`` (``device``/``timer`` are swappable for a CPU smoke test)."""
    gen = torch.Generator(device=device).manual_seed(n * 100003 + k)
    dense = torch.randn(n, k, device=device, dtype=torch.float16, generator=gen) * 0.02
    weights = {name: FORMATS[name].build(dense) for name in formats if FORMATS[name].build is not None}
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=device, dtype=torch.float16, generator=gen)
        io_bytes = 2 * m * (k + n)
        ms_fp16 = timer(lambda: F.linear(x, dense))  # noqa: B023 - called before the loop moves on
        for name in formats:
            row = {"n": n, "k": k, "m": m, "format": name, "ms_fp16": ms_fp16}
            if name == "fp16":
                row.update(bits_per_weight=16.0, weight_bytes=2 * n * k, path_auto="cublas",
                           ms_triton=float("nan"), ms_dequant=float("nan"), ms_auto=ms_fp16,
                           best_path="cublas", max_rel_err=0.0)
            else:
                w = weights[name]
                fast = packed_matmul(x, w, path="triton")
                slow = packed_matmul(x, w, path="dequant")
                err = ((fast.float() - slow.float()).abs().max() / slow.float().abs().max().clamp(min=1e-6)).item()
                ms_triton = timer(lambda: packed_matmul(x, w, path="triton"))  # noqa: B023
                ms_dequant = timer(lambda: packed_matmul(x, w, path="dequant"))  # noqa: B023
                path = choose_path(x, format_of(w))
                row.update(bits_per_weight=w.bits_per_weight, weight_bytes=w.nbytes, path_auto=path,
                           ms_triton=ms_triton, ms_dequant=ms_dequant,
                           ms_auto=ms_triton if path == "triton" else ms_dequant,
                           best_path="triton" if ms_triton <= ms_dequant else "dequant", max_rel_err=err)
            gbps = (row["weight_bytes"] + io_bytes) / (row["ms_auto"] * 1e-3) / 1e9
            row.update(gbps_auto=gbps, frac_copy_bw=gbps / copy_gbps, speedup_vs_fp16=ms_fp16 / row["ms_auto"])
            rows.append(row)
    return rows


def _parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (s.lower().split("x") for s in text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"shapes must look like 4096x4096,8192x28672 (NxK), got {text!r}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerbudget.kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--shapes", type=_parse_shapes, default=LLAMA_SHAPES, help="NxK list, comma separated")
    parser.add_argument("--ms", default=",".join(map(str, BATCH_ROWS)), help="activation rows M, comma separated")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"subset of {','.join(FORMATS)}")
    args = parser.parse_args(argv)
    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats {unknown}; known: {list(FORMATS)}")
    if not torch.cuda.is_available() or not triton_available():
        print("bench: needs a CUDA GPU and Triton; none on this host, so no numbers are reported.", file=sys.stderr)
        return 2
    import triton

    ms = tuple(int(v) for v in args.ms.split(","))
    copy_gbps = copy_bandwidth_gbps()
    common = {
        "gpu": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton.__version__, "timer": TIMER, "copy_gbps": copy_gbps,
    }
    print(f"{common['gpu']}: copy bandwidth {copy_gbps:.0f} GB/s; dispatch thresholds "
          f"lowbit {dequant_min_m('lowbit')}, 2:4 {dequant_min_m('sparse24')}, "
          f"2:4+q {dequant_min_m('sparse24_quant')}")
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for n, k in args.shapes:
            for row in bench_shape(n, k, ms, formats, copy_gbps):
                writer.writerow({**common, **row})
                print(f"{n:>6}x{k:<6} M={row['m']:<4} {row['format']:<10} {row['path_auto']:<8} "
                      f"{row['ms_auto']:.4f} ms  {row['gbps_auto']:.0f} GB/s "
                      f"({row['frac_copy_bw']:.2f} of copy)  x{row['speedup_vs_fp16']:.2f} vs fp16")
            fh.flush()
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
