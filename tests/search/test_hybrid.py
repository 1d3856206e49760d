"""The hybrid searcher: solver seeds at neighbouring budgets, evolution from the best, never worse."""

from __future__ import annotations

import copy
import math

import pytest
from test_problem_ilp import make_problem

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import Budget
from layerbudget.search.hybrid import (
    DEFAULT_VALIDATION_WINDOWS,
    VALIDATION_BATCH,
    scaled_budget,
    solver_seeds,
    uniform_seeds,
)
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.registry import make_searcher

EVO = {"generations": 6, "offspring": 8, "stages": [(3, 1), (1, 2)]}


class Interacting:
    """Fitness = proxy plus a pairwise penalty the additive proxy cannot see."""

    def __init__(self, problem):
        self.p = problem

    def score(self, cand, windows=None, batch=0):
        low = sum(1 for s, c in zip(self.p.slots, cand) if c >= 0 and s.options[c] == "rtn-b2-g64")
        return self.p.proxy_score(cand) + 0.3 * low * (low - 1)


def test_seeds_are_feasible_distinct_and_include_the_ilp_plan():
    p = make_problem(n_slots=8, seed=4)
    b = Budget.from_dict({"avg_bits": 3.5})
    seeds = solver_seeds(p, b, (0.97, 0.94, 1.03), "ilp")
    assert seeds[0] == solve_ilp(p, b)
    assert len(set(seeds)) == len(seeds) >= 2
    assert all(p.satisfies(c, b) for c in seeds)
    assert scaled_budget(Budget.from_dict({"avg_bits": 4.0, "sparsity": 0.5}), 0.5).to_dict() == {
        "avg_bits": 2.0,
        "sparsity": 0.999,
    }


@pytest.mark.parametrize("seed", range(3))
def test_hybrid_is_never_worse_than_the_ilp_plan(seed):
    p = make_problem(n_slots=10, seed=seed)
    b = Budget.from_dict({"avg_bits": 3.2})
    scorer = Interacting(p)
    ilp = solve_ilp(p, b)
    out = run_search(make_searcher("hybrid", p, b, seed=seed, **EVO), InlineExecutor(scorer))
    assert p.satisfies(out.result, b)
    assert scorer.score(out.result) <= scorer.score(ilp) + 1e-12
    assert all(p.satisfies(e.candidate, b) for e in out.evaluations)


def test_hybrid_parameter_errors():
    p = make_problem()
    b = Budget.from_dict({"avg_bits": 4})
    with pytest.raises(LayerbudgetError, match="sets the evolution's start"):
        make_searcher("hybrid", p, b, init="random")
    with pytest.raises(LayerbudgetError, match="hybrid.solver must be one of 'ilp', 'dp', but got 'cplex'"):
        make_searcher("hybrid", p, b, solver="cplex")
    with pytest.raises(LayerbudgetError, match="positive budget factors"):
        make_searcher("hybrid", p, b, neighbours=[0.9, -1])
    with pytest.raises(LayerbudgetError, match="hybrid.preset must be one of 'auto'"):
        make_searcher("hybrid", p, b, preset="fast")  # the evolution's parameters are named as the user wrote them
    with pytest.raises(LayerbudgetError, match=r"unknown parameter\(s\) hybrid.generatoins; known: neighbours, .*generations"):
        make_searcher("hybrid", p, b, generatoins=3)


def test_uniform_seeds_fit_and_spend_the_slack():
    p = make_problem(n_slots=8, seed=2)
    b = Budget.from_dict({"avg_bits": 3.6})
    seeds = uniform_seeds(p, b)
    assert seeds and all(p.satisfies(c, b) for c in seeds)
    for o in ("rtn-b2-g64", "rtn-b3-g64"):  # both fit; the filled plans are no worse on the proxy
        assert min(p.proxy_score(c) for c in seeds) <= p.proxy_score(p.uniform(o))


