"""Compare kernel bench results with the kernels' speed targets (speedup over fp16 ``F.linear`` on the same GPU).

Usage: ``python benchmarks/kernel_targets.py BENCH.csv [BENCH.csv ...] [BLOCK.csv]`` (CSVs written by
``python -m layerbudget.kernels.bench`` and ``benchmarks/llama_block.py``, e.g. by
``benchmarks/gpu_check.sh check``). Prints one markdown table: per format and M, the speedup at
each headline shape (8192x8192 and 8192x28672) as dispatched (``speedup_vs_fp16``) and with the
fastest path that agreed with the dequantize path (what refitted dispatch thresholds would run),
the target, and whether the worse headline shape meets it; w4g128 at M = 1 must also beat torch's
int4 tinygemm. A row whose fused paths were wrong (``max_rel_err`` of ``WRONG_REL_ERR`` or more:
CSVs of older benches, which timed wrong launches too) counts only its dequantize time, and a block
plan whose outputs were wrong has no speedup. A target with no measured row says so; nothing is
inferred. Exit status 2 on a file that is neither kind of CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys

from layerbudget.kernels.bench import WRONG_REL_ERR

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
PATHS = ("gemv", "tc", "dequant")


def _num(value: str | None) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def read(paths: list[str]) -> tuple[dict, dict]:
    """``(bench rows by (format, M, (N, K)), block speedups by plan)``; a later file's row replaces an earlier one."""
    bench, block = {}, {}
    for path in paths:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or ())
            if cols.issuperset(BENCH_COLUMNS):
                for r in reader:
                    bench[(r["format"], int(r["m"]), (int(r["n"]), int(r["k"])))] = r
            elif cols.issuperset(BLOCK_COLUMNS):
                for r in reader:  # a plan whose outputs were wrong has no speedup
                    wrong = _num(r.get("max_rel_err")) >= WRONG_REL_ERR
                    block[r["plan"]] = math.nan if wrong else _num(r["speedup_vs_fp16"])
            else:
                raise ValueError(f"{path} is neither a kernel bench CSV nor a Llama-block CSV "
                                 f"(needs the columns {list(BENCH_COLUMNS)} or {list(BLOCK_COLUMNS)}).")
    return bench, block


def speedups(row: dict) -> tuple[float, float, float]:
    """(as dispatched, fastest right path, fastest right path over tinygemm) over fp16 for one bench row."""
    wrong = _num(row["max_rel_err"]) >= WRONG_REL_ERR
    times = [t for t in (_num(row[f"ms_{p}"]) for p in (("dequant",) if wrong else PATHS)) if t > 0]
    best = min(times) if times else math.nan
    auto = _num(row["ms_auto"]) if not wrong or row.get("path_auto") == "dequant" else math.nan
    fp16 = _num(row["ms_fp16"])
    return fp16 / auto, fp16 / best, _num(row.get("ms_tinygemm")) / best


def _cell(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f}x"


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
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="bench and Llama-block CSVs")
    args = parser.parse_args(argv)
    try:
        bench, block = read(args.inputs)
    except (OSError, ValueError, KeyError) as err:
        print(f"kernel_targets: {err}", file=sys.stderr)
        return 2
    print("\n".join(report(bench, block)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
