"""Memory traffic of the kernels' launches, from their compiled PTX run on the CPU (no GPU needed).

Usage: ``python benchmarks/kernel_traffic.py [--shape 8192x8192] [--ms 1,16,256] [--formats w4g128,...]
[--arch 90] [--tune | --launch tc:m16n128k128s1w4p3,...] [--out FILE.md]``. For each format and M, each
kernel the dispatch rule can pick there (decode and tensor-core at M <= 4, tensor-core above) is
launched as :func:`layerbudget.kernels.configs.pick_config` launches it at that shape (``--tune``: in
every configuration ``kernels.bench --tune`` times; ``--launch``: in the configurations named), compiled
with inline PTX for sm_90 (``--arch 80``: for sm_80, where the tensor-core kernels use ``mma.sync``
instead of ``wgmma``), and the programs of one weight tile (every split-K slice, the first tile of
activation rows) run through :mod:`layerbudget.kernels.ptx_sim`. Per weight of that tile it prints
the bytes of 32-byte sectors read at three levels (:class:`~layerbudget.kernels.ptx_sim.Traffic`): DRAM at least (distinct sectors), L2
if L1 keeps what a program read (each program's distinct sectors), and L1 (each warp-wide load's
sectors: re-reads and partly used sectors included; the PTX's loads, some of which ``ptxas`` merges); for
the weight stream itself, the share of each sector a load uses and how many times L2 serves each of its
bytes; for the scales and zeros, their L1 and DRAM bytes. The activations count in DRAM once for the
whole launch (every tile reads the same rows), in L2 and L1 once per program. Figures are counts of the
programs' reads, not timings. Each run is also checked for data races
(:mod:`layerbudget.kernels.ptx_races`); one stops the benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the launches are recorded on CPU tensors, never run there

import torch  # noqa: E402

from layerbudget.kernels.bench import FORMATS, kernel_format, row_candidates  # noqa: E402
from layerbudget.kernels.configs import GEMV_MAX_M, LaunchConfig, pick_config  # noqa: E402
from layerbudget.kernels.ops import packed_matmul  # noqa: E402
from layerbudget.kernels.ptx_launch import compile_ptx, emulate, record  # noqa: E402

WEIGHT_BUFFERS = ("packed_ptr", "values_ptr", "meta_ptr")  # the weight stream; scales and zeros are metadata
METADATA = ("scales_ptr", "zeros_ptr")


def _kernels(m: int, fmt: str) -> list[str]:
    return ["gemv", "tc"] if m <= GEMV_MAX_M[fmt] else ["tc"]


def measure(name: str, weight, m: int, kernel: str, gen: torch.Generator, arch: int = 90,
            cfg: LaunchConfig | None = None) -> dict | None:
    """One launch of format ``name``'s packed ``weight`` at ``m`` rows (``cfg``, by default the table's): its
    traffic per weight of one tile, or ``None`` where the kernel does not take the launch."""
    spec = FORMATS[name]
    fmt = kernel_format(name)
    n, k = weight.n, weight.k
    x = torch.randn(m, k, generator=gen).half()
    cfg = cfg or pick_config(m, n, k, fmt, kernel, spec.bits, spec.group)
    try:
        _, launches = record(lambda: packed_matmul(x, weight, None, path="triton", config=cfg))
    except ValueError:
        return None
    (launch,) = launches
    launch.arch = arch
    programs = [(0, s, 0) for s in range(launch.grid[1])]
    start = time.time()
    _, traffic = emulate(launch, compile_ptx([launch])[0], programs)
    rows = min(launch.constants["BLOCK_N"], n)
    weights = rows * k
    stream = [traffic[b] for b in WEIGHT_BUFFERS if b in traffic]
    meta = [traffic[b] for b in METADATA if b in traffic]
    every = list(traffic.values())
    per = lambda ts, attr: sum(getattr(t, attr) for t in ts) / weights  # noqa: E731
    # DRAM: the tile's weight and metadata, and its share of the activations (read once for the whole launch)
    x_once = traffic["x_ptr"].unique / (n * k) if "x_ptr" in traffic else 0.0
    return {
        "format": name, "m": m, "kernel": launch.kernel.strip("_").removesuffix("_kernel"),
        "config": cfg.name, "arch": f"sm_{launch.arch}", "dram": per(stream + meta, "unique") + x_once, "l2": per(every, "per_program"),
        "l1": per(every, "sectors"), "stream_use": per(stream, "requested") / per(stream, "sectors"),
        "stream_l2": per(stream, "per_program") / per(stream, "unique"),
        "meta_l1": per(meta, "sectors") if meta else 0.0, "meta_dram": per(meta, "unique") if meta else 0.0,
        "x_l1": per([traffic["x_ptr"]], "sectors") if "x_ptr" in traffic else 0.0,
        "seconds": time.time() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8192x8192", help="NxK of the weight (default 8192x8192)")
    parser.add_argument("--ms", default="1,16,256", help="activation rows, comma-separated (default 1,16,256)")
    parser.add_argument("--formats", default="w4g128,w3g128,w2g64,w8g128,2:4,2:4+w4g64")
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90, help="CUDA architecture to build for")
    parser.add_argument("--tune", action="store_true",
                        help="every launch configuration `kernels.bench --tune` times, not only the table's")
    parser.add_argument("--launch", default="",
                        help="comma-separated configurations to run instead (as the bench CSVs name them), "
                             "e.g. a sweep's winner before it enters kernels/configs.py")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    try:
        n, k = (int(v) for v in args.shape.lower().split("x"))
        ms = [int(v) for v in args.ms.split(",")]
    except ValueError:
        parser.error(f"--shape takes NxK and --ms comma-separated integers, not {args.shape!r} / {args.ms!r}")
    try:
        launches = [LaunchConfig.from_name(v) for v in args.launch.split(",") if v.strip()]
    except ValueError as e:
        parser.error(f"--launch: {e}")
    names = args.formats.split(",")
    unknown = [f for f in names if f not in FORMATS or FORMATS[f].build is None]
    if unknown:
        parser.error(f"unknown formats {unknown}; known: {[f for f in FORMATS if FORMATS[f].build is not None]}")
    gen = torch.Generator().manual_seed(0)
    import triton

    lines = [f"Reads per weight of one weight tile at {n}x{k} (bytes; one tile: every split-K slice, the first "
             f"rows of activations; Triton {triton.__version__})", "",
             "| format | M | kernel | launch | build | DRAM ≥ | L2 | L1 | weight stream: sector use, L2 reads | "
             "scales+zeros: L1, DRAM | activations: L1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        spec, fmt = FORMATS[name], kernel_format(name)
        weight = spec.build(torch.randn(n, k, generator=gen).half() * 0.02)  # once per format
        for m in ms:
            for kernel in _kernels(m, fmt):
                if launches:
                    configs = [c for c in launches if c.kernel == kernel]
                elif args.tune:
                    configs = row_candidates(kernel, m, n, k, fmt, spec.bits, spec.group)
                else:
                    configs = [None]
                for cfg in configs:
                    r = measure(name, weight, m, kernel, gen, args.arch, cfg)
                    if r is None:
                        continue
                    lines.append(f"| {name} | {m} | {r['kernel']} | {r['config']} | {r['arch']} | {r['dram']:.3f} | "
                                 f"{r['l2']:.3f} | {r['l1']:.3f} | {r['stream_use']:.2f}, {r['stream_l2']:.2f}x | "
                                 f"{r['meta_l1']:.3f}, {r['meta_dram']:.3f} | {r['x_l1']:.3f} |")
                    print(lines[-1], f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