@pytest.mark.parametrize("seed", range(2))
def test_a_cap_covers_seeds_and_evolution(seed):
    p = make_problem(n_slots=10, seed=seed)
    b = Budget.from_dict({"avg_bits": 3.2})
    scorer = Interacting(p)
    h = make_searcher("hybrid", p, b, seed=seed, max_evaluations=80)
    assert set(uniform_seeds(p, b)) <= set(h.seeds)  # uniform plans join the solver plans
    assert make_searcher("hybrid", p, b, uniform=False).seeds == h.seeds[: h.n_solver_seeds]
    out = run_search(h, InlineExecutor(scorer))
    asked = [e.request for e in out.evaluations]
    n = len(h.validation)  # the finalists within the tolerance, compared last on the validation batch
    assert n == 0 or 2 <= n <= h.validate
    assert len(asked) <= 80
    assert all(r.windows == DEFAULT_VALIDATION_WINDOWS and r.batch == VALIDATION_BATCH for r in asked[len(asked) - n :])
    asked = asked[: len(asked) - n]
    assert all(r.windows is None for r in asked)  # the cap alone: everything else on the standard windows
    assert len({r.candidate for r in asked}) == len(asked)  # seeds are never asked again
    before = [r.candidate for r in asked[: len(h.seeds) + h._rounds]]  # seeds, then corrected plans
    assert before[: len(h.seeds)] == h.seeds and h.start == min(before, key=scorer.score)
    assert scorer.score(out.result) == min(e.fitness for e in out.evaluations)  # windows do not matter here
    with pytest.raises(LayerbudgetError, match="leaves nothing for the evolution"):
        make_searcher("hybrid", p, b, max_evaluations=len(h.seeds))


class Misjudged:
    """Real fitness: the proxy with one option's scores tripled (the proxy misjudges that option)."""

    def __init__(self, problem, option="rtn-b2-g64"):
        self.p, self.option = problem, option

    def score(self, cand, windows=None, batch=0):
        return sum(
            self.p.proxy[i][c] * (3.0 if self.p.slots[i].options[c] == self.option else 1.0)
            for i, c in enumerate(cand)
            if c >= 0
        )


@pytest.mark.parametrize(("seed", "option"), [(3, "rtn-b3-g64"), (2, "rtn-b2-g64")])
def test_proxy_correction_rescales_a_misjudged_option(seed, option):
    p = make_problem(n_slots=10, seed=seed)
    b = Budget.from_dict({"avg_bits": 3.3})
    scorer = Misjudged(p, option)
    h = make_searcher("hybrid", p, b, seed=0, **EVO)
    out = run_search(h, InlineExecutor(scorer))
    corrected = out.evaluations[len(h.seeds) : len(h.seeds) + h._rounds]
    assert corrected and min(e.fitness for e in corrected) < min(scorer.score(c) for c in h.seeds)
    assert h.start == min(corrected, key=lambda e: e.fitness).candidate
    plain = make_searcher("hybrid", p, b, seed=0, corrections=0, **EVO)
    run_search(plain, InlineExecutor(scorer))
    assert plain._rounds == 0 and plain.start in plain.seeds
    with pytest.raises(LayerbudgetError, match="hybrid.corrections must be a non-negative integer"):
        make_searcher("hybrid", p, b, corrections=-1)


def test_linearise_scores_the_nearest_switches_and_the_operating_point_plan():
    from test_operating_point import LowBit, ladder_problem

    from layerbudget.search.operating_point import deviations, sensitivities

    p = ladder_problem(seed=1)
    b = Budget.from_dict({"avg_bits": 2.75})
    f = LowBit(p, strength=3.0)
    h = make_searcher("hybrid", p, b, linearise=2, corrections=0, max_evaluations=120, generations=3)
    out = run_search(h, InlineExecutor(f))
    assert len(out.evaluations) <= 120
    asked = {e.candidate for e in out.evaluations}
    moves = deviations(p, h.lin_reference, nearest=2, metric="avg_bits")
    assert len(moves) == 2 * len(p.slots) and set(moves.values()) <= asked
    view = copy.copy(p)
    view.proxy = sensitivities(p, h.lin_reference, h.scores, nearest=2, metric="avg_bits")
    plan = solve_ilp(view, b)
    assert plan in asked and f.score(out.result) <= f.score(plan)
    # each slot's switches are the two options nearest in bits to the reference's
    bits = {"rtn-b2-g128": 2.25, "rtn-b2-g64": 2.5, "rtn-b3-g128": 3.25, "rtn-b3-g64": 3.5, "rtn-b4-g128": 4.25}
    for i, sl in enumerate(p.slots):
        ref = bits[sl.options[h.lin_reference[i]]]
        gaps = sorted(abs(bits[o] - ref) for o in sl.options if bits[o] != ref)
        assert sorted(abs(bits[sl.options[j]] - ref) for (k, j) in moves if k == i) == gaps[:2]
    with pytest.raises(LayerbudgetError, match="hybrid.linearise must be a non-negative integer"):
        make_searcher("hybrid", p, b, linearise=-1)
    with pytest.raises(LayerbudgetError, match="switches of linearise=2"):
        make_searcher("hybrid", p, b, linearise=2, max_evaluations=20)


