"""The ask/evaluate/tell loop that connects a searcher to an executor, checkpointed between rounds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.checkpoint import Rounds, load_checkpoint, save_checkpoint
from layerbudget.evaluators.executor import Executor
from layerbudget.problem import AskTell, Candidate, Evaluation


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
    searcher: AskTell,
    executor: Executor,
    *,
    on_evaluations: Callable[[list[Evaluation]], None] | None = None,
    checkpoint: str | Path | None = None,
    fingerprint: str | None = None,
    before_save: Callable[[], None] | None = None,
) -> SearchOutcome:
    """Ask, evaluate and tell until the searcher has nothing more to ask; check the budget at the end.

    With ``checkpoint`` the searcher's state is saved there after every round; when that file
    exists, the searcher is first restored from it (it must have been written for the same
    ``fingerprint``, problem, budget, seed and searcher), its rounds are replayed to
    ``on_evaluations`` in order, and the search continues: with a deterministic executor the
    outcome equals an uninterrupted run's. The file is left in place at the end. ``before_save`` is
    called before every checkpoint is written (e.g. to create the directory that holds it).
    """
    path = None if checkpoint is None else Path(checkpoint)
    rounds: Rounds = []
    if path is not None and path.exists():
        rounds = load_checkpoint(searcher, path, fingerprint=fingerprint)
        if on_evaluations is not None:
            for r in rounds:
                on_evaluations(r)
    while True:
        requests = searcher.ask()
        if not requests:
            break
        results = executor.evaluate(requests)
        if on_evaluations is not None:
            on_evaluations(results)
        searcher.tell(results)
        rounds.append(results)
        if path is not None:
            if before_save is not None:
                before_save()
            save_checkpoint(searcher, path, rounds, fingerprint=fingerprint)
    evaluations = [e for r in rounds for e in r]
    if not evaluations:
        raise LayerbudgetError(f"searcher {searcher.name!r} evaluated nothing")
    best = searcher.result()
    problem = searcher.problem
    if not problem.satisfies(best, searcher.budget):  # a searcher bug, never a user error
        raise RuntimeError(
            f"searcher {searcher.name!r} returned a candidate outside budget {searcher.budget}: "
            f"{problem.metrics(best)}"
        )
    return SearchOutcome(best, evaluations)
