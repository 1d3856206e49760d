"""The Optuna searcher with both samplers: NSGA-II and TPE get the study's seed, ask the ILP plan and the best
fitting uniform plan first (``seed_plans``), count only new candidates against ``max_evaluations``, and
tell every trial its candidate's fitness (repaired candidates included)."""

from __future__ import annotations

import math

import optuna
import pytest
from contract_checks import Scorer, run_checked, tied_problem

from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import Budget
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.registry import make_searcher

SAMPLERS = {"nsga2": optuna.samplers.NSGAIISampler, "tpe": optuna.samplers.TPESampler}


def best_uniform(problem, budget):
    fits = [c for c in problem.fitting_uniform(budget).values()]
    return min(fits, key=problem.proxy_score)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_is_built_and_draws_from_the_seed(sampler):
    p, b = tied_problem("flat"), Budget.from_dict({"avg_bits": 4.0})

    def first(seed):
        s = make_searcher("optuna", p, b, seed=seed, sampler=sampler, seed_plans=False, batch=6)
        assert type(s.study.sampler) is SAMPLERS[sampler]
        return [r.candidate for r in s.ask()]

    assert first(5) == first(5)
    assert first(5) != first(6)


@pytest.mark.parametrize("kind", ["flat", "drop"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_ilp_and_best_uniform_plans_are_asked_first(sampler, kind):
    p, b = tied_problem(kind), Budget.from_dict({"avg_bits": 4.0})
    s = make_searcher("optuna", p, b, seed=0, sampler=sampler, batch=4)
    first = [r.candidate for r in s.ask()]
    seeds = [solve_ilp(p, b), best_uniform(p, b)]
    assert seeds[0] != seeds[1]  # both seeds show
    assert first[:2] == seeds
    # the enqueued trials carry exactly those plans (inactive slots at their first option)
    trials = s.study.get_trials(deepcopy=False)
    for trial, plan in zip(trials[:2], seeds):
        assert p.canonical([p.slots[i].options.index(trial.params[sl.name]) for i, sl in enumerate(p.slots)]) == plan


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_without_seed_plans_the_sampler_starts_alone(sampler):
    p, b = tied_problem("flat"), Budget.from_dict({"avg_bits": 4.0})
    seeded = run_search(make_searcher("optuna", p, b, seed=1, sampler=sampler, max_evaluations=12), InlineExecutor(Scorer(p)))
    alone = run_search(
        make_searcher("optuna", p, b, seed=1, sampler=sampler, max_evaluations=12, seed_plans=False),
        InlineExecutor(Scorer(p)),
    )
    plans = {solve_ilp(p, b), best_uniform(p, b)}
    assert plans <= {e.candidate for e in seeded.evaluations[:2]}
    assert not plans & {e.candidate for e in alone.evaluations[:2]}


def test_seeding_is_one_request_when_the_ilp_plan_is_the_best_uniform_plan():
    p, b = tied_problem("flat"), Budget.from_dict({"avg_bits": 16.0})  # everything fits: both are all-dense
    assert solve_ilp(p, b) == best_uniform(p, b)
    s = make_searcher("optuna", p, b, sampler="nsga2", batch=2)
    asked = [r.candidate for r in s.ask()]
    assert asked[0] == solve_ilp(p, b) and asked.count(asked[0]) == 1


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_runs_within_budget_and_cap_and_tells_every_trial(sampler):
    p, b = tied_problem("drop"), Budget.from_dict({"avg_bits": 3.8, "bytes": 62000})
    s = make_searcher("optuna", p, b, seed=2, sampler=sampler, max_evaluations=80, batch=8)
    out = run_search(s, InlineExecutor(Scorer(p)))
    assert len(out.evaluations) == 80 == len({e.candidate for e in out.evaluations})
    assert all(p.satisfies(e.candidate, b) for e in out.evaluations)
    trials = s.study.get_trials(deepcopy=False)
    assert all(t.state.is_finished() for t in trials)  # repeats and repaired draws were told too
    scored = {e.candidate: e.fitness for e in out.evaluations}
    assert min(t.value for t in trials if t.value is not None) == pytest.approx(min(scored.values()))
    assert out.result == min(scored, key=lambda c: (scored[c], c))
    if sampler == "nsga2":  # past its first population (50 trials) NSGA-II breeds a next generation
        assert max(t.system_attrs.get("NSGAIISampler:generation", 0) for t in trials) >= 1


def test_nsga2_is_deterministic_and_seed_dependent_under_the_contract():
    p, b = tied_problem("flat"), Budget.from_dict({"avg_bits": 4.0})
    a = run_checked("optuna", p, b, seed=4, sampler="nsga2", max_evaluations=40)
    again = run_checked("optuna", tied_problem("flat"), b, seed=4, sampler="nsga2", max_evaluations=40)
    other = run_checked("optuna", tied_problem("flat"), b, seed=5, sampler="nsga2", max_evaluations=40)
    assert [e.request for e in a.evaluations] == [e.request for e in again.evaluations]
    assert [e.request for e in a.evaluations] != [e.request for e in other.evaluations]
    assert math.isfinite(min(e.fitness for e in a.evaluations))
