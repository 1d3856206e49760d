"""Benchmark of the exact solvers on large synthetic problems: DP (one constraint) and ILP (two).

Problems have ``units`` unit slots of varied shapes, each with ``options`` options (dense plus
quantization levels and 2:4 variants, so costs differ per unit) and a convex-ish random proxy.
Times are medians over ``--repeats`` solves, each checked against the budget; the DP and the ILP
must agree on the one-constraint problem (same proxy optimum)::

    python -m layerbudget.experiments.bench_solvers [--units 1000] [--options 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from layerbudget.budget import Budget
from layerbudget.profiles.options import parse_option
from layerbudget.search.dp import solve_dp
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.problem import Problem, Slot

LEVELS = [f"rtn-b{b}-g{g}" for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)] + ["magnitude-2:4", "magnitude-2:4+rtn-b4-g64"]


def synthetic_problem(units: int, options: int, seed: int = 0) -> Problem:
    """``units`` slots with ``options`` options each (``dense`` first) and a random decreasing proxy."""
    rng = np.random.default_rng(seed)
    names = ("dense", *LEVELS[: options - 1])
    shapes = [(512, 512), (1024, 512), (512, 1024), (2048, 512), (512, 2048)]
    slots, proxy = [], {}
    for i in range(units):
        shape = shapes[i % len(shapes)]
        slots.append(Slot(f"u{i}", names, ((f"u{i}", shape),), block=i // 7))
        sens = rng.lognormal(0.0, 1.0)
        for o in names[1:]:
            bits = parse_option(o).cost_bits(shape) / (shape[0] * shape[1])
            proxy[(f"u{i}", o)] = sens * 2.0 ** (-bits) * (1 + 0.1 * rng.random())
    return Problem(slots, proxy=proxy)


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--options", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not 2 <= args.options <= len(LEVELS) + 1 or args.units < 1 or args.repeats < 1:
        print(f"error: --options must be in 2..{len(LEVELS) + 1}, --units and --repeats positive", file=sys.stderr)
        return 2
    problem = synthetic_problem(args.units, args.options)
    lo, hi = problem.metric_range("avg_bits")
    one = Budget.from_dict({"avg_bits": lo + 0.35 * (hi - lo)})
    blo, bhi = problem.metric_range("bytes")
    two = Budget.from_dict({"avg_bits": lo + 0.35 * (hi - lo), "bytes": blo + 0.3 * (bhi - blo)})
    print(f"{args.units} units x {args.options} options; budgets: [{one}] and [{two}]")
    t_dp, dp = _time(lambda: solve_dp(problem, one), args.repeats)
    t_ilp1, ilp1 = _time(lambda: solve_ilp(problem, one), args.repeats)
    t_ilp2, ilp2 = _time(lambda: solve_ilp(problem, two), args.repeats)
    for cand, budget in ((dp, one), (ilp1, one), (ilp2, two)):
        assert problem.satisfies(cand, budget), "a solver returned a plan outside its budget"
    gap = abs(problem.proxy_score(dp) - problem.proxy_score(ilp1)) / max(problem.proxy_score(ilp1), 1e-12)
    print(f"{'solver':34s}{'seconds':>10s}{'proxy':>14s}")
    print(f"{'dp, one constraint':34s}{t_dp:10.3f}{problem.proxy_score(dp):14.6g}")
    print(f"{'ilp (CBC), one constraint':34s}{t_ilp1:10.3f}{problem.proxy_score(ilp1):14.6g}")
    print(f"{'ilp (CBC), two constraints':34s}{t_ilp2:10.3f}{problem.proxy_score(ilp2):14.6g}")
    print(f"dp vs ilp relative proxy gap on one constraint: {gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
