"""Executors score evaluation requests; the inline executor runs them in this process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from layerbudget.problem import Candidate, EvalRequest, Evaluation


class Scorer(Protocol):
    """Anything that returns the fitness of a candidate on a given set of calibration windows."""

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float: ...


class Executor(ABC):
    """Evaluates batches of requests and returns results in request order."""

    @abstractmethod
    def evaluate(self, requests: list[EvalRequest]) -> list[Evaluation]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers; the executor is unusable afterwards."""

    def clear_caches(self) -> None:  # noqa: B027 - optional hook
        """Forget cached activations (traces, fresh window sets) wherever scoring happens; results
        do not change, only the time of the next requests (benchmark passes start from here)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Scores requests one after another with a scorer in this process (debugging, tests)."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def evaluate(self, requests: list[EvalRequest]) -> list[Evaluation]:
        return [Evaluation(r, float(self.scorer.score(r.candidate, r.windows, r.batch))) for r in requests]

    def clear_caches(self) -> None:
        clear = getattr(self.scorer, "clear_caches", None)
        if clear is not None:
            clear()
