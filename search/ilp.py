"""ILP allocation with PuLP: minimise the summed additive proxy under every budget constraint.

A multiple-choice knapsack: one binary per (unit slot, option) and one per droppable sub-block;
each unit slot picks exactly one option unless its sub-block is dropped
(``Σ_o x[s, o] = 1 - d[sub(s)]``), tie groups are single slots, and every budget constraint is
one linear row with the problem's exact integer coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pulp

from layerbudget.errors import LayerbudgetError, rule
from layerbudget.options import DROP
from layerbudget.problem import LE, Budget, Candidate, Constraint, Problem
from layerbudget.search.base import register_searcher
from layerbudget.search.feasible import range_phrase
from layerbudget.search.operating_point import SolverParams, SolverSearcher


def _solver(name: str, time_limit: float | None) -> pulp.LpSolver:
    if name == "cbc":
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit)
    if name == "highs":
        if "HiGHS" not in pulp.listSolvers(onlyAvailable=True):
            raise LayerbudgetError("solver 'highs' is not installed (pip install highspy); use 'cbc'")
        return pulp.HiGHS(msg=False, timeLimit=time_limit)
    raise LayerbudgetError(f"unknown ILP solver {name!r}; known: cbc, highs")


def _model(
    problem: Problem, constraints: Sequence[Constraint], objective: Sequence[np.ndarray]
) -> tuple[pulp.LpProblem, dict[tuple[int, int], pulp.LpVariable]]:
    """The multiple-choice model: minimise ``objective`` (per slot, per option) under ``constraints``."""
    lp = pulp.LpProblem("layerbudget", pulp.LpMinimize)
    x: dict[tuple[int, int], pulp.LpVariable] = {}
    for i, s in enumerate(problem.slots):
        for j in range(len(s.options)):
            x[i, j] = pulp.LpVariable(f"x_{i}_{j}", cat=pulp.LpBinary)
    scale = max((abs(float(v)) for p in objective for v in p), default=1.0) or 1.0
    lp += pulp.lpSum((float(objective[i][j]) / scale) * var for (i, j), var in x.items())
    for i, s in enumerate(problem.slots):
        choice = pulp.lpSum(x[i, j] for j in range(len(s.options)))
        p = problem.parent[i]
        if p is None:
            lp += choice == 1, f"one_{i}"
        else:
            lp += choice == 1 - x[p, problem.slots[p].options.index(DROP)], f"one_{i}"
    for c in constraints:
        row = pulp.lpSum(int(problem.coef[c.metric][i][j]) * var for (i, j), var in x.items())
        rhs = problem.rhs(c)
        lp += (row <= rhs) if c.sense == LE else (row >= rhs), f"budget_{c.metric}"
    return lp, x


def _chosen(problem: Problem, x: dict[tuple[int, int], pulp.LpVariable]) -> Candidate:
    cand = []
    for i, s in enumerate(problem.slots):
        vals = [x[i, j].value() or 0.0 for j in range(len(s.options))]
        cand.append(max(range(len(vals)), key=vals.__getitem__))
    return problem.canonical(cand)


def metric_bounds(
    problem: Problem, metric: str, constraints: Sequence[Constraint], *, solver: str = "cbc"
) -> tuple[float, float] | None:
    """Least and greatest ``metric`` over the candidates that meet ``constraints`` (None: none does)."""
    coef = problem.coef[metric]
    out = []
    for sign in (1, -1):
        lp, x = _model(problem, constraints, [sign * c for c in coef])
        status = pulp.LpStatus[lp.solve(_solver(solver, None))]
        if status != "Optimal":
            return None
        out.append(problem.metric(_chosen(problem, x), metric))
    return out[0], out[1]


def explain_infeasible(problem: Problem, budget: Budget, *, solver: str = "cbc") -> str:
    """The achievable range of each budget metric over the candidates that meet the other constraints
    (:func:`layerbudget.search.feasible.explain`'s form); every metric's own range when none is left."""
    parts = []
    for c in budget.constraints:
        others = [o for o in budget.constraints if o is not c]
        bounds = problem.metric_range(c.metric) if not others else metric_bounds(problem, c.metric, others, solver=solver)
        if bounds is not None:
            parts.append(range_phrase(c, others, *bounds))
    return "; ".join(parts) or problem.describe_ranges(budget)


def solve_ilp(problem: Problem, budget: Budget, *, solver: str = "cbc", time_limit: float | None = None) -> Candidate:
    """The candidate minimising the proxy under ``budget``; raises a clear error when infeasible."""
    problem.check_budget(budget)
    lp, x = _model(problem, budget.constraints, problem.proxy)
    status = lp.solve(_solver(solver, time_limit))
    if pulp.LpStatus[status] != "Optimal":
        if pulp.LpStatus[status] == "Infeasible":
            raise LayerbudgetError(
                f"budget {budget} is infeasible for these options: {explain_infeasible(problem, budget, solver=solver)}"
            )
        raise LayerbudgetError(f"the ILP solver ended with status {pulp.LpStatus[status]!r} for budget {budget}")
    result = _chosen(problem, x)
    if not problem.satisfies(result, budget):
        raise RuntimeError(f"ILP solution violates budget {budget}: {problem.metrics(result)}")
    return result


@dataclass(frozen=True)
class IlpParams(SolverParams):
    """``solver``: the MILP solver; ``time_limit``: seconds per solve (unset: none)."""

    WHERE = "ilp"
    solver: Literal["cbc", "highs"] = "cbc"
    time_limit: float | None = rule(60.0, least=0)


@register_searcher
class IlpSearcher(SolverSearcher):
    """Solves the ILP over an additive proxy and scores its solution.

    ``reference="dense"`` (default): the profile's one-at-a-time proxy, one evaluation.
    ``reference="uniform"``: operating-point sensitivities around the best fitting uniform plan,
    re-linearised around each solution for ``rounds`` rounds (see :mod:`layerbudget.search.operating_point`).
    """

    name = "ilp"
    Params = IlpParams

    def __init__(self, problem, budget, *, seed: int = 0, params: IlpParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        self.solver = self.params.solver
        self.time_limit = self.params.time_limit
        self._start()

    def solve(self, problem: Problem) -> Candidate:
        return solve_ilp(problem, self.budget, solver=self.solver, time_limit=self.time_limit)
