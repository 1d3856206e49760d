"""Per-window scores of finished plans on any set of windows, for standard errors and paired comparisons.

:func:`measure_plans` scores several plans on the same windows batch by batch: for each batch it
runs the dense model once (the reference and every block's input), then each plan from its first
compressed block on. Only one batch of references is held at a time, so a large held-out set (or
a causal LM's logits) costs time, not memory, and every plan sees exactly the same windows, which
is what a paired comparison needs. Each window's (numerator, denominator) is the fitness of that
window alone, so the plan's score is their ratio of sums, the number the evaluation engine gives
for the same windows (up to the order of float additions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.fitness import Fitness
from layerbudget.evaluators.uncertainty import WindowScores
from layerbudget.options import DENSE
from layerbudget.problem import Candidate


def window_partials(fitness: Fitness, out: torch.Tensor, ref: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(numerators, denominators) of every window (row) of one batch: ``out``/``ref`` are ``[B, ...]``."""
    rows = [fitness.partial(out[i : i + 1], ref[i : i + 1]) for i in range(out.shape[0])]
    return np.array([n for n, _ in rows]), np.array([d for _, d in rows])


def measure_plans(
    evaluator: Evaluator, candidates: Sequence[Candidate], ids: torch.Tensor, *, batch_size: int | None = None
) -> list[WindowScores]:
    """Per-window scores of every candidate on the windows ``ids: [W, S]``; the model is left dense.

    Identical candidates are scored once. ``batch_size`` defaults to the evaluator's.
    """
    if len(ids) == 0:
        raise LayerbudgetError("no windows to measure on")
    adapter, fitness = evaluator.adapter, evaluator.fitness
    bs = batch_size or evaluator.batch_size
    unique = list(dict.fromkeys(candidates))
    dense = evaluator.problem.uniform(DENSE)
    nums: list[list[np.ndarray]] = [[] for _ in unique]
    dens: list[list[np.ndarray]] = [[] for _ in unique]

    def set_dense() -> None:
        if dense is not None:
            evaluator.stitch(dense)
        else:  # no slot offers dense as an option: restore the adapter (the evaluator notices)
            adapter.restore()

    for chunk in torch.split(ids, bs):
        set_dense()
        out, inputs = adapter.capture(chunk)  # the dense output and every block's dense input
        ref = fitness.reference(out)
        for k, cand in enumerate(unique):
            first = evaluator.stitch(cand)
            n, d = window_partials(fitness, adapter.forward_from(first, inputs), ref)
            nums[k].append(n)
            dens[k].append(d)
    set_dense()
    scores = {c: WindowScores(np.concatenate(n), np.concatenate(d)) for c, n, d in zip(unique, nums, dens)}
    return [scores[c] for c in candidates]
