"""The DP solver: ILP-optimal on one-constraint problems (sub-blocks included), always feasible; depth DP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import KEEP, Budget, Problem, Slot
from layerbudget.search.dp import depth_objective, solve_depth_dp, solve_dp
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.registry import make_searcher

OPTIONS = (
    "dense",
    "rtn-b2-g64",
    "rtn-b3-g64",
    "rtn-b4-g128",
    "magnitude-0.5",
    "magnitude-2:4",
    "magnitude-0.5+rtn-b4-g128",
    "magnitude-0.7+rtn-b3-g64",
)
SHAPES = ((64, 128), (32, 256), (96, 64), (48, 192))


def random_problem(seed: int, n_slots: int = 8, drop: bool = False) -> Problem:
    """Slots of mixed shapes (some tied pairs) with random option subsets; sub-blocks of 2 slots."""
    rng = np.random.default_rng(seed)
    slots, proxy = [], {}
    for i in range(n_slots):
        sub = f"b{i // 2}.sub" if drop else None
        opts = ("dense", *[o for o in OPTIONS[1:] if rng.random() < 0.7])
        units = tuple((f"u{i}.{j}", SHAPES[rng.integers(len(SHAPES))]) for j in range(1 + (i % 3 == 0)))
        if drop and i % 2 == 0:
            sub_units = units  # the sub-block holds this slot's units and, below, the next one's
            slots.append(Slot(sub, (KEEP, "drop"), (), i // 2, is_subblock=True))
            proxy[(sub, "drop")] = float(rng.uniform(0.5, 4))
        elif drop:
            k = next(j for j, s in enumerate(slots) if s.name == sub)
            slots[k] = Slot(sub, (KEEP, "drop"), sub_units + units, i // 2, is_subblock=True)
        slots.append(Slot(f"s{i}", opts, units, i // 2, subblock=sub))
        for o in opts[1:]:
            proxy[(f"s{i}", o)] = float(rng.uniform(0.01, 2.0))
    return Problem(slots, other_numel=500, proxy=proxy)


def budget_inside(problem: Problem, metric: str, rng: np.random.Generator) -> Budget:
    lo, hi = problem.metric_range(metric)
    value = lo + (hi - lo) * rng.uniform(0.05, 0.95)
    if metric == "dropped":
        value = round(value)
    return Budget.from_dict({metric: value})


@pytest.mark.parametrize("drop", [False, True], ids=["flat", "subblocks"])
@pytest.mark.parametrize("metric", ["avg_bits", "bytes", "sparsity"])
def test_dp_equals_ilp_optimum(metric, drop):
    rng = np.random.default_rng([["avg_bits", "bytes", "sparsity"].index(metric), int(drop)])
    for seed in range(3):
        p = random_problem(seed, drop=drop)
        budget = budget_inside(p, metric, rng)
        dp, ilp = solve_dp(p, budget), solve_ilp(p, budget)
        assert p.satisfies(dp, budget)
        assert p.canonical(dp) == dp
        assert p.proxy_score(dp) == pytest.approx(p.proxy_score(ilp), rel=1e-9, abs=1e-9)


def test_dp_with_dropped_budget_equals_ilp():
    p = random_problem(5, n_slots=10, drop=True)
    for k in range(6):
        budget = Budget.from_dict({"dropped": k})
        dp = solve_dp(p, budget)
        assert p.metric(dp, "dropped") >= k
        assert p.proxy_score(dp) == pytest.approx(p.proxy_score(solve_ilp(p, budget)), abs=1e-9)


@pytest.mark.parametrize("buckets", [1, 3, 17, 100])
def test_coarse_buckets_stay_feasible(buckets):
    rng = np.random.default_rng(buckets)
    for seed in range(4):
        for metric in ("avg_bits", "bytes", "sparsity"):
            p = random_problem(10 + seed, drop=seed % 2 == 1)
            budget = budget_inside(p, metric, rng)
            try:
                sol = solve_dp(p, budget, buckets=buckets)
            except LayerbudgetError as e:  # rounding up may lose every plan; then it must say so
                assert "raise `buckets`" in str(e)
                continue
            assert p.satisfies(sol, budget)
            assert p.proxy_score(sol) >= p.proxy_score(solve_ilp(p, budget)) - 1e-9


def test_loose_budget_gives_unconstrained_optimum():
    p = random_problem(3, drop=True)
    sol = solve_dp(p, Budget.from_dict({"avg_bits": 16.0}))
    assert p.proxy_score(sol) == pytest.approx(0.0)  # dense everywhere, nothing dropped


def test_dp_rejects_several_constraints_and_bad_buckets():
    p = random_problem(0)
    with pytest.raises(LayerbudgetError, match="dp handles one constraint; use ilp"):
        solve_dp(p, Budget.from_dict({"avg_bits": 4.0, "sparsity": 0.1}))
    with pytest.raises(LayerbudgetError, match="dp handles one constraint"):
        make_searcher("dp", p, Budget.from_dict({"avg_bits": 4.0, "sparsity": 0.1}))
    with pytest.raises(LayerbudgetError, match="buckets must be a positive integer, but got 0"):
        solve_dp(p, Budget.from_dict({"avg_bits": 4.0}), buckets=0)
    with pytest.raises(LayerbudgetError, match="infeasible"):
        solve_dp(p, Budget.from_dict({"avg_bits": 1.0}))


@pytest.mark.parametrize("with_pair", [False, True], ids=["additive", "pairwise"])
def test_depth_dp_equals_brute_force(with_pair):
    rng = np.random.default_rng(7)
    n = 12
    scores = rng.normal(size=n).tolist()
    pair = rng.normal(size=n - 1).tolist() if with_pair else None
    for k in range(n + 1):
        got = solve_depth_dp(scores, k, pair)
        assert len(got) == k and list(got) == sorted(set(got))
        best = min(depth_objective(scores, c, pair) for c in itertools.combinations(range(n), k))
        assert depth_objective(scores, got, pair) == pytest.approx(best, abs=1e-12)


def test_depth_dp_validation():
    with pytest.raises(LayerbudgetError, match="0 <= k <= 3, but got 4"):
        solve_depth_dp([1.0, 2.0, 3.0], 4)
    with pytest.raises(LayerbudgetError, match="pair must hold 2"):
        solve_depth_dp([1.0, 2.0, 3.0], 1, pair=[0.0])
    with pytest.raises(LayerbudgetError, match="finite"):
        solve_depth_dp([1.0, float("nan")], 1)


def test_dp_searcher_depth_pair_mode():
    rng = np.random.default_rng(3)
    slots, proxy = [], {}
    for b in range(5):
        for part in ("attn", "mlp"):
            sub = f"b{b}.{part}"
            slots.append(Slot(sub, (KEEP, "drop"), (), b, is_subblock=True))
            slots.append(Slot(f"{sub}.w", ("dense",), ((f"{sub}.u", (32, 64)),), b, subblock=sub))
            proxy[(sub, "drop")] = float(rng.uniform(0, 1))
    p = Problem(slots, proxy=proxy)
    n = 10
    pair = rng.normal(scale=0.5, size=n - 1).tolist()
    budget = Budget.from_dict({"dropped": 3})
    out = run_search(make_searcher("dp", p, budget, pair=pair), InlineExecutor(_ZeroScorer()))
    scores = [proxy[(s.name, "drop")] for s in slots if s.is_subblock]
    dropped = tuple(j for j, s in enumerate(s for s in slots if s.is_subblock) if out.result[p.index[s.name]] == 1)
    best = min(depth_objective(scores, c, pair) for k in range(3, n + 1) for c in itertools.combinations(range(n), k))
    assert len(dropped) >= 3
    assert depth_objective(scores, dropped, pair) == pytest.approx(best)
    with pytest.raises(LayerbudgetError, match="needs a depth-only problem"):
        make_searcher("dp", random_problem(0), Budget.from_dict({"avg_bits": 4.0}), pair=[0.0])


class _ZeroScorer:
    def score(self, candidate, windows=None, batch=0):
        return 0.0


def test_bucketed_dp_stays_in_budget_and_close_to_the_ilp():
    """Coarse buckets (not exact): rounding to the nearest bucket, repair and polish with exact costs."""
    from layerbudget.search.ilp import solve_ilp
    from layerbudget.search.testing import synthetic_problem

    problem = synthetic_problem(120, 12, seed=3)
    lo, hi = problem.metric_range("avg_bits")
    for frac in (0.1, 0.35, 0.8):
        budget = Budget.from_dict({"avg_bits": lo + frac * (hi - lo)})
        coarse = solve_dp(problem, budget, buckets=300)
        fine = solve_dp(problem, budget)
        best = problem.proxy_score(solve_ilp(problem, budget))
        for cand in (coarse, fine):
            assert problem.satisfies(cand, budget)
            assert problem.proxy_score(cand) >= best - 1e-9
        assert problem.proxy_score(coarse) <= best * 1.05
        assert problem.proxy_score(fine) <= best * 1.01
