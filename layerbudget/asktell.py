"""The ask/tell contract between searchers and executors: evaluation requests, their results, and
what a searcher offers the loop that runs it (:class:`AskTell`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from layerbudget.budget import Budget
from layerbudget.problem import Candidate, Problem


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


class AskTell(Protocol):
    """A searcher as the search loop sees it: it asks for requests, is told their fitness, and
    returns a candidate within ``budget``; all its randomness comes from ``rng``."""

    name: str
    problem: Problem
    budget: Budget
    seed: int
    rng: np.random.Generator

    def ask(self) -> list[EvalRequest]: ...

    def tell(self, evaluations: list[Evaluation]) -> None: ...

    def result(self) -> Candidate: ...
