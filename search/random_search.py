"""Best-of-N random baseline: N random feasible candidates scored on the calibration set."""

from __future__ import annotations

from dataclasses import dataclass

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.problem import Candidate
from layerbudget.search.base import ScoreOnceSearcher, register_searcher
from layerbudget.search.feasible import FeasibleSpace
from layerbudget.search.ilp import solve_ilp


@dataclass(frozen=True)
class RandomParams(Record):
    """``n``: how many distinct random candidates are scored."""

    WHERE = "random"
    n: int = rule(32, least=1)


@register_searcher
class RandomSearcher(ScoreOnceSearcher):
    """Draws ``n`` distinct random candidates (random options repaired into the budget; for depth
    budgets the required number of random sub-blocks dropped) and keeps the best-scoring one."""

    name = "random"
    Params = RandomParams

    def __init__(self, problem, budget, *, seed: int = 0, params: RandomParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        n = self.params.n
        space = FeasibleSpace(problem, budget)
        drops = space.required_drops(budget)
        self.candidates: list[Candidate] = []
        seen: set[Candidate] = set()
        for _ in range(20 * n + 100):
            if len(self.candidates) >= n:
                break
            cand = space.random(self.rng, drops)
            if cand is not None and cand not in seen:
                seen.add(cand)
                self.candidates.append(cand)
        if not self.candidates:
            solve_ilp(problem, budget)  # raises a clear error when the constraints contradict each other
            raise LayerbudgetError(f"random repair found no candidate within budget {budget}; use evolution or ilp")
        self._candidates(self.candidates)
