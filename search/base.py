"""The searcher interface (ask/tell), its parameters record, and the decorator that registers a searcher."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from layerbudget.errors import LayerbudgetError, Record
from layerbudget.problem import Budget, Candidate, EvalRequest, Evaluation, Problem


@dataclass(frozen=True)
class NoParams(Record):
    """The parameters of a searcher that takes none."""


class Searcher(ABC):
    """Proposes candidates (:meth:`ask`) and learns from their fitness (:meth:`tell`).

    A searcher never evaluates anything itself: a loop (:mod:`layerbudget.evaluators.loop`) sends
    its requests to an executor. All randomness comes from ``self.rng``, seeded by ``seed``. Its
    parameters are one frozen record of type ``Params``, checked before the searcher is built.
    """

    name: str = ""
    Params: ClassVar[type[Record]] = NoParams

    def __init__(self, problem: Problem, budget: Budget, *, seed: int = 0, params: Record | None = None):
        self.params = type(self).Params() if params is None else params
        if not isinstance(self.params, type(self).Params):
            raise TypeError(f"searcher {self.name!r} takes {type(self).Params.__name__}, but got {type(params).__name__}")
        problem.check_budget(budget)
        self.problem = problem
        self.budget = budget
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def ask(self) -> list[EvalRequest]:
        """The next batch of requests; an empty list when the search is finished."""

    @abstractmethod
    def tell(self, evaluations: list[Evaluation]) -> None:
        """Fitness for the requests of the last :meth:`ask`, in the same order."""

    @abstractmethod
    def result(self) -> Candidate:
        """The best candidate found (it satisfies the budget)."""

    def fresh_windows(self) -> int:
        """The most fresh calibration windows one of its requests may ask for (0: standard windows only)."""
        return 0


class ScoreOnceSearcher(Searcher):
    """Scores a fixed list of candidates in one round and keeps the best (baselines and solvers).

    Subclasses build their list and call :meth:`_candidates`; ties in fitness go to the lower
    :meth:`tiebreak`, then to the earlier candidate.
    """

    def _candidates(self, candidates: list[Candidate]) -> None:
        self.candidates = list(candidates)
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

    def tiebreak(self, candidate: Candidate) -> float:
        return 0.0

    def result(self) -> Candidate:
        finite = [
            (f, self.tiebreak(c), i)
            for i, c in enumerate(self.candidates)
            if math.isfinite(f := self._scores.get(c, math.nan))
        ]
        if not finite:
            raise LayerbudgetError(f"every {self.name} candidate scored NaN or inf; the model cannot be evaluated")
        return self.candidates[min(finite)[2]]


_SEARCHERS: dict[str, type[Searcher]] = {}


def register_searcher(cls: type[Searcher]) -> type[Searcher]:
    """Class decorator: make a searcher available by its ``name`` (see :mod:`layerbudget.search.registry`)."""
    if not cls.name or cls.name in _SEARCHERS:
        raise ValueError(f"searcher name {cls.name!r} is empty or already registered")
    _SEARCHERS[cls.name] = cls
    return cls


def registered_searchers() -> Mapping[str, type[Searcher]]:
    """The searcher classes registered so far, by name (a read-only view)."""
    return MappingProxyType(_SEARCHERS)
