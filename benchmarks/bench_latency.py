"""Benchmark: roofline latency model vs measured latency on this machine's CPU.

For every (shape, option, M) the CPU path that deployment runs is timed (:func:`measure_cpu_us`)
and predicted by the roofline of the same machine (copy bandwidth and fp32 matmul rate measured
in the same run), once with the raw peaks and once calibrated — the efficiencies and overhead fitted
on every *other* weight shape (leave-one-shape-out), so no prediction has seen its own timing.
Prints the mean and median absolute relative error of both and writes every row as CSV::

    python benchmarks/bench_latency.py [--out bench-latency.csv] [--ms 1 64 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import pandas as pd

from layerbudget.options import parse_option
from layerbudget.profiles.hardware import measure_cpu
from layerbudget.profiles.latency import calibrate, launches, measure_cpu_us, roofline_us

SHAPES = ((384, 384), (1536, 384), (384, 1536), (1024, 1024), (4096, 1024), (1024, 4096))
OPTIONS = ("dense", "rtn-b4-g128", "rtn-b3-g128", "rtn-b2-g64", "magnitude-2:4", "magnitude-2:4+rtn-b4-g64")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-latency.csv")
    parser.add_argument("--ms", type=int, nargs="+", default=[1, 64, 512])
    args = parser.parse_args(argv)
    if any(m < 1 for m in args.ms):
        print("error: --ms values must be positive integers", file=sys.stderr)
        return 2
    hw = measure_cpu()
    print(f"cpu: copy {hw.bandwidth_gbs:.1f} GB/s, fp32 matmul {hw.tflops * 1e3:.1f} GFLOP/s ({hw.source})")
    rows = []
    for shape in SHAPES:
        for name in OPTIONS:
            opt = parse_option(name)
            for m in args.ms:
                fmt, path, kernels = launches(opt, shape, m, hw)
                rows.append(
                    {
                        "n": shape[0], "k": shape[1], "m": m, "option": name, "path": path,
                        "measured_us": measure_cpu_us(opt, shape, m), "roofline_us": roofline_us(hw, kernels),
                        "_kernels": kernels,
                    }
                )
    for shape in SHAPES:  # leave-one-shape-out calibration
        train = [(r["_kernels"], r["measured_us"]) for r in rows if (r["n"], r["k"]) != shape]
        fit = calibrate(hw, train, "fit")
        for row in rows:
            if (row["n"], row["k"]) == shape:
                row["calibrated_us"] = roofline_us(fit, row["_kernels"])
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "_kernels"} for r in rows])
    for col in ("roofline_us", "calibrated_us"):
        df[col.replace("_us", "_err")] = (df[col] - df["measured_us"]).abs() / df["measured_us"]
    df.to_csv(args.out, index=False)
    full = calibrate(hw, [(r["_kernels"], r["measured_us"]) for r in rows], "fit")
    print(f"fit on all rows: bandwidth x{full.bw_efficiency:.2f}, compute x{full.flop_efficiency:.2f}, "
          f"overhead {full.overhead_us:.1f} us per kernel")
    print(f"{'':26s}{'mean rel err':>14s}{'median':>10s}")
    for label, col in (("roofline (raw peaks)", "roofline_err"), ("roofline (calibrated)", "calibrated_err")):
        print(f"{label:26s}{df[col].mean():14.3f}{statistics.median(df[col]):10.3f}")
    by_path = df.groupby("path")[["roofline_err", "calibrated_err"]].median()
    print("median relative error by path:\n" + by_path.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out} ({len(df)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
