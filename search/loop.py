"""The ask/evaluate/tell loop that connects a searcher to an executor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from layerbudget.errors import LayerbudgetError
from layerbudget.search.base import Evaluation, Searcher
from layerbudget.search.executor import Executor
from layerbudget.search.problem import Candidate


@dataclass
class SearchOutcome:
    """The searcher's final candidate and every evaluation it asked for, in order."""

    result: Candidate
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def broken(self) -> list[Evaluation]:
        """Evaluations whose fitness was NaN (quarantined by the searcher)."""
        return [e for e in self.evaluations if e.fitness != e.fitness]


def run_search(
    searcher: Searcher,
    executor: Executor,
    *,
    on_evaluations: Callable[[list[Evaluation]], None] | None = None,
) -> SearchOutcome:
    """Ask, evaluate and tell until the searcher has nothing more to ask; check the budget at the end."""
    evaluations: list[Evaluation] = []
    while True:
        requests = searcher.ask()
        if not requests:
            break
        results = executor.evaluate(requests)
        evaluations.extend(results)
        if on_evaluations is not None:
            on_evaluations(results)
        searcher.tell(results)
    best = searcher.result()
    problem = searcher.problem
    if not problem.satisfies(best, searcher.budget):  # a searcher bug, never a user error
        raise RuntimeError(
            f"searcher {searcher.name!r} returned a candidate outside budget {searcher.budget}: "
            f"{problem.metrics(best)}"
        )
    if not evaluations:
        raise LayerbudgetError(f"searcher {searcher.name!r} evaluated nothing")
    return SearchOutcome(best, evaluations)
