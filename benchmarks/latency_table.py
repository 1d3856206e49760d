"""Build a GPU latency table for ``profiles/data/latency/`` from ``layerbudget.kernels.bench`` CSVs.

Usage: ``python benchmarks/latency_table.py BENCH.csv [BENCH.csv ...] --out profiles/data/latency/h200-DATE.csv``.

A table named for a latency target (``<target>-<date>.csv``) takes only rows measured on that target's
GPU (their ``gpu`` column): rows of another GPU exit 2 with nothing written. Every row keeps its
measured columns, with two corrections so that the table describes what the dispatch rule of the
current kernels runs:

- a tensor-core time is kept only when the row's fused paths were right (``max_rel_err`` below
  ``WRONG_REL_ERR``) and, for CSVs written before the bench had an ``inline_ptx``
  column, the configuration had no split-K (that kernel's split-K raced: an agreeing row proves
  nothing); otherwise ``ms_tc`` is left empty, since the kernel that produced it was wrong or is gone;
- ``path_auto``/``ms_auto`` follow :mod:`layerbudget.kernels.configs` (decode kernel up to
  ``GEMV_MAX_M`` rows, tensor-core kernel below ``DEQUANT_MIN_M``, each of the row's format and code
  width, else dequantize + cuBLAS), and
  ``best_path``, the bandwidth and speedup columns are recomputed from the kept times.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from layerbudget.kernels.bench import FORMATS, WRONG_REL_ERR, kernel_format
from layerbudget.kernels.configs import DISPATCH_PATHS, dispatch_path
from layerbudget.profiles.latency import GPU_NAMES, foreign_gpus, is_target_gpu


def fix(row: dict) -> dict:
    out = dict(row)
    if row["format"] == "fp16":
        return out
    racy_split = "inline_ptx" not in row and "s1w" not in row["config_tc"]
    tc_ok = row["config_tc"] and not racy_split and float(row["max_rel_err"]) < WRONG_REL_ERR
    if not tc_ok:
        out["ms_tc"] = "nan"
    times = {p: float(out[f"ms_{p}"]) for p in DISPATCH_PATHS}
    m, fmt = int(row["m"]), kernel_format(row["format"])
    path = dispatch_path(m, fmt, FORMATS[row["format"]].bits)
    if math.isnan(times[path]):
        raise SystemExit(f"row {row['n']}x{row['k']} M={m} {row['format']}: no measured time for path {path!r}")
    ms = times[path]
    io = 2 * m * (int(row["n"]) + int(row["k"]))
    gbps = (int(row["weight_bytes"]) + io) / (ms * 1e-3) / 1e9
    out.update(path_auto=path, ms_auto=ms, best_path=min((t, p) for p, t in times.items() if not math.isnan(t))[1],
               gbps_auto=gbps, frac_copy_bw=gbps / float(row["copy_gbps"]),
               speedup_vs_fp16=float(row["ms_fp16"]) / ms, speedup_vs_tinygemm=float(row["ms_tinygemm"]) / ms)
    return out


def wrong_gpu(name: str, rows: list[dict]) -> str | None:
    """Why rows cannot go into the table named ``name``: one named for a latency target
    (``<target>-<date>.csv``, what the latency model reads) takes only rows measured on that target's GPU."""
    target = next((t for t in GPU_NAMES if name.startswith(f"{t}-")), None)
    if target is None:
        return None
    gpus = foreign_gpus(target, (row.get("gpu") or "" for row in rows))
    if not gpus:
        return None
    home = [t for t in GPU_NAMES if is_target_gpu(t, gpus[0])] if len(gpus) == 1 else []
    hint = f"; name it {home[0]}-<date>.csv" if home else ""
    return (f"{name} is the {target} table, for {GPU_NAMES[target]} rows, but rows were measured on "
            f"{gpus[0] or 'an unnamed GPU (no gpu column)'!r}{hint}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows, columns = [], {}
    for path in args.inputs:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns.update(dict.fromkeys(reader.fieldnames or ()))  # bench CSVs of several versions: every column
            rows += [fix(r) for r in reader]
    for row in rows:
        columns.update(dict.fromkeys(row))
    problem = wrong_gpu(Path(args.out).name, rows)
    if problem:
        print(f"latency_table: {problem}", file=sys.stderr)
        return 2
    tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(args.out)
    print(f"{len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
