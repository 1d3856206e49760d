"""Delta surrogate: proxy prior, learning real change costs, and prescreened evolution."""

from __future__ import annotations

import numpy as np
import pytest
from test_operating_point import LowBit, ladder_problem

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import INACTIVE, Budget
from layerbudget.search.registry import make_searcher
from layerbudget.search.surrogate import DeltaSurrogate


def random_pair(problem, rng):
    """A random plan and a copy with 1-3 slots switched to other options."""
    ref = tuple(int(rng.integers(len(s.options))) for s in problem.slots)
    cand = list(ref)
    for i in rng.choice(len(cand), size=int(rng.integers(1, 4)), replace=False):
        cand[i] = int(
            (cand[i] + rng.integers(1, len(problem.slots[i].options))) % len(problem.slots[i].options)
        )
    return tuple(cand), ref


def test_without_data_the_prediction_is_the_proxy_difference():
    problem = ladder_problem(0)
    sur = DeltaSurrogate(problem)
    rng = np.random.default_rng(1)
    pairs = [random_pair(problem, rng) for _ in range(20)]
    want = [problem.proxy_score(c) - problem.proxy_score(r) for c, r in pairs]
    for (c, r), w in zip(pairs, want):
        assert sur.predict([c], r)[0] == pytest.approx(w)
    assert sur.alpha == 1.0


def test_it_learns_change_costs_the_proxy_misjudges():
    problem = ladder_problem(0)
    rng = np.random.default_rng(2)
    # the real cost of each (slot, option) is the proxy's times a factor between 0.2 and 5
    truth = [p * np.exp(rng.uniform(np.log(0.2), np.log(5), size=len(p))) for p in problem.proxy]

    def delta(c, r):
        return float(sum(truth[i][a] - truth[i][b] for i, (a, b) in enumerate(zip(c, r))))

    test = [random_pair(problem, rng) for _ in range(200)]
    want = np.array([delta(c, r) for c, r in test])
    sur = DeltaSurrogate(problem)

    def error():
        got = np.array([sur.predict([c], r)[0] for c, r in test])
        return float(np.sqrt(np.mean((got - want) ** 2)))

    before = error()
    for _ in range(400):
        c, r = random_pair(problem, rng)
        sur.observe(c, r, delta(c, r))
    after = error()
    assert sur.observations == 400
    assert after < 0.1 * before, (before, after)


def test_observations_of_nothing_or_nan_are_ignored_and_inactive_slots_have_no_column():
    problem = ladder_problem(0)
    sur = DeltaSurrogate(problem)
    ref = tuple([0] * len(problem.slots))
    sur.observe(ref, ref, 1.0)
    sur.observe((1, *ref[1:]), ref, float("nan"))
    assert sur.observations == 0
    cand = (INACTIVE, *ref[1:])
    assert sur.predict([cand], ref)[0] == pytest.approx(-problem.proxy[0][0])
    with pytest.raises(ValueError, match="ridge"):
        DeltaSurrogate(problem, ridge=0)


def _best_found(prescreen, seed, cap=120):
    problem = ladder_problem(seed, n=16)
    budget = Budget.from_dict({"avg_bits": 2.9})
    searcher = make_searcher(
        "evolution", problem, budget, seed=seed, max_evaluations=cap, prescreen=prescreen
    )
    scorer = LowBit(problem, strength=3.0)
    out = run_search(searcher, InlineExecutor(scorer))
    assert all(problem.satisfies(e.candidate, budget) for e in out.evaluations)
    return scorer.score(out.result)


def test_prescreening_finds_better_plans_at_the_same_number_of_evaluations():
    """Where 2-bit errors compound (the proxy undervalues keeping slots above 2 bits), ranking
    offspring by the learned change costs reaches lower fitness within the same cap."""
    seeds = range(8)
    plain = np.array([_best_found(1, s) for s in seeds])
    screened = np.array([_best_found(4, s) for s in seeds])
    assert screened.mean() < 0.97 * plain.mean(), (plain, screened)
    assert (screened <= plain).sum() >= 5


def test_prescreen_is_deterministic_checkpoints_and_is_checked(tmp_path):
    problem = ladder_problem(3)
    budget = Budget.from_dict({"avg_bits": 3.0})

    def run(path=None):
        searcher = make_searcher("evolution", problem, budget, seed=5, max_evaluations=60, prescreen=3)
        scorer = InlineExecutor(LowBit(problem))
        if path is None:
            return run_search(searcher, scorer).result
        return run_search(searcher, scorer, checkpoint=path).result

    first = run()
    assert run() == first
    assert run(tmp_path / "ckpt") == first
    with pytest.raises(LayerbudgetError, match="prescreen"):
        make_searcher("evolution", problem, budget, prescreen=0)
