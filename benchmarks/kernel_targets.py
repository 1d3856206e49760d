"""Compare kernel bench results with the kernels' speed targets (speedup over fp16 ``F.linear`` on the same GPU).

Usage: ``python benchmarks/kernel_targets.py BENCH.csv [BENCH.csv ...] [BLOCK.csv] [--sass SASS.csv]``
(CSVs written by ``python -m layerbudget.kernels.bench`` and ``benchmarks/llama_block.py``, e.g. by
``benchmarks/gpu_check.sh check``). Prints one markdown table: per format and M, the speedup at
each headline shape (8192x8192 and 8192x28672) as dispatched (``speedup_vs_fp16``) and with the
fastest path that was right (what refitted dispatch thresholds would run), the target, and whether
the worse headline shape meets it; w4g128 at M = 1 must also beat torch's int4 tinygemm. A row
whose fused paths were wrong (``max_rel_err`` of ``WRONG_REL_ERR`` or more: CSVs of older benches,
which timed wrong launches too) counts only its dequantize time, and a block plan whose outputs
were wrong has no speedup. A target with no measured row says so; nothing is inferred.

``--sass`` (a CSV of ``python -m layerbudget.kernels.aot_check --sass --csv``) adds what the targets
ask of instruction issue: a kernel that issues ``c`` instructions per weight (per kept value for 2:4)
takes at least ``c * weights / 32 / ISSUE_RATE`` (one warp instruction per scheduler and cycle), and
the table gives that floor as a share of the time the target allows (the measured fp16 time over
the target speedup); above 100 % the target is out of reach of that kernel whatever its memory
does. At M = 256 the tensor-core kernel takes each weight once per tile of activation rows
(``block_m`` of its launch), so the floor counts it that many times. The counts are those of the
launches at 8192x8192 (K does not change the loop body). fp16 times come from any CSV with ``n, k, m, format, ms_fp16`` columns (older bench CSVs too).

A SASS CSV with the launches' registers, shared memory and stages also gives what the targets ask of
memory-level parallelism: the weight bytes each SM has requested and not yet received, as the
launch keeps them (programs resident per SM, by the compiled kernel's registers and shared memory
and the launch's grid, times the bytes of one step of a program times the steps it reads ahead),
and the memory latency those bytes hide at the bandwidth the target needs (the weight's bytes over
the time the target allows): a kernel that waits longer for its loads than that cannot reach the
target, whatever it issues. No latency is assumed; the GPU's is for the GPU check to set against it.
Exit status 2 on a file that is none of these kinds.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import sys

import torch

from layerbudget.kernels.bench import FORMATS, WRONG_REL_ERR, kernel_format
from layerbudget.kernels.configs import DISPATCH_PATHS, GEMV_ROWS, KERNELS, pick_config
from layerbudget.profiles.latency import is_target_gpu

HEADLINE = ((8192, 8192), (8192, 28672))
# (format, M) -> speedup over fp16 to reach at every headline shape
TARGETS = {
    ("w4g128", 1): 3.0, ("w3g128", 1): 3.6, ("w2g64", 1): 4.5, ("2:4", 1): 1.4, ("2:4+w4g64", 1): 3.5,
    ("w4g128", 16): 2.5, ("w3g128", 16): 2.5, ("w2g64", 16): 2.5, ("2:4", 16): 1.3, ("2:4+w4g64", 16): 2.5,
    ("w4g128", 256): 0.9, ("w3g128", 256): 0.9, ("w2g64", 256): 0.9, ("2:4", 256): 0.9, ("2:4+w4g64", 256): 0.9,
}
BLOCK_TARGET = ("uniform-w4g128", 2.5)
BENCH_COLUMNS = ("n", "k", "m", "format", "ms_fp16", "ms_gemv", "ms_tc", "ms_dequant", "ms_auto", "max_rel_err")
BLOCK_COLUMNS = ("plan", "speedup_vs_fp16")
FP16_COLUMNS = ("n", "k", "m", "format", "ms_fp16")
SASS_COLUMNS = ("variant", "instructions_per_weight")
FLIGHT_COLUMNS = ("regs", "warps", "stages", "shared_bytes", "weights_per_thread")  # for the memory-in-flight table
SMS = 132
CLOCK_GHZ = 1.98
ISSUE_RATE = SMS * 4 * CLOCK_GHZ * 1e9  # warp instructions per second of an H200 (4 schedulers per SM)
# What one SM of compute capability 9.0 holds at once: registers (allocated per warp, 256 at a time), warps,
# programs, and shared memory (of which each program takes 1 KB more than it asks for)
SM_REGISTERS, SM_WARPS, SM_PROGRAMS, SM_SHARED, PROGRAM_SHARED_RESERVE = 65536, 64, 32, 233472, 1024


def _num(value: str | None) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def read(paths: list[str]) -> tuple[dict, dict, dict]:
    """``(bench rows by (format, M, (N, K)), block speedups by plan, fp16 ms by (M, (N, K)))``; a later file's
    row replaces an earlier one."""
    bench, block, fp16 = {}, {}, {}
    for path in paths:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or ())
            if cols.issuperset(FP16_COLUMNS):
                for r in reader:
                    shape = (int(r["n"]), int(r["k"]))
                    if r["format"] == "fp16":
                        fp16[(int(r["m"]), shape)] = _num(r["ms_fp16"])
                    if cols.issuperset(BENCH_COLUMNS):  # older benches: their fp16 times only
                        bench[(r["format"], int(r["m"]), shape)] = r
            elif cols.issuperset(BLOCK_COLUMNS):
                for r in reader:  # a plan whose outputs were wrong has no speedup
                    wrong = _num(r.get("max_rel_err")) >= WRONG_REL_ERR
                    block[r["plan"]] = math.nan if wrong else _num(r["speedup_vs_fp16"])
            else:
                raise ValueError(f"{path} is neither a kernel bench CSV nor a Llama-block CSV "
                                 f"(needs the columns {list(BENCH_COLUMNS)} or {list(BLOCK_COLUMNS)}).")
    return bench, block, fp16


def read_sass(path: str) -> dict[str, dict]:
    """Rows by variant name (``gemv M=1 w4g128``) from an ``aot_check --sass`` CSV."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not set(reader.fieldnames or ()).issuperset(SASS_COLUMNS):
            raise ValueError(f"{path} is not an aot_check --sass CSV (needs the columns {list(SASS_COLUMNS)}).")
        return {" ".join(r["variant"].split()): r for r in reader}


