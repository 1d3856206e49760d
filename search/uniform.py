"""Uniform baseline: the same option on every unit; the best-scoring one that fits the budget wins."""

from __future__ import annotations

from layerbudget.errors import LayerbudgetError
from layerbudget.problem import Candidate
from layerbudget.search.base import ScoreOnceSearcher, register_searcher
from layerbudget.search.feasible import explain


@register_searcher
class UniformSearcher(ScoreOnceSearcher):
    """Scores every option shared by all unit slots whose uniform use fits, keeps the best."""

    name = "uniform"

    def __init__(self, problem, budget, *, seed: int = 0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        self.candidates: list[Candidate] = list(problem.fitting_uniform(budget).values())
        if not self.candidates:
            plans = [c for c in map(problem.uniform, problem.shared_options()) if c is not None]
            detail = f": over the uniform plans {explain(budget, [problem.metrics(c) for c in plans])}" if plans else ""
            raise LayerbudgetError(f"no uniform option fits budget {budget}{detail}")
        self._candidates(self.candidates)

    def tiebreak(self, candidate: Candidate) -> float:
        return self.problem.metric(candidate, "avg_bits")
