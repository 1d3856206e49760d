"""Problem costs, budget feasibility, and the ILP/uniform searchers on synthetic problems."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import INACTIVE, KEEP, Budget, Constraint, Problem, Slot
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.registry import make_searcher

QUANT = ("dense", "rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "rtn-b8-g128")


def make_problem(n_slots=6, seed=0, drop=False, shape=(64, 128)):
    rng = np.random.default_rng(seed)
    slots, proxy = [], {}
    for i in range(n_slots):
        sub = f"b{i // 2}.sub" if drop else None
        if drop and i % 2 == 0:
            units = ((f"u{i}", shape), (f"u{i + 1}", shape))
            slots.append(Slot(sub, (KEEP, "drop"), units, i // 2, is_subblock=True))
            proxy[(sub, "drop")] = float(rng.uniform(1, 3))
        slots.append(Slot(f"s{i}", QUANT, ((f"u{i}", shape),), i // 2, subblock=sub))
        # sensitivity falls with bits, scaled per slot
        scale = rng.uniform(0.1, 1.0)
        for o, base in zip(QUANT[1:], (1.0, 0.4, 0.1, 0.01)):
            proxy[(f"s{i}", o)] = scale * base * rng.uniform(0.8, 1.2)
    return Problem(slots, other_numel=1000, proxy=proxy)


def brute_force(problem, budget):
    best, best_score = None, np.inf
    for cand in itertools.product(*[range(len(s.options)) for s in problem.slots]):
        c = problem.canonical(cand)
        if problem.satisfies(c, budget) and problem.proxy_score(c) < best_score:
            best, best_score = c, problem.proxy_score(c)
    return best, best_score


def test_costs_are_exact_integers_with_metadata():
    p = make_problem(n_slots=1)
    i = p.slots[0].options.index("rtn-b4-g128")
    # 64x128 weight: 4 bits per value + (fp16 scale + fp16 zero) per group of 128
    assert p.coef["avg_bits"][0][i] == 64 * 128 * 4 + 64 * 1 * 32
    assert p.coef["bytes"][0][i] == (64 * 128 * 4 + 64 * 32) // 8
    cand = p.uniform("rtn-b4-g128")
    assert p.metric(cand, "avg_bits") == pytest.approx(4.25)
    assert p.metric(cand, "bytes") == (64 * 128 * 4 + 64 * 32) / 8 + 2 * 1000


@pytest.mark.parametrize("bits", [2.5, 3.0, 3.5, 4.5, 8.0])
def test_ilp_matches_brute_force(bits):
    p = make_problem(n_slots=5, seed=1)
    budget = Budget.from_dict({"avg_bits": bits})
    sol = solve_ilp(p, budget)
    _, best = brute_force(p, budget)
    assert p.satisfies(sol, budget)
    assert p.proxy_score(sol) == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_ilp_with_drop_and_two_constraints_matches_brute_force():
    p = make_problem(n_slots=4, seed=2, drop=True)
    budget = Budget.from_dict({"avg_bits": 3.0, "dropped": 1})
    sol = solve_ilp(p, budget)
    _, best = brute_force(p, budget)
    assert p.metric(sol, "dropped") >= 1
    assert p.proxy_score(sol) == pytest.approx(best, rel=1e-6)
    units, dropped = p.assignment(sol)
    assert len(dropped) >= 1
    for sub in dropped:
        kids = [s for s in p.slots if s.subblock == sub and not s.is_subblock]
        assert all(units[u] == "drop" for s in kids for u, _ in s.units)
        assert all(sol[p.index[s.name]] == INACTIVE for s in kids)


def test_infeasible_budget_names_the_achievable_range():
    p = make_problem()
    with pytest.raises(LayerbudgetError, match=r"ranges from 2\.5 to 16"):
        solve_ilp(p, Budget.from_dict({"avg_bits": 1.0}))
    with pytest.raises(LayerbudgetError, match="infeasible"):
        make_searcher("uniform", p, Budget.from_dict({"avg_bits": 2.0}))


def test_contradictory_constraints_are_reported():
    opts = (*QUANT, "magnitude-0.5")
    slots = [Slot(f"s{i}", opts, ((f"u{i}", (64, 128)),), i) for i in range(3)]
    p = Problem(slots, proxy={(s.name, o): 1.0 for s in slots for o in opts})
    # each constraint alone is feasible; sparsity 0.5 needs 9-bit sparse weights everywhere, and
    # within 4 bits no weight is sparse: each metric's range given the other says so
    p.check_budget(Budget.from_dict({"sparsity": 0.5}))
    p.check_budget(Budget.from_dict({"avg_bits": 4.0}))
    with pytest.raises(
        LayerbudgetError,
        match=r"infeasible.*avg_bits ranges from 9 to 9 where sparsity>=0\.5; sparsity ranges from 0 to 0 where avg_bits<=4",
    ):
        solve_ilp(p, Budget.from_dict({"avg_bits": 4.0, "sparsity": 0.5}))


def test_uniform_picks_best_fitting_option():
    p = make_problem(n_slots=3)
    budget = Budget.from_dict({"avg_bits": 3.6})
    fitness = {o: f for o, f in zip(QUANT, (0.0, 5.0, 2.0, 1.0, 0.5))}

    class Scorer:
        def score(self, cand, windows=None, batch=0):
            return fitness[p.slots[0].options[cand[0]]]

    out = run_search(make_searcher("uniform", p, budget), InlineExecutor(Scorer()))
    # 3-bit g64 costs 3.5 bits and fits; 4-bit g128 (4.25) does not
    assert p.slots[0].options[out.result[0]] == "rtn-b3-g64"
    assert len(out.evaluations) == 2  # b2-g64 and b3-g64 fit


def test_budget_validation():
    with pytest.raises(LayerbudgetError, match="unknown budget metric 'bitz'"):
        Budget.from_dict({"bitz": 3})
    with pytest.raises(LayerbudgetError, match="finite number"):
        Constraint("avg_bits", float("nan"))
    with pytest.raises(LayerbudgetError, match="at least one constraint"):
        Budget.from_dict({})
    with pytest.raises(LayerbudgetError, match="fraction"):
        Constraint("sparsity", 1.5)


def test_slot_and_candidate_validation():
    with pytest.raises(LayerbudgetError, match="empty option set"):
        Slot("x", (), (("u", (4, 4)),), 0)
    p = make_problem(n_slots=2)
    with pytest.raises(LayerbudgetError, match="entries"):
        p.canonical((0,))
    with pytest.raises(LayerbudgetError, match="out of range"):
        p.canonical((0, 99))
    with pytest.raises(LayerbudgetError, match="no score"):
        Problem(p.slots, proxy={})


def test_assignment_round_trip_and_tie_check():
    p = make_problem(n_slots=4, drop=True)
    cand = p.canonical([1, 0, 2, 1, 0, 3, 4][: len(p.slots)] + [0] * (len(p.slots) - 7))
    units, dropped = p.assignment(cand)
    assert p.from_assignment(units, dropped) == cand
    tied = Problem([Slot("g", QUANT, (("a", (8, 128)), ("b", (8, 128))), 0)], proxy={("g", o): 0.0 for o in QUANT})
    with pytest.raises(LayerbudgetError, match="share one option"):
        tied.from_assignment({"a": "dense", "b": "rtn-b4-g128"})
    # malformed candidates are refused, not cut or read from the end of an option list
    cand = p.canonical([0, 1, 2, 0, 3, 1])  # both sub-blocks kept
    sub = next(i for i, s in enumerate(p.slots) if s.is_subblock)
    unit = next(i for i, s in enumerate(p.slots) if not s.is_subblock)
    assert p.from_assignment(*p.assignment(cand)) == cand
    for bad, what in (
        ((*cand, 0), "entries"),
        (cand[:-1], "entries"),
        (cand[:sub] + (-1,) + cand[sub + 1 :], "out of range"),
        (cand[:unit] + (-1,) + cand[unit + 1 :], "out of range"),
    ):
        with pytest.raises(LayerbudgetError, match=what):
            p.assignment(bad)


def test_unknown_searcher_and_params():
    p = make_problem()
    b = Budget.from_dict({"avg_bits": 4})
    with pytest.raises(LayerbudgetError, match=r"unknown searcher 'nope'; known: .*ilp.*uniform"):
        make_searcher("nope", p, b)
    for name in ("uniform", "ilp"):
        with pytest.raises(LayerbudgetError, match=rf"unknown parameter\(s\) {name}.bogus; known: "):
            make_searcher(name, p, b, bogus=1)