def resident_programs(regs: int, warps: int, shared: int) -> int:
    """Programs of one launch an SM holds at once, by registers per thread, warps and shared memory per program."""
    by_regs = SM_REGISTERS // (-(-regs // 8) * 8 * 32 * warps)
    return min(by_regs, SM_WARPS // warps, SM_PROGRAMS, SM_SHARED // (shared + PROGRAM_SHARED_RESERVE))


@functools.cache
def bytes_per_weight(fmt: str) -> float:
    """Stored bytes per dense weight of a bench format (codes, scales, zeros, positions), as it packs a row of 8192."""
    gen = torch.Generator().manual_seed(0)
    return FORMATS[fmt].build((torch.randn(64, 8192, generator=gen) * 0.02).half()).bits_per_weight / 8


def _variant(fmt: str, m: int, kernel: str) -> str:
    return f"{kernel} M={m} {'2:4 fp16' if fmt == '2:4' else fmt}"


def _target_launches():
    """``(format, M, target, kernel, launch per headline shape)`` for every target and each kernel the static counts
    cover (decode kernels up to 4 rows), launched as the bench launches them."""
    for (fmt, m), target in TARGETS.items():
        kind, bits, group = kernel_format(fmt), FORMATS[fmt].bits, FORMATS[fmt].group
        for kernel in KERNELS if m <= max(GEMV_ROWS) else ("tc",):
            yield fmt, m, target, kernel, [pick_config(m, n, k, kind, kernel, bits, group) for n, k in HEADLINE]


def _head() -> list[str]:
    return ["| format | M | kernel | " + " | ".join(f"{n}x{k}" for n, k in HEADLINE) + " |",
            "|---|---|---|" + "---|" * len(HEADLINE)]


def _label(kernel: str) -> str:
    return "decode" if kernel == "gemv" else "tensor-core"


def issue_shares(sass: dict[str, dict], fp16: dict) -> list[str]:
    """Markdown rows: per target and kernel, the issue floor over the time the target allows."""
    lines = _head()
    for fmt, m, target, kernel, cfgs in _target_launches():
        count = _num(sass.get(_variant(fmt, m, kernel), {}).get("instructions_per_weight"))
        cells = []
        for (n, k), cfg in zip(HEADLINE, cfgs):
            tiles = -(-m // cfg.block_m)  # each weight once per tile
            weights = tiles * n * k // (2 if fmt.startswith("2:4") else 1)
            floor_ms = count * weights / 32 / ISSUE_RATE * 1e3
            allowed_ms = fp16.get((m, (n, k)), math.nan) / target
            share = floor_ms / allowed_ms
            cells.append("—" if math.isnan(share) else f"{share:.0%} ({floor_ms * 1e3:.1f} of {allowed_ms * 1e3:.1f} µs)")
        lines.append(f"| {fmt} | {m} | {_label(kernel)} ({'—' if math.isnan(count) else f'{count:.2f}'}) | "
                     + " | ".join(cells) + " |")
    return lines


def memory_in_flight(sass: dict[str, dict], fp16: dict) -> list[str]:
    """Markdown rows: per target and kernel, the weight bytes in flight per SM and the latency they hide at the
    bandwidth the target needs (see the module docstring)."""
    lines = _head()
    for fmt, m, target, kernel, cfgs in _target_launches():
        row = sass.get(_variant(fmt, m, kernel), {})
        regs, warps, stages, shared, per_thread = (_num(row.get(c)) for c in FLIGHT_COLUMNS)
        cells = ["—"] * len(HEADLINE)
        if not any(math.isnan(v) for v in (regs, warps, stages, shared, per_thread)):
            # the low-bit decode kernel reads one step ahead; the 2:4 ones read each step as it starts; the
            # tensor-core kernels keep stages - 1 steps of loads in flight
            ahead = 1 if kernel == "gemv" else max(1, int(stages) - 1)
            step = per_thread * 32 * warps * (2 if fmt.startswith("2:4") else 1) * bytes_per_weight(fmt)
            programs = resident_programs(int(regs), int(warps), int(shared))
            for i, ((n, k), cfg) in enumerate(zip(HEADLINE, cfgs)):
                tiles = -(-m // cfg.block_m)
                grid = -(-n // cfg.block_n) * cfg.split_k * tiles
                flight = min(programs, -(-grid // SMS)) * step * ahead  # bytes per SM
                allowed_s = fp16.get((m, (n, k)), math.nan) / target * 1e-3
                need = tiles * n * k * bytes_per_weight(fmt) / allowed_s  # bytes per second the target needs
                hidden_us = flight * SMS / need * 1e6
                if not math.isnan(hidden_us):
                    cells[i] = f"{hidden_us:.2f} µs ({flight / 1024:.0f} KB per SM)"
        lines.append(f"| {fmt} | {m} | {_label(kernel)} | " + " | ".join(cells) + " |")
    return lines


def speedups(row: dict) -> tuple[float, float, float]:
    """(as dispatched, fastest right path, fastest right path over tinygemm) over fp16 for one bench row."""
    wrong = _num(row["max_rel_err"]) >= WRONG_REL_ERR
    times = [t for t in (_num(row[f"ms_{p}"]) for p in (("dequant",) if wrong else DISPATCH_PATHS)) if t > 0]
    best = min(times) if times else math.nan
    auto = _num(row["ms_auto"]) if not wrong or row.get("path_auto") == "dequant" else math.nan
    fp16 = _num(row["ms_fp16"])
    return fp16 / auto, fp16 / best, _num(row.get("ms_tinygemm")) / best


def _cell(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f}x"


def measured_on(bench: dict) -> list[str]:
    """The GPUs the bench rows name (their ``gpu`` column), and a warning when one is not the H200 the targets
    are set for (nothing when the rows name none)."""
    gpus = sorted({r["gpu"] for r in bench.values() if r.get("gpu")})
    if not gpus:
        return []
    lines = [f"Measured on {', '.join(gpus)}."]
    if not all(is_target_gpu("h200", g) for g in gpus):
        lines.append("The targets are set on an H200: rows of another GPU do not settle them (nor do the issue and "
                     f"memory tables, worked out for an H200's {SMS} SMs at {CLOCK_GHZ} GHz).")
    return lines + [""]


def report(bench: dict, block: dict) -> list[str]:
    """The markdown table of every target, and the Llama-block line."""
    shapes = " | ".join(f"{n}x{k} dispatched / best" for n, k in HEADLINE)
    lines = [f"| format | M | {shapes} | target | met (best path, every shape) |",
             "|---|---|" + "---|" * len(HEADLINE) + "---|---|"]
    for (fmt, m), target in TARGETS.items():
        cells, checks, target_text = [], [], f"≥ {target}x"
        for shape in HEADLINE:
            row = bench.get((fmt, m, shape))
            auto, best, tiny = speedups(row) if row else (math.nan,) * 3
            cells.append(f"{_cell(auto)} / {_cell(best)}")
            if not math.isnan(best):
                checks.append(best >= target)
            if fmt == "w4g128" and m == 1:  # must also beat torch's int4 tinygemm
                target_text = f"≥ {target}x and > tinygemm"
                cells[-1] += f" ({_cell(tiny)} vs tinygemm)"
                if not math.isnan(best):
                    checks[-1] = checks[-1] and tiny > 1
        met = ("not measured" if not checks else "partly measured" if len(checks) < len(HEADLINE)
               else "yes" if all(checks) else "no")
        lines.append(f"| {fmt} | {m} | {' | '.join(cells)} | {target_text} | {met} |")
    plan, target = BLOCK_TARGET
    got = block.get(plan, math.nan)
    met = "not measured" if math.isnan(got) else "yes" if got >= target else "no"
    lines.append(f"\nLlama block at M = 1, {plan}: {_cell(got)} over fp16 (target ≥ {target}x): {met}")
    forced = block.get(plan + "/tc", math.nan)  # every matmul on the tensor-core kernel, where the block bench ran it
    if not math.isnan(forced):
        lines.append(f"Llama block at M = 1, {plan} on the tensor-core kernel: {_cell(forced)} over fp16")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="bench and Llama-block CSVs")
    parser.add_argument("--sass", help="an aot_check --sass CSV: add the share of instruction issue each target needs")
    args = parser.parse_args(argv)
    try:
        bench, block, fp16 = read(args.inputs)
        sass = read_sass(args.sass) if args.sass else None
    except (OSError, ValueError, KeyError) as err:
        print(f"kernel_targets: {err}", file=sys.stderr)
        return 2
    print("\n".join(measured_on(bench) + report(bench, block)))
    if sass is not None:
        print("\nInstruction issue each target needs (static instructions per weight in brackets; floor of the "
              "kernel over the time the target allows):\n")
        print("\n".join(issue_shares(sass, fp16)))
        print("\nMemory latency each kernel hides at the bandwidth each target needs (its weight bytes in flight "
              "per SM in brackets):\n")
        print("\n".join(memory_in_flight(sass, fp16)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
