"""Uniform baseline: the same option on every unit; the best-scoring one that fits the budget wins."""

from __future__ import annotations

import math

from layerbudget.errors import LayerbudgetError
from layerbudget.problem import Candidate
from layerbudget.search.base import ScoreOnceSearcher, register_searcher


@register_searcher
class UniformSearcher(ScoreOnceSearcher):
    """Scores every option shared by all unit slots whose uniform use fits, keeps the best."""

    name = "uniform"

    def __init__(self, problem, budget, *, seed: int = 0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        shared = problem.shared_options()
        self.candidates: list[Candidate] = list(problem.fitting_uniform(budget).values())
        if not self.candidates:
            cheapest = min(
                (problem.uniform(o) for o in shared),
                key=lambda c: problem.metric(c, budget.constraints[0].metric) if c else math.inf,
                default=None,
            )
            detail = f"; the closest uniform plan reaches {problem.metrics(cheapest)}" if cheapest else ""
            raise LayerbudgetError(f"no uniform option fits budget {budget}{detail}")
        self._candidates(self.candidates)

    def tiebreak(self, candidate: Candidate) -> float:
        return self.problem.metric(candidate, "avg_bits")
