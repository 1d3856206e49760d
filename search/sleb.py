"""SLEB baseline: greedily drop the sub-block whose removal hurts the calibration fitness least.

SLEB (Song et al. 2024) removes transformer blocks one at a time: each round it scores every
model that lacks one more block and removes the block whose absence costs least. Here the
decisions are attention/MLP sub-blocks (``keep``/``drop`` slots). Unit slots keep their
least-compressed option (``dense`` where offered; see
:func:`layerbudget.search.shortgpt.least_compressed`) and sub-blocks are dropped until every
constraint of the budget holds.

Each round asks for the fitness of every plan that drops one more still-kept sub-block (standard
calibration windows) and keeps the lowest; ties go to the earlier sub-block. With ``n`` sub-blocks
and ``k`` rounds that is ``n + (n-1) + ... + (n-k+1)`` evaluations. Candidates whose fitness is NaN
(or infinite) are never chosen and are counted in ``nan_count``. When no drop is needed the
starting plan is scored once. The search is deterministic (it draws no random numbers).

Unlike the other searchers, SLEB scores plans that do not meet the budget yet (fewer drops than
the budget needs): that is how it picks each next drop. Only its result is sure to fit.
"""

from __future__ import annotations

import math

from layerbudget.errors import LayerbudgetError
from layerbudget.problem import Candidate, EvalRequest, Evaluation
from layerbudget.search.base import Searcher, register_searcher
from layerbudget.search.shortgpt import check_reachable, drop, least_compressed, subblock_slots


@register_searcher
class SLEBSearcher(Searcher):
    """Greedy sub-block removal by measured fitness (module docstring)."""

    name = "sleb"
    # declarations read by tests/search/test_searcher_contract.py
    needs_subblocks = True  # its only decision is which sub-blocks to drop
    scores_partial_plans = True  # each round scores plans with fewer drops than the budget needs

    def __init__(self, problem, budget, *, seed: int = 0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        self.subs = subblock_slots(problem, self.name)
        start = least_compressed(problem, budget)
        check_reachable(problem, budget, start, self.subs, self.name)
        self.current: Candidate = problem.canonical(start)
        self.kept: list[int] = list(self.subs)
        self.dropped: list[str] = []  # sub-block names in the order they were dropped
        self.rounds = self.evaluations = self.nan_count = 0
        self._asked: list[tuple[int | None, EvalRequest]] = []
        self._scored_start = False
        self._done = False

    def _with_drop(self, sub: int) -> Candidate:
        cand = list(self.current)
        drop(self.problem, cand, sub)
        return self.problem.canonical(cand)

    def ask(self) -> list[EvalRequest]:
        if self._done:
            return []
        if self.problem.satisfies(self.current, self.budget):
            self._done = True
            if self.rounds or self._scored_start:
                return []
            self._scored_start = True  # the budget holds without drops: score the starting plan once
            self._asked = [(None, EvalRequest(self.current))]
            return [self._asked[0][1]]
        self._asked = [(s, EvalRequest(self._with_drop(s))) for s in self.kept]
        return [r for _, r in self._asked]

    def tell(self, evaluations: list[Evaluation]) -> None:
        if len(evaluations) != len(self._asked):
            raise LayerbudgetError(
                f"tell() expects {len(self._asked)} evaluations, but got {len(evaluations)}"
            )
        self.evaluations += len(evaluations)
        best: tuple[float, int] | None = None
        for pos, e in enumerate(evaluations):
            if not math.isfinite(e.fitness):
                self.nan_count += 1
            elif best is None or e.fitness < best[0]:  # strict: ties keep the earlier sub-block
                best = (e.fitness, pos)
        asked, self._asked = self._asked, []
        if best is None:
            raise LayerbudgetError(
                f"every sleb candidate of round {self.rounds + 1} scored NaN or inf; the model cannot be evaluated"
            )
        if asked[0][0] is None:  # the starting plan, scored once
            return
        sub, request = asked[best[1]]
        assert sub is not None
        self.current = request.candidate
        self.kept.remove(sub)
        self.dropped.append(self.problem.slots[sub].name)
        self.rounds += 1

    def result(self) -> Candidate:
        if not self.problem.satisfies(self.current, self.budget):
            raise LayerbudgetError("sleb has not finished: ask() and tell() until ask() returns nothing")
        return self.current
