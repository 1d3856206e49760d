"""Sensitivity measures of every (slot, option): one-at-a-time fitness and relative weight error."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from layerbudget.options import DENSE, DROP
from layerbudget.problem import KEEP, Candidate, Problem
from layerbudget.profiles.database import Database


def one_at_a_time(
    problem: Problem,
    score: Callable[[Candidate], float],
    *,
    progress: bool = True,
    score_many: Callable[[list[Candidate]], list[float]] | None = None,
) -> dict[tuple[str, str], float]:
    """Fitness of the dense model with only one slot changed, for every (slot, option).

    ``dense`` and ``keep`` are not scored (they are the reference, fitness 0 by construction).
    ``score_many`` scores the whole list in one call (e.g. on an executor's workers) instead.
    """
    base = problem.uniform(DENSE)
    if base is None:
        raise ValueError("every unit slot needs the 'dense' option to profile one-at-a-time sensitivity")
    jobs = [
        (i, j)
        for i, s in enumerate(problem.slots)
        for j, o in enumerate(s.options)
        if o not in (DENSE, KEEP)
    ]
    out: dict[tuple[str, str], float] = {}
    if score_many is not None:
        cands = []
        for i, j in jobs:
            cand = list(base)
            cand[i] = j
            cands.append(problem.canonical(cand))
        for (i, j), value in zip(jobs, score_many(cands)):
            out[(problem.slots[i].name, problem.slots[i].options[j])] = float(value)
        return out
    for i, j in tqdm(jobs, desc="sensitivity", unit="eval", disable=not progress, leave=False):
        cand = list(base)
        cand[i] = j
        s = problem.slots[i]
        out[(s.name, s.options[j])] = float(score(problem.canonical(cand)))
    return out


def weight_error(problem: Problem, database: Database, dense: Callable[[str], torch.Tensor]) -> dict[tuple[str, str], float]:
    """Relative weight error ``Σ‖W − Ŵ‖² / Σ‖W‖²`` over the units of each (unit slot, option)."""
    out: dict[tuple[str, str], float] = {}
    for s in problem.slots:
        if s.is_subblock:
            out[(s.name, KEEP)] = 0.0
            out[(s.name, DROP)] = 1.0
            continue
        ws = {u: dense(u) for u, _ in s.units}
        norm = sum(float(w.pow(2).sum()) for w in ws.values())
        for o in s.options:
            if o == DENSE:
                out[(s.name, o)] = 0.0
                continue
            err = sum(float((database.weight(u, o) - w).pow(2).sum()) for u, w in ws.items())
            out[(s.name, o)] = err / norm if norm > 0 else 0.0
    return out
