"""The contract checks fail on broken searchers: one that breaks ties in what it asks, one that runs
past its ``max_evaluations``, one that refuses an infeasible budget without the achievable range, one
that scores over-budget plans, one whose requests depend on the process's string hashing, and one
that unties the problem's tie groups. None of them is registered."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from contract_checks import (
    CASES,
    check_case,
    check_infeasible_message,
    check_opt_outs_are_justified,
    check_raises_infeasible,
    fingerprint,
    fingerprints_in_processes,
    run_checked,
    tied_problem,
)

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.problem import Budget, Candidate, EvalRequest, Evaluation, Slot
from layerbudget.search.base import ScoreOnceSearcher, Searcher
from layerbudget.search.feasible import FeasibleSpace


class UntiedSearcher(ScoreOnceSearcher):
    """Asks with one entry per unit, so q, k and v take different options (its result is valid)."""

    name = "untied"

    def __init__(self, problem, budget, *, seed=0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        self.plan = FeasibleSpace(problem, budget).greedy()
        per_unit = tuple(k % 2 for s in problem.slots for k, _ in enumerate(s.units))
        self._candidates([self.plan])
        self.per_unit = per_unit

    def ask(self):
        return [] if self._asked else [EvalRequest(self.per_unit)] + super().ask()

    def result(self) -> Candidate:
        return self.plan


@dataclass(frozen=True)
class CapParams(Record):
    max_evaluations: int = rule(10, least=1)


class GreedySearcher(Searcher):
    """Asks for one more random feasible plan than its ``max_evaluations``."""

    name = "greedy"
    Params = CapParams

    def __init__(self, problem, budget, *, seed=0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        space = FeasibleSpace(problem, budget)
        drawn = (space.random(self.rng, 0) for _ in range(200))
        self.plans = [c for c in dict.fromkeys(drawn) if c is not None][: self.params.max_evaluations + 1]
        self.best: Candidate | None = None
        self.done = False

    def ask(self) -> list[EvalRequest]:
        if self.done:
            return []
        self.done = True
        return [EvalRequest(c) for c in self.plans]

    def tell(self, evaluations: list[Evaluation]) -> None:
        self.best = min(evaluations, key=lambda e: e.fitness).candidate

    def result(self) -> Candidate:
        assert self.best is not None
        return self.best


class MuteSearcher(GreedySearcher):
    """Refuses an infeasible budget in its own path without saying what is achievable."""

    name = "mute"

    def __init__(self, problem, budget, *, seed=0, params=None):
        if FeasibleSpace(problem, budget).greedy() is None:
            raise LayerbudgetError(f"budget {budget} cannot be met")
        super().__init__(problem, budget, seed=seed, params=params)


class LavishSearcher(GreedySearcher):
    """Also scores the dense plan, whatever the budget, and declares nothing."""

    name = "lavish"

    def ask(self) -> list[EvalRequest]:
        asked = super().ask()
        return asked + [EvalRequest(self.problem.uniform("dense"))] if asked else []


class HashOrderSearcher(GreedySearcher):
    """Asks in the order of a set of slot names: the order follows the process's string hashing."""

    name = "hash-order"

    def ask(self) -> list[EvalRequest]:
        asked = super().ask()
        order = list({s.name for s in self.problem.slots})
        return sorted(asked, key=lambda r: [r.candidate[self.problem.index[n]] for n in order])


class RetyingSearcher(GreedySearcher):
    """Splits the first tied slot into one slot per unit before searching."""

    name = "retying"

    def __init__(self, problem, budget, *, seed=0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        s = problem.slots[0]
        problem.slots = (Slot(s.name, s.options, s.units[:1], s.block), *problem.slots[1:])


class Unjustified(GreedySearcher):
    name = "unjustified"
    needs_subblocks = True  # and no reason given


def test_a_searcher_that_breaks_ties_fails():
    with pytest.raises(AssertionError, match="tie group is one slot.*one entry per unit"):
        check_case(UntiedSearcher, "bits")


def test_a_searcher_over_its_cap_fails():
    p = tied_problem("flat")
    run_checked(GreedySearcher, p, Budget.from_dict({"avg_bits": 4.0}))  # no cap: the check stays quiet
    with pytest.raises(AssertionError, match="over its max_evaluations=7"):
        run_checked(GreedySearcher, p, Budget.from_dict({"avg_bits": 4.0}), cap=7)


def test_a_searcher_that_refuses_without_the_range_fails():
    budget = Budget.from_dict({"avg_bits": 2.6, "sparsity": 0.5})
    with pytest.raises(AssertionError, match="no achievable range"):
        check_raises_infeasible(MuteSearcher, tied_problem("flat"), budget)
    with pytest.raises(AssertionError, match="no error for infeasible budget"):  # and one that does not refuse
        check_raises_infeasible("ilp", tied_problem("flat"), Budget.from_dict({"avg_bits": 4.0}))


def test_a_stated_range_must_exclude_the_budget():
    budget = Budget.from_dict({"avg_bits": 3.0})
    check_infeasible_message("avg_bits ranges from 3.25 to 16", budget)
    with pytest.raises(AssertionError, match="admits"):
        check_infeasible_message("avg_bits ranges from 2.5 to 16", budget)


def test_a_searcher_that_scores_over_budget_plans_fails():
    with pytest.raises(AssertionError, match="outside budget"):
        check_case(LavishSearcher, "bits")


def test_a_searcher_that_changes_the_tie_groups_fails():
    with pytest.raises(AssertionError, match="changed the problem's tie groups"):
        check_case(RetyingSearcher, "bits")


def test_a_searcher_that_depends_on_string_hashing_fails_across_processes():
    case = next(iter(CASES))
    assert fingerprint(HashOrderSearcher, case) == fingerprint(HashOrderSearcher, case)  # same process: alike
    runs = fingerprints_in_processes([("test_contract_catches:HashOrderSearcher", case)], hash_seeds=("1", "2", "3"))
    results = [r["test_contract_catches:HashOrderSearcher"]["requests"] for r in runs]
    assert any(a != results[0] for a in results[1:])


def test_an_opt_out_without_a_reason_fails():
    with pytest.raises(AssertionError, match="reasons given for"):
        check_opt_outs_are_justified(Unjustified)
