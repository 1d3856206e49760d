"""Operating-point sensitivities: the additive proxy measured around a reference plan, not the dense model.

The profile's proxy is one-at-a-time: slot ``i`` at option ``o``, every other unit dense. Far from
the dense model, where layer errors compound, it misjudges what a change costs inside a compressed
model. The operating-point proxy measures each change where the plan will live: the fitness of the reference
plan with slot ``i`` switched to option ``o``, minus the reference's own fitness, for every slot and
option (on the standard calibration windows). A solver over these deltas optimises the first-order
model ``f(ref) + sum_i delta[i][c_i]`` around the reference; re-linearising around the solution
(``rounds``) refines it, like a sequential linear programme over the plan lattice.

:class:`SolverSearcher` is the shared driver of the ``ilp`` and ``dp`` searchers: ``reference =
"dense"`` solves once on the profile's proxy (no evaluations but the solution's), ``"uniform"``
first scores every uniform plan that fits and the dense-proxy solution, and linearises around the
best uniform plan (around the dense-proxy solution when no uniform plan fits), ``"solution"``
linearises around the dense-proxy solution itself (for budgets far above the nearest uniform
plan). Each round costs one evaluation per (slot, option) that differs from the reference, plus
the solution; the result is the best-scoring solution of all rounds and of the dense proxy (never
worse than ``reference="dense"``).

Unit slots inside a sub-block that the reference drops cannot be switched alone; their deltas are
the differences of their one-at-a-time proxy from their base option (the one with the lowest proxy),
and switching the sub-block back on restores its units at their base options.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.problem import INACTIVE, Budget, Candidate, EvalRequest, Evaluation, Problem
from layerbudget.search.base import Searcher

REFERENCES = ("dense", "uniform", "solution")


def _base_options(problem: Problem) -> list[int]:
    """Per slot, the option with the lowest one-at-a-time proxy (where an inactive unit is restored)."""
    return [int(np.argmin(p)) if len(p) else 0 for p in problem.proxy]


def _switches(problem: Problem, reference: Candidate, i: int, nearest: int | None, metric: str | None) -> list[int]:
    """The options slot ``i`` may switch to: all but the reference's, or its ``nearest`` by cost."""
    others = [j for j in range(len(problem.slots[i].options)) if j != reference[i]]
    if nearest is None or metric is None or len(others) <= nearest:
        return others
    cost = problem.coef[metric][i]
    return sorted(sorted(others, key=lambda j: abs(int(cost[j]) - int(cost[reference[i]])))[:nearest])


def deviations(
    problem: Problem, reference: Candidate, *, nearest: int | None = None, metric: str | None = None
) -> dict[tuple[int, int], Candidate]:
    """Plans one switch away from ``reference``: (slot, option) -> plan.

    Every switch, or per slot only the ``nearest`` options closest to the reference's in the cost of
    budget ``metric`` (the moves a solver near the reference's budget needs most). Unit slots that
    ``reference`` leaves inactive have no switches of their own; switching their sub-block back on
    restores them at their base options.
    """
    base = _base_options(problem)
    out: dict[tuple[int, int], Candidate] = {}
    for i in range(len(problem.slots)):
        if reference[i] == INACTIVE:
            continue
        for j in _switches(problem, reference, i, nearest, metric):
            cand = list(reference)
            cand[i] = j
            for k, p in enumerate(problem.parent):  # units of a sub-block switched back on
                if p == i and cand[k] == INACTIVE:
                    cand[k] = base[k]
            out[i, j] = problem.canonical(cand)
    return out


def sensitivities(
    problem: Problem,
    reference: Candidate,
    scores: Mapping[Candidate, float],
    *,
    nearest: int | None = None,
    metric: str | None = None,
) -> list[np.ndarray]:
    """Per slot and option: fitness of the switched plan minus the reference's (0 at the reference's
    own option); inactive units use proxy differences from their base option.

    A switch that scored NaN or inf, or was not measured (``nearest``), gets a penalty larger than
    any finite delta, so a solver avoids it.
    """
    f0 = scores[reference]
    if not math.isfinite(f0):
        raise LayerbudgetError(f"the reference plan scored {f0}; operating-point sensitivities need a finite fitness")
    base = _base_options(problem)
    moves = deviations(problem, reference, nearest=nearest, metric=metric)
    out = []
    for i, s in enumerate(problem.slots):
        if reference[i] == INACTIVE:
            p = np.asarray(problem.proxy[i], dtype=np.float64)
            out.append(p - p[base[i]])
            continue
        row = [
            0.0 if j == reference[i] else (scores[moves[i, j]] - f0 if (i, j) in moves else math.inf)
            for j in range(len(s.options))
        ]
        out.append(np.asarray(row))
    finite = [abs(v) for row in out for v in row if math.isfinite(v)]
    penalty = 10.0 * max(finite, default=1.0) + 1.0
    return [np.where(np.isfinite(row), row, penalty) for row in out]


