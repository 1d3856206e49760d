"""Benchmark of the exact solvers on large synthetic problems: DP (one constraint) and ILP (two).

Problems have ``units`` unit slots of varied shapes, each with ``options`` options (dense plus
quantization levels and 2:4 variants, so costs differ per unit) and a convex-ish random proxy.
Times are medians over ``--repeats`` solves, each checked against the budget; the DP and the ILP
must agree on the one-constraint problem (same proxy optimum)::

    python benchmarks/bench_solvers.py [--units 1000] [--options 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from layerbudget.problem import Budget
from layerbudget.search.dp import solve_dp
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.testing import LEVELS, synthetic_problem


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
