"""Fit the dispatch thresholds of ``kernels/configs.py`` to measured crossovers in kernel bench CSVs.

Usage: ``python benchmarks/fit_dispatch.py BENCH.csv [BENCH.csv ...]`` (CSVs written by
``python -m layerbudget.kernels.bench``, e.g. by ``benchmarks/gpu_check.sh check``).

Per kernel format (``lowbit``: every ``w*`` format; ``sparse24``; ``sparse24_quant``), and within
a format per code width where it was measured with more than one, and per measured M, each row (a
shape and format) votes for its fastest path among the decode kernel
(``ms_gemv``), the tensor-core kernel (``ms_tc``) and dequantize + cuBLAS (``ms_dequant``); a row
whose fused paths were wrong (``max_rel_err`` of ``WRONG_REL_ERR`` or more; older benches timed
wrong launches too, the current one leaves their times out) votes for the dequantize path. The crossovers bound each threshold to an interval of M: ``GEMV_MAX_M``
from the largest M up to which the decode kernel wins a majority at every measured M to just
below the next measured M; ``DEQUANT_MIN_M`` from just above the last measured M the dequantize
path loses to the first from which it wins at every measured M (unbounded above when it never
does). The fitted value is the one in ``configs.py`` when it lies in its interval, else the
interval's nearest end (twice the largest measured M for an open one). The report gives the votes,
the intervals, and the time each rule costs against the fastest path summed over the rows
(``rule/best``). A code width keeps its format's fitted values where they lie in its own intervals;
the tables printed last hold each format's fit and a ``"format/bits"`` entry (the keys of
``configs.py``) where a width's fit differs from its format's. Exit status 2 on
an unreadable CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter, defaultdict

from layerbudget.kernels.bench import FORMATS, WRONG_REL_ERR, kernel_format
from layerbudget.kernels.configs import DISPATCH_PATHS, dequant_min_m, gemv_max_m, threshold_key
from layerbudget.kernels.configs import FORMATS as KERNEL_FORMATS

REQUIRED = ("m", "format", "n", "k", *(f"ms_{p}" for p in DISPATCH_PATHS))


def _time(value: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return math.nan
    return t if t > 0 else math.nan


def read_rows(paths: list[str]) -> list[dict]:
    """Rows of the bench CSVs with a kernel format and at least one path timed (and right)."""
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} is not a kernel bench CSV: it has no column(s) {missing}.")
            for r in reader:
                fmt = kernel_format(r["format"]) if r["format"] in FORMATS else None
                times = {p: _time(r[f"ms_{p}"]) for p in DISPATCH_PATHS}
                if _time(r.get("max_rel_err")) >= WRONG_REL_ERR:  # a fused path was wrong: only the dequantize path counts
                    times["gemv"] = times["tc"] = math.nan
                if fmt is not None and any(not math.isnan(t) for t in times.values()):
                    rows.append({"fmt": fmt, "bits": FORMATS[r["format"]].bits, "m": int(r["m"]),
                                 "shape": (int(r["n"]), int(r["k"])), "name": r["format"], "times": times})
    return rows


def fastest(times: dict[str, float]) -> str:
    return min((t, p) for p, t in times.items() if not math.isnan(t))[1]


def rule_path(m: int, gemv_max: int, dequant_min: int) -> str:
    """The path of ``m`` rows under the thresholds, in the order of ``configs.dispatch_path``."""
    return "dequant" if m >= dequant_min else "gemv" if m <= gemv_max else "tc"


def _within(value: int, lo: int, hi: float) -> int:
    return value if lo <= value <= hi else lo if value < lo else int(hi)


def fit(rows: list[dict], now: tuple[int, int]) -> tuple[int, int, dict[str, tuple[int, float]], dict[int, Counter]]:
    """``(GEMV_MAX_M, DEQUANT_MIN_M, their intervals, votes per M)`` for the rows of one kernel format; ``now``:
    the thresholds in use, kept where the measurements allow them."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for r in rows:
        votes[r["m"]][fastest(r["times"])] += 1
    ms = sorted(votes)
    majority = {m: votes[m].most_common(1)[0][0] for m in ms}
    won = 0  # the decode kernel wins at every measured M up to here
    for m in ms:
        if majority[m] != "gemv":
            break
        won = m
    later = [m for m in ms if m > won]
    gemv_span = (won, later[0] - 1 if later else math.inf)
    first = None  # the dequantize path wins at every measured M from here
    for i, m in enumerate(later):
        if all(majority[a] == "dequant" for a in later[i:]):
            first = m
            break
    lost = [m for m in later if first is None or m < first]
    low = (lost[-1] + 1) if lost else won + 1
    dequant_span = (low, first if first is not None else math.inf)
    gemv_max = _within(now[0], gemv_span[0], gemv_span[1] if gemv_span[1] < math.inf else max(now[0], won))
    dequant_min = _within(now[1], dequant_span[0], dequant_span[1] if first is not None else math.inf)
    if first is None and dequant_min < low:
        dequant_min = 2 * ms[-1]
    return gemv_max, dequant_min, {"GEMV_MAX_M": gemv_span, "DEQUANT_MIN_M": dequant_span}, dict(votes)


