"""Operating-point sensitivities: switches, deltas, the ilp/dp searchers with reference = "uniform"."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_problem_ilp import make_problem

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import INACTIVE, Budget, Problem, Slot
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.operating_point import deviations, sensitivities
from layerbudget.search.registry import make_searcher

LADDER = {"rtn-b2-g128": 1.0, "rtn-b2-g64": 0.8, "rtn-b3-g128": 0.3, "rtn-b3-g64": 0.25, "rtn-b4-g128": 0.08}


def ladder_problem(seed, n=12):
    """``n`` slots on a fine bit ladder; one-at-a-time errors fall with bits, scaled per slot."""
    rng = np.random.default_rng(seed)
    slots, proxy = [], {}
    for i in range(n):
        slots.append(Slot(f"s{i}", tuple(LADDER), ((f"u{i}", (64, 128)),), i // 2))
        scale = rng.uniform(0.05, 0.5)
        for o, v in LADDER.items():
            proxy[(f"s{i}", o)] = scale * v * rng.uniform(0.9, 1.1)
    return Problem(slots, other_numel=1000, proxy=proxy)


class LowBit:
    """The proxy plus a compounding term of the 2-bit slots' errors, which the one-at-a-time proxy
    (everything else dense) cannot see: at low budgets it undervalues keeping slots above 2 bits."""

    def __init__(self, problem, strength=1.0, nan=None):
        self.p, self.strength, self.nan = problem, strength, nan

    def score(self, cand, windows=None, batch=0):
        if self.nan is not None and self.nan(cand):
            return math.nan
        low = sum(
            float(self.p.proxy[i][c])
            for i, c in enumerate(cand)
            if c != INACTIVE and self.p.slots[i].options[c].startswith("rtn-b2")
        )
        return self.p.proxy_score(cand) + self.strength * low * low


class Additive:
    def __init__(self, problem):
        self.p = problem

    def score(self, cand, windows=None, batch=0):
        return 0.25 + self.p.proxy_score(cand)


def test_deviations_switch_one_slot_each():
    p = make_problem(n_slots=6, seed=1)
    ref = p.uniform("rtn-b3-g64")
    moves = deviations(p, ref)
    assert len(moves) == sum(len(s.options) - 1 for s in p.slots)
    for (i, j), cand in moves.items():
        assert cand[i] == j
        assert sum(a != b for a, b in zip(cand, ref)) == 1


def test_a_dropped_subblock_comes_back_with_its_units_at_their_base_option():
    p = make_problem(n_slots=4, seed=2, drop=True)
    subs = [i for i, s in enumerate(p.slots) if s.is_subblock]
    ref = list(p.uniform("rtn-b3-g64"))
    ref[subs[0]] = p.slots[subs[0]].options.index("drop")
    ref = p.canonical(ref)
    kids = [k for k, par in enumerate(p.parent) if par == subs[0]]
    assert all(ref[k] == INACTIVE for k in kids)
    moves = deviations(p, ref)
    assert not any(i in kids for i, _ in moves)  # inactive units have no switches of their own
    back = moves[subs[0], p.slots[subs[0]].options.index("keep")]
    assert [back[k] for k in kids] == [int(np.argmin(p.proxy[k])) for k in kids]
    scores = {c: LowBit(p).score(c) for c in (ref, *moves.values())}
    delta = sensitivities(p, ref, scores)
    for k in kids:  # proxy differences from the base option
        assert np.allclose(delta[k], p.proxy[k] - p.proxy[k].min())


def test_on_an_additive_fitness_the_deltas_are_the_proxy_and_the_plan_is_the_ilps():
    p = make_problem(n_slots=6, seed=3)
    b = Budget.from_dict({"avg_bits": 3.6})
    s = make_searcher("ilp", p, b, reference="uniform", rounds=2)
    out = run_search(s, InlineExecutor(Additive(p)))
    ref = s.references[0]
    delta = sensitivities(p, ref, s.scores)
    for i, row in enumerate(delta):
        assert np.allclose(row, p.proxy[i] - p.proxy[i][ref[i]])
    assert math.isclose(p.proxy_score(out.result), p.proxy_score(solve_ilp(p, b)), rel_tol=1e-9)


@pytest.mark.parametrize("name", ["ilp", "dp"])
def test_operating_point_beats_the_dense_proxy_where_errors_compound(name):
    """Over several problems and budgets the operating-point plan is never worse on the real fitness
    than the plan of the one-at-a-time proxy, and clearly better on average."""
    gains = []
    for seed in range(4):
        for bits in (2.5, 2.75, 3.0):
            p = ladder_problem(seed)
            b = Budget.from_dict({"avg_bits": bits})
            f = LowBit(p)
            dense = run_search(make_searcher(name, p, b), InlineExecutor(f)).result
            op = run_search(make_searcher(name, p, b, reference="uniform", rounds=2), InlineExecutor(f)).result
            assert p.satisfies(op, b)
            assert f.score(op) <= f.score(dense)
            gains.append(1 - f.score(op) / f.score(dense))
    assert np.mean(gains) > 0.02


def test_evaluations_counted_and_rounds_stop_at_a_fixed_point():
    p = make_problem(n_slots=6, seed=5)
    b = Budget.from_dict({"avg_bits": 3.6})
    f = LowBit(p)
    s = make_searcher("ilp", p, b, reference="uniform", rounds=1)
    out = run_search(s, InlineExecutor(f))
    fitting = [c for c in dict.fromkeys(p.uniform(o) for o in p.slots[0].options) if c and p.satisfies(c, b)]
    switches = sum(len(sl.options) - 1 for sl in p.slots)
    asked = {*fitting, s.solution, *deviations(p, s.references[0]).values(), s.solutions[0]}
    assert len(out.evaluations) == len(asked) <= len(fitting) + 1 + switches + 1
    assert out.result in (s.solution, s.solutions[0])
    s = make_searcher("ilp", p, b, reference="uniform", rounds=50)
    run_search(s, InlineExecutor(f))
    assert len(s.solutions) < 50  # a solution seen before (its own reference, or a cycle) ends the rounds
    assert s.solutions[-1] == s.references[-1] or s.solutions[-1] in s.solutions[:-1]


def test_a_nan_switch_is_avoided_and_a_nan_uniform_plan_is_not_the_reference():
    p = make_problem(n_slots=6, seed=6)
    b = Budget.from_dict({"avg_bits": 3.6})
    best_uniform = min(
        (c for c in (p.uniform(o) for o in p.slots[0].options) if c and p.satisfies(c, b)),
        key=LowBit(p).score,
    )
    broken = 2

    def nan(c):  # the best uniform plan, and every plan with slot 0 at option `broken`
        return c == best_uniform or c[0] == broken

    s = make_searcher("ilp", p, b, reference="uniform")
    out = run_search(s, InlineExecutor(LowBit(p, nan=nan)))
    assert s.references[0] != best_uniform
    assert out.result[0] != broken and math.isfinite(s.scores[out.result])


def test_no_fitting_uniform_plan_linearises_around_the_dense_proxy_solution():
    base = make_problem(n_slots=6, seed=7)
    slots = list(base.slots)
    slots[0] = Slot(slots[0].name, ("dense", "rtn-b8-g128"), slots[0].units, slots[0].block)
    proxy = {(sl.name, o): float(base.proxy[i][sl.options.index(o)]) for i, sl in enumerate(slots) for o in sl.options}
    p = Problem(slots, other_numel=1000, proxy=proxy)
    b = Budget.from_dict({"avg_bits": 3.6})  # the shared options (dense, 8-bit) never fit uniformly
    assert not any(c and p.satisfies(c, b) for c in (p.uniform(o) for o in ("dense", "rtn-b8-g128")))
    s = make_searcher("ilp", p, b, reference="uniform")
    out = run_search(s, InlineExecutor(LowBit(p)))
    assert s.references[0] == solve_ilp(p, b)
    assert p.satisfies(out.result, b)


def test_parameter_errors():
    p = make_problem(n_slots=4, seed=8)
    b = Budget.from_dict({"avg_bits": 4.0})
    with pytest.raises(LayerbudgetError, match="ilp.reference must be one of 'dense', 'uniform', 'solution', but got 'parent'"):
        make_searcher("ilp", p, b, reference="parent")
    with pytest.raises(LayerbudgetError, match="dp.rounds must be a positive integer"):
        make_searcher("dp", p, b, reference="uniform", rounds=0)


def test_checkpointed_run_resumes_to_the_same_plan(tmp_path):
    p = make_problem(n_slots=6, seed=9)
    b = Budget.from_dict({"avg_bits": 3.2})
    f = LowBit(p)
    whole = run_search(make_searcher("ilp", p, b, reference="uniform", rounds=2), InlineExecutor(f))

    class Stop(Exception):
        pass

    class Dies(InlineExecutor):
        def __init__(self, scorer, after):
            super().__init__(scorer)
            self.after = after

        def evaluate(self, requests):
            self.after -= 1
            if self.after < 0:
                raise Stop
            return super().evaluate(requests)

    path = tmp_path / "ckpt"
    with pytest.raises(Stop):
        run_search(make_searcher("ilp", p, b, reference="uniform", rounds=2), Dies(f, 2), checkpoint=path)
    resumed = run_search(make_searcher("ilp", p, b, reference="uniform", rounds=2), InlineExecutor(f), checkpoint=path)
    assert resumed.result == whole.result
    assert [e.candidate for e in resumed.evaluations] == [e.candidate for e in whole.evaluations]


def test_reference_solution_linearises_around_the_dense_proxy_solution():
    p = ladder_problem(seed=2)
    b = Budget.from_dict({"avg_bits": 3.0})
    f = LowBit(p)
    s = make_searcher("ilp", p, b, reference="solution", rounds=1)
    out = run_search(s, InlineExecutor(f))
    assert s.references == [solve_ilp(p, b)]
    # the dense-proxy solution, its switches and the operating-point solution: nothing else
    assert {e.candidate for e in out.evaluations} == {s.solution, *deviations(p, s.solution).values(), s.solutions[0]}
    assert f.score(out.result) <= f.score(s.solution)