@dataclass(frozen=True)
class SolverParams(Record):
    """What every solver searcher takes: the proxy it solves on (``reference``) and how often it
    re-linearises around its solution (``rounds``)."""

    reference: Literal["dense", "uniform", "solution"] = "dense"
    rounds: int = rule(1, least=1)


class SolverSearcher(Searcher):
    """A solver over an additive proxy: the profile's (``reference="dense"``) or operating-point
    sensitivities around the best fitting uniform plan (``"uniform"``) or the dense-proxy solution
    (``"solution"``), re-linearised ``rounds`` times.

    Subclasses implement :meth:`solve` and call :meth:`_start` at the end of their ``__init__``.
    """

    Params = SolverParams

    def __init__(self, problem: Problem, budget: Budget, *, seed: int = 0, params: SolverParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        self.reference_kind = self.params.reference
        self.rounds = self.params.rounds

    @abstractmethod
    def solve(self, problem: Problem) -> Candidate:
        """The plan minimising ``problem.proxy`` under the budget."""

    def _start(self) -> None:
        self.scores: dict[Candidate, float] = {}  # standard calibration windows
        self.references: list[Candidate] = []
        self.solutions: list[Candidate] = []  # operating-point solutions, one per round
        self.solution = self.solve(self.problem)  # the solution on the profile's proxy
        self._asked: list[Candidate] = []
        self._phase = "solution"
        if self.reference_kind != "dense":
            fits = self.problem.fitting_uniform(self.budget).values() if self.reference_kind == "uniform" else []
            self._uniform = list(dict.fromkeys(fits))
            self._phase = "uniform"

    def _linearised(self, reference: Candidate) -> Problem:
        return self.problem.with_proxy(sensitivities(self.problem, reference, self.scores))

    def ask(self) -> list[EvalRequest]:
        while True:
            if self._phase == "uniform":
                want = [*self._uniform, self.solution]
            elif self._phase == "linearise":
                want = [self.references[-1], *deviations(self.problem, self.references[-1]).values()]
            elif self._phase == "solution":
                want = [self.solutions[-1] if self.solutions else self.solution]
            else:
                return []
            self._asked = [c for c in dict.fromkeys(want) if c not in self.scores]
            if self._asked:
                return [EvalRequest(c) for c in self._asked]
            self._advance()

    def tell(self, evaluations: list[Evaluation]) -> None:
        if len(evaluations) != len(self._asked):
            raise LayerbudgetError(f"tell() expects {len(self._asked)} evaluations, but got {len(evaluations)}")
        for e in evaluations:
            self.scores[e.candidate] = e.fitness
        self._advance()

    def _advance(self) -> None:
        if self._phase == "uniform":
            finite = [c for c in self._uniform if math.isfinite(self.scores[c])]
            if not finite and not math.isfinite(self.scores[self.solution]):
                self._phase = "done"  # nothing finite to linearise around; result() reports it
                return
            self.references.append(min(finite, key=self.scores.__getitem__) if finite else self.solution)
            self._phase = "linearise"
        elif self._phase == "linearise":
            self.solutions.append(self.solve(self._linearised(self.references[-1])))
            self._phase = "solution"
        elif self._phase == "solution":
            last = self.solutions[-1] if self.solutions else self.solution
            if (
                self.solutions
                and len(self.solutions) < self.rounds
                and last != self.references[-1]  # not converged
                and last not in self.solutions[:-1]  # nor cycling
                and math.isfinite(self.scores[last])
            ):
                self.references.append(self.solutions[-1])
                self._phase = "linearise"
            else:
                self._phase = "done"

    def result(self) -> Candidate:
        """The best-scoring solution: of every round and of the profile's proxy (ties: the later)."""
        plans = [self.solution, *self.solutions]
        finite = [(self.scores[c], -k) for k, c in enumerate(plans) if math.isfinite(self.scores.get(c, math.nan))]
        if not finite:
            raise LayerbudgetError(f"every {self.name} solution scored NaN or inf; the model cannot be evaluated")
        return plans[-min(finite)[1]]