class Overfitted:
    """Interacting fitness on the standard windows; on any other windows the order is reversed (the
    standard windows flatter exactly the plans they select: a winner's curse at its worst)."""

    def __init__(self, problem):
        self.base = Interacting(problem)
        self.asked: list[tuple] = []

    def score(self, cand, windows=None, batch=0):
        self.asked.append((cand, windows, batch))
        f = self.base.score(cand)
        return f if windows is None else 100.0 - f


@pytest.mark.parametrize("seed", range(2))
def test_validation_picks_the_best_finalist_on_the_validation_batch(seed):
    p = make_problem(n_slots=10, seed=seed)
    b = Budget.from_dict({"avg_bits": 3.2})
    f = Overfitted(p)
    h = make_searcher(
        "hybrid", p, b, seed=seed, max_evaluations=80, validate=5, validation_windows=7, tolerance=math.inf
    )
    out = run_search(h, InlineExecutor(f))
    assert len(out.evaluations) <= 80
    finalists = sorted(h._ranked(), key=lambda c: (h.scores[c], c))[:5]
    last = out.evaluations[-5:]
    assert [e.candidate for e in last] == finalists  # the five best on the standard windows, best first
    assert all(e.request.windows == 7 and e.request.batch == VALIDATION_BATCH for e in last)
    assert all(w is None for _, w, _ in f.asked[:-5])  # nothing else left the standard windows
    assert out.result == finalists[-1] and h.validation[out.result] == min(h.validation.values())
    assert p.satisfies(out.result, b)
    # without validation: the best on the standard windows
    plain = run_search(
        make_searcher("hybrid", p, b, seed=seed, max_evaluations=80, validate=0), InlineExecutor(Interacting(p))
    )
    assert plain.result == finalists[0]
    # a tolerance keeps only the finalists that close to the best on the standard windows
    tight = make_searcher(
        "hybrid", p, b, seed=seed, max_evaluations=80, validate=5, validation_windows=7, tolerance=0.022
    )
    run_search(tight, InlineExecutor(Overfitted(p)))
    ranked = tight._ranked()
    near = [c for c in ranked[:5] if tight.scores[c] <= tight.scores[ranked[0]] * 1.022]
    assert 2 <= len(near) < 5 and list(tight.validation) == near
    # nothing within the tolerance: no validation requests, the best on the standard windows
    alone = make_searcher("hybrid", p, b, seed=seed, max_evaluations=80, tolerance=0.005)
    out = run_search(alone, InlineExecutor(Overfitted(p)))
    assert not alone.validation and out.result == alone.calibration_best()
    assert all(e.request.windows is None for e in out.evaluations)
    assert all(e.request.windows is None for e in plain.evaluations)


def test_validation_ignores_nan_finalists_and_checks_its_parameters():
    p = make_problem(n_slots=8, seed=1)
    b = Budget.from_dict({"avg_bits": 3.4})

    class BrokenOnValidation(Interacting):
        def score(self, cand, windows=None, batch=0):
            return float("nan") if windows is not None else super().score(cand)

    h = make_searcher("hybrid", p, b, max_evaluations=60)
    out = run_search(h, InlineExecutor(BrokenOnValidation(p)))
    assert h.validation and out.result == h.calibration_best()  # every finalist NaN: the calibration-best plan
    assert make_searcher("hybrid", p, b, validate=1).validate == 0  # one plan needs no comparison
    # the largest fresh batch a request may ask for: the validation batch or the evolution's last stage
    assert make_searcher("hybrid", p, b, **EVO).fresh_windows() == DEFAULT_VALIDATION_WINDOWS
    assert make_searcher("hybrid", p, b, validate=0, **EVO).fresh_windows() == 2
    assert make_searcher("hybrid", p, b, validate=0, max_evaluations=60).fresh_windows() == 0
    for bad in ({"validate": -1}, {"validate": 2.5}, {"validation_windows": 0}, {"validation_windows": True}):
        with pytest.raises(LayerbudgetError, match=r"hybrid\.validat\w+ must be (a non-negative|a positive|an) integer"):
            make_searcher("hybrid", p, b, **bad)
    for bad in (-0.1, math.nan, "1%"):
        with pytest.raises(LayerbudgetError, match="hybrid.tolerance must be a (non-negative )?number"):
            make_searcher("hybrid", p, b, tolerance=bad)