def cost(rows: list[dict], thresholds: dict) -> str:
    """Summed time of the paths the rule picks over the summed fastest times, on the rows where the picked path
    was timed and right (how many, when not all); ``thresholds``: ``(GEMV_MAX_M, DEQUANT_MIN_M)`` per code width
    of the rows (``None``: the format's)."""
    def picked(r: dict) -> str:
        return rule_path(r["m"], *thresholds.get(r["bits"], thresholds[None]))

    kept = [r for r in rows if not math.isnan(r["times"][picked(r)])]
    if not kept:
        return "n/a (the rule's paths were never timed)"
    total = sum(r["times"][picked(r)] for r in kept)
    best = sum(r["times"][fastest(r["times"])] for r in kept)
    note = "" if len(kept) == len(rows) else f" on the {len(kept)} of {len(rows)} rows where its path was timed and right"
    return f"{total / best:.3f}{note}"


def report(label: str, rows: list[dict], now: tuple[int, int], prefer: tuple[int, int] | None = None,
           indent: str = "") -> tuple[int, int]:
    """Print the votes, intervals and costs of one format (or one code width of it) and return the fit, which keeps
    ``prefer`` (default: ``now``, the thresholds in use) where the measurements allow."""
    gemv_max, dequant_min, spans, votes = fit(rows, prefer or now)
    shown = "; ".join(f"M={m}: " + ", ".join(f"{p} {n}" for p, n in votes[m].most_common()) for m in sorted(votes))
    bounds = ", ".join(f"{name} in [{lo}, {hi}]" for name, (lo, hi) in spans.items())
    print(f"{indent}{label} ({len(rows)} rows) fastest path by M: {shown}")
    print(f"{indent}  measured: {bounds}")
    print(f"{indent}  fitted GEMV_MAX_M={gemv_max} DEQUANT_MIN_M={dequant_min}: rule/best "
          f"{cost(rows, {None: (gemv_max, dequant_min)})}; configs.py now {now[0]}, {now[1]}: rule/best "
          f"{cost(rows, {None: now})}")
    return gemv_max, dequant_min


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="kernel bench CSV files")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.inputs)
    except (OSError, ValueError) as err:
        print(f"fit_dispatch: {err}", file=sys.stderr)
        return 2
    fitted_gemv, fitted_dequant = {}, {}
    for fmt in KERNEL_FORMATS:
        mine = [r for r in rows if r["fmt"] == fmt]
        if not mine:
            print(f"{fmt}: no rows")
            continue
        widths = sorted({r["bits"] for r in mine if r["bits"] is not None})
        only = widths[0] if len(widths) == 1 else None  # the thresholds in use: that width's where only one was measured
        fitted = {None: report(fmt, mine, (gemv_max_m(fmt, only), dequant_min_m(fmt, only)))}
        fitted_gemv[fmt], fitted_dequant[fmt] = fitted[None]
        if len(widths) < 2:
            continue
        now = {None: (gemv_max_m(fmt), dequant_min_m(fmt))}
        for bits in widths:  # a width keeps its format's fit unless its own crossovers rule that out
            key = threshold_key(fmt, bits)
            now[bits] = (gemv_max_m(fmt, bits), dequant_min_m(fmt, bits))
            fitted[bits] = report(key, [r for r in mine if r["bits"] == bits], now[bits], fitted[None], "  ")
            for table, own, common in zip((fitted_gemv, fitted_dequant), fitted[bits], fitted[None]):
                if own != common:
                    table[key] = own
        print(f"  {fmt} with a rule per code width: rule/best {cost(mine, fitted)}; configs.py now: rule/best "
              f"{cost(mine, now)}")
    print(f"GEMV_MAX_M = {fitted_gemv}\nDEQUANT_MIN_M = {fitted_dequant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
