"""Hybrid searcher: solver plans at the target and neighbouring budgets seed an evolutionary search.

1. The ILP (or DP) solves the additive proxy at the target budget and at budgets scaled by
   ``neighbours``; plans of looser budgets are repaired into the target budget. The distinct
   feasible plans are scored on the standard calibration windows.
2. The best-scoring plan becomes the parent of an :class:`EvolutionSearcher`, which corrects the
   additivity assumption with real fitness (EvoPress-style mutation and staged selection).
3. The evolution's winner is re-scored on the standard calibration windows and the result is the
   better of it and the best solver plan, so the hybrid never returns a plan that scores worse than
   its best seed on the calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from layerbudget.budget import Budget, Constraint
from layerbudget.errors import LayerbudgetError
from layerbudget.search.base import EvalRequest, Evaluation, Searcher, register_searcher
from layerbudget.search.dp import solve_dp
from layerbudget.search.evolution import EvolutionSearcher, FeasibleSpace
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.problem import Candidate, Problem

DEFAULT_NEIGHBOURS = (0.98, 0.96, 0.93, 1.02, 1.05)


def scaled_budget(budget: Budget, factor: float) -> Budget:
    """Every ``<=`` constraint times ``factor`` and every ``>=`` constraint divided by it."""
    out = []
    for c in budget.constraints:
        value = c.value * factor if c.sense == "<=" else c.value / factor
        if c.metric == "sparsity":
            value = min(value, 0.999)
        out.append(Constraint(c.metric, value))
    return Budget(tuple(out))


def solver_seeds(problem: Problem, budget: Budget, neighbours: Sequence[float], solver: str) -> list[Candidate]:
    """Distinct feasible solver plans at the target budget and its neighbours (repaired when needed)."""
    space = FeasibleSpace(problem, budget)
    solve = solve_ilp if solver == "ilp" else solve_dp
    seeds: list[Candidate] = []
    for factor in (1.0, *neighbours):
        try:
            cand = solve(problem, scaled_budget(budget, factor))
        except LayerbudgetError:  # a neighbour may be infeasible on its own
            continue
        if not problem.satisfies(cand, budget):
            cand = space.repair(cand)
        if cand is not None and cand not in seeds:
            seeds.append(cand)
    return seeds


@register_searcher
class HybridSearcher(Searcher):
    """Solver plans (ILP/DP) at neighbouring budgets seed an EvoPress-style evolution."""

    name = "hybrid"

    def __init__(
        self,
        problem,
        budget,
        *,
        seed: int = 0,
        neighbours: Sequence[float] = DEFAULT_NEIGHBOURS,
        solver: str = "ilp",
        **evolution: Any,
    ):
        bad = [k for k in evolution if k in ("init", "init_candidate")]
        if bad:
            raise LayerbudgetError(f"hybrid sets the evolution's start itself; remove {', '.join(bad)}")
        super().__init__(problem, budget, seed=seed)
        if solver not in ("ilp", "dp"):
            raise LayerbudgetError(f"hybrid solver must be 'ilp' or 'dp', but got {solver!r}")
        if any(not (isinstance(f, (int, float)) and f > 0) for f in neighbours):
            raise LayerbudgetError(f"hybrid neighbours must be positive budget factors, but got {list(neighbours)}")
        self.seeds = solver_seeds(problem, budget, neighbours, solver)
        if not self.seeds:
            raise LayerbudgetError(f"no solver plan fits budget {budget} ({problem.describe_ranges(budget)})")
        self._evolution_params = evolution
        EvolutionSearcher(problem, budget, seed=seed, init="plan", init_candidate=self.seeds[0], **evolution)
        self.scores: dict[Candidate, float] = {}  # standard calibration windows only
        self.evolution: EvolutionSearcher | None = None
        self._phase = "seeds"

    def ask(self) -> list[EvalRequest]:
        if self._phase == "seeds":
            return [EvalRequest(c) for c in self.seeds]
        if self._phase == "evolution":
            assert self.evolution is not None
            requests = self.evolution.ask()
            if requests:
                return requests
            self._phase = "final"
            winner = self.evolution.result()
            if winner not in self.scores:
                return [EvalRequest(winner)]
        self._phase = "done"
        return []

    def tell(self, evaluations: list[Evaluation]) -> None:
        if self._phase == "seeds":
            for e in evaluations:
                self.scores[e.candidate] = e.fitness
            best = self._best()
            self.evolution = EvolutionSearcher(
                self.problem, self.budget, seed=self.seed, init="plan", init_candidate=best, **self._evolution_params
            )
            self._phase = "evolution"
        elif self._phase == "evolution":
            assert self.evolution is not None
            self.evolution.tell(evaluations)
        else:
            for e in evaluations:
                self.scores[e.candidate] = e.fitness

    def _best(self) -> Candidate:
        finite = {c: f for c, f in self.scores.items() if math.isfinite(f)}
        if not finite:
            raise LayerbudgetError("every solver plan scored NaN or inf; the model cannot be evaluated")
        return min(finite, key=lambda c: (finite[c], c))

    def result(self) -> Candidate:
        return self._best()
