"""The searcher interface (ask/tell), evaluation requests and results, and the decorator that registers a searcher."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from layerbudget.budget import Budget
from layerbudget.errors import LayerbudgetError
from layerbudget.search.problem import Candidate, Problem


@dataclass(frozen=True)
class EvalRequest:
    """Score ``candidate`` on ``windows`` calibration windows of fresh batch ``batch``.

    ``windows=None`` means the standard calibration set (the same for every request); otherwise the
    evaluator draws ``windows`` windows from the calibration pool with a generator seeded by
    ``batch``, so requests with the same batch see the same tokens.
    """

    candidate: Candidate
    windows: int | None = None
    batch: int = 0


@dataclass(frozen=True)
class Evaluation:
    """The fitness of one request (lower is better; NaN marks a broken candidate)."""

    request: EvalRequest
    fitness: float

    @property
    def candidate(self) -> Candidate:
        return self.request.candidate


class Searcher(ABC):
    """Proposes candidates (:meth:`ask`) and learns from their fitness (:meth:`tell`).

    A searcher never evaluates anything itself: the loop in :mod:`layerbudget.search.loop` sends its
    requests to an executor. All randomness comes from ``self.rng``, seeded by ``seed``.
    """

    name: str = ""

    def __init__(self, problem: Problem, budget: Budget, *, seed: int = 0, **params: Any):
        if params:
            raise LayerbudgetError(f"searcher {self.name!r} got unknown parameters: {', '.join(sorted(params))}")
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
