"""The contract every registered searcher must pass (checks in ``contract_checks.py``): within budget,
ties kept in every asked candidate, ``max_evaluations`` never exceeded, deterministic for a seed in
this and in other processes, infeasible budgets refused with the achievable range, opt-outs justified.

A new searcher gets this suite for free; give it small parameters in ``contract_checks.SMALL`` if its
defaults are slow. ``test_contract_catches.py`` shows each check failing on a broken searcher.
"""

from __future__ import annotations

import json

import pytest
from contract_checks import (
    CASES,
    applicable_case,
    check_case,
    check_opt_outs_are_justified,
    check_raises_infeasible,
    fingerprint,
    fingerprints_in_processes,
    has_cap,
    not_applicable,
    run_checked,
    tied_problem,
)

from layerbudget.errors import LayerbudgetError
from layerbudget.problem import Budget
from layerbudget.search.registry import known_searchers


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", known_searchers())
def test_stays_within_budget_and_keeps_ties_in_what_it_asks(name, case):
    check_case(name, case)


@pytest.mark.parametrize("name", known_searchers())
def test_opt_outs_are_justified_in_one_line(name):
    check_opt_outs_are_justified(name)


@pytest.mark.parametrize("cap", [19, 41])
@pytest.mark.parametrize("kind", ["flat", "drop"])
@pytest.mark.parametrize("name", [n for n in known_searchers() if has_cap(n)])
def test_max_evaluations_is_never_exceeded(name, kind, cap):
    out = run_checked(name, tied_problem(kind), Budget.from_dict({"avg_bits": 3.9}), cap=cap)
    assert len(out.evaluations) <= cap  # also checked request by request


@pytest.mark.parametrize("name", known_searchers())
def test_deterministic_for_a_seed(name):
    case = applicable_case(name)
    assert fingerprint(name, case) == fingerprint(name, case)


def test_deterministic_across_processes():
    """Two new processes with different string-hash seeds ask for exactly what this one asks for."""
    specs = [(name, applicable_case(name)) for name in known_searchers()]
    here = json.loads(json.dumps({n: fingerprint(n, c) for n, c in specs}))  # tuples as lists
    for there in fingerprints_in_processes(specs):
        for name, _ in specs:
            assert there[name] == here[name], f"{name} differs in another process"


INFEASIBLE = {  # case: (problem kind, budget, raised by the shared check before any searcher code)
    "bits-below-range": ("flat", {"avg_bits": 1.0}, True),
    "sparsity-above-range": ("flat", {"sparsity": 0.9}, True),
    "contradictory-pair": ("flat", {"avg_bits": 2.6, "sparsity": 0.5}, False),
}


@pytest.mark.parametrize("case", list(INFEASIBLE))
@pytest.mark.parametrize("name", known_searchers())
def test_infeasible_budget_is_refused_with_the_achievable_range(name, case):
    kind, spec, shared = INFEASIBLE[case]
    problem, budget = tied_problem(kind), Budget.from_dict(spec)
    if not shared:  # each constraint alone is reachable: the error comes from the searcher's own path
        problem.check_budget(budget)
    if not_applicable(name, problem, budget) is not None:  # its declared opt-out raises first
        with pytest.raises(LayerbudgetError):
            run_checked(name, problem, budget)
        return
    check_raises_infeasible(name, problem, budget)


OWN_PATHS = {  # searcher: (problem kind, a budget other plans meet but none of the searcher's)
    "uniform": ("flat", {"avg_bits": 3.0, "sparsity": 0.1}),
    "shortgpt": ("partial", {"avg_bits": 4.0}),  # attention units are not droppable
    "sleb": ("partial", {"avg_bits": 4.0}),
    "owl": ("flat", {"avg_bits": 4.0}),  # its sparsity levels cost 9 bits and more
}


@pytest.mark.parametrize("name", list(OWN_PATHS))
def test_a_budget_out_of_the_searchers_own_reach_is_explained(name):
    kind, spec = OWN_PATHS[name]
    problem, budget = tied_problem(kind), Budget.from_dict(spec)
    run_checked("ilp", problem, budget)  # the budget itself can be met
    check_raises_infeasible(name, problem, budget)


def test_every_opt_out_case_still_runs_the_searcher():
    """Opting out of a case means raising there, not skipping: the declared reasons say why."""
    opted = [(n, c) for n in known_searchers() for c, (k, s) in CASES.items()
             if not_applicable(n, tied_problem(k), Budget.from_dict(s)) is not None]
    assert {n for n, _ in opted} == {"dp", "owl", "shortgpt", "sleb"}
