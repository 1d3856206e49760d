"""Shared feasibility code: the integer limit of every budget metric agrees with the budget check."""

from __future__ import annotations

import pytest

from layerbudget.problem import KEEP, METRICS, Budget, Constraint, Problem, Slot
from layerbudget.search.dp import solve_dp
from layerbudget.search.feasible import FeasibleSpace, raw_limit
from layerbudget.search.ilp import solve_ilp

OPTIONS = ("dense", "rtn-b4-g128")


def latency_problem() -> Problem:
    """Two slots; each costs 6 µs dense and 4 µs at 4 bits; compressing s1 costs more proxy."""
    slots = [Slot(f"s{i}", OPTIONS, ((f"s{i}", (64, 128)),), i) for i in range(2)]
    p = Problem(slots, other_numel=1000, proxy={("s0", "rtn-b4-g128"): 1.0, ("s1", "rtn-b4-g128"): 2.0})
    p.set_latency({(s.name, o): (6000 if o == "dense" else 4000) for s in slots for o in OPTIONS})
    return p


def test_a_latency_budget_keeps_every_nanosecond():
    """``latency_us <= 10`` allows 10 000 ns: the plan at exactly 10 µs fits for every solver."""
    p = latency_problem()
    budget = Budget.from_dict({"latency_us": 10})
    assert raw_limit(p, budget.constraints[0]) == 10_000
    best = (p.slots[0].options.index("rtn-b4-g128"), 0)  # s0 compressed, s1 dense: 10 µs
    assert solve_ilp(p, budget) == best
    assert solve_dp(p, budget) == best
    space = FeasibleSpace(p, budget)
    assert space.feasible(best) and space.fill([1, 1]) == best


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_raw_limit_is_the_last_integer_the_budget_check_accepts(metric):
    slots = [Slot(f"s{i}", OPTIONS, ((f"s{i}", (64, 128)),), i, subblock=f"b{i}") for i in range(3)]
    slots += [Slot(f"b{i}", (KEEP, "drop"), ((f"s{i}", (64, 128)),), i, is_subblock=True) for i in range(3)]
    p = Problem(slots, other_numel=777)
    p.set_latency({(s.name, o): 1234 + 17 * i for i, s in enumerate(slots[:3]) for o in OPTIONS})
    lo, hi = p.metric_range(metric)
    for frac in (0.0, 0.3, 0.71, 0.99):
        c = Constraint(metric, lo + frac * (hi - lo))
        r = raw_limit(p, c)
        step = 1 if c.sense == "<=" else -1
        assert c.holds(p.metric_value(metric, r))
        assert not c.holds(p.metric_value(metric, r + step))
