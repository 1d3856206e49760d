"""Uniform baseline: the same option on every unit; the best-scoring one that fits the budget wins."""

from __future__ import annotations

import math

from layerbudget.errors import LayerbudgetError
from layerbudget.search.base import EvalRequest, Evaluation, Searcher, register_searcher
from layerbudget.search.problem import Candidate


@register_searcher
class UniformSearcher(Searcher):
    """Scores every option shared by all unit slots whose uniform use fits, keeps the best."""

    name = "uniform"

    def __init__(self, problem, budget, *, seed: int = 0, **params):
        super().__init__(problem, budget, seed=seed, **params)
        unit_slots = [s for s in problem.slots if not s.is_subblock]
        shared = [o for o in unit_slots[0].options if all(o in s.options for s in unit_slots)]
        self.candidates: list[Candidate] = []
        for o in shared:
            cand = problem.uniform(o)
            if cand is not None and problem.satisfies(cand, budget):
                self.candidates.append(cand)
        if not self.candidates:
            cheapest = min(
                (problem.uniform(o) for o in shared),
                key=lambda c: problem.metric(c, budget.constraints[0].metric) if c else math.inf,
                default=None,
            )
            detail = f"; the closest uniform plan reaches {problem.metrics(cheapest)}" if cheapest else ""
            raise LayerbudgetError(f"no uniform option fits budget {budget}{detail}")
        self._asked = False
        self._scores: dict[Candidate, float] = {}

    def ask(self) -> list[EvalRequest]:
        if self._asked:
            return []
        self._asked = True
        return [EvalRequest(c) for c in self.candidates]

    def tell(self, evaluations: list[Evaluation]) -> None:
        for e in evaluations:
            self._scores[e.candidate] = e.fitness

    def result(self) -> Candidate:
        finite = {c: f for c, f in self._scores.items() if math.isfinite(f)}
        if not finite:
            raise LayerbudgetError("every uniform candidate scored NaN or inf; the model cannot be evaluated")
        return min(finite, key=lambda c: (finite[c], self.problem.metric(c, "avg_bits")))
