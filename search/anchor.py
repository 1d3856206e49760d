"""Regularising a real-fitness search toward a solver's plan: a penalty per slot that differs from it.

A search that compares hundreds of plans on one calibration text finds changes that help on that
text and not elsewhere; the solver's plan, built from per-layer sensitivities, transfers better
(see README, "Gains that transfer"). :class:`AnchorPenalty` scores a plan for *selection* as

    f'(c) = f(c) · (1 + strength · d(c) / L)

where ``d(c)`` is the number of the ``L`` slots whose option differs from the anchor plan, so a
move away from the solver's plan must gain more than ``strength / L`` (relative) per slot it
changes. ``strength = 0`` leaves scores unchanged. The penalty only ranks plans; reported fitness
is always the measured one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from layerbudget.errors import LayerbudgetError
from layerbudget.problem import Candidate, Evaluation


class AnchorPenalty:
    """Relative penalty ``strength · d / L`` on plans that differ from ``anchor`` in ``d`` of ``L`` slots."""

    def __init__(self, anchor: Candidate | None, strength: float):
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise LayerbudgetError(f"anchor strength must be a non-negative number, but got {strength!r}")
        self.anchor = None if anchor is None else np.asarray(anchor)
        self.strength = float(strength) if anchor is not None else 0.0

    def distance(self, cand: Candidate) -> int:
        """Slots whose option differs from the anchor plan's."""
        if self.anchor is None:
            return 0
        return int(np.count_nonzero(np.asarray(cand) != self.anchor))

    def __call__(self, cand: Candidate, fitness: float) -> float:
        """The selection score of ``cand`` measured at ``fitness`` (NaN and inf stay as they are)."""
        if not self.strength or not math.isfinite(fitness):
            return fitness
        return fitness * (1.0 + self.strength * self.distance(cand) / len(self.anchor))  # type: ignore[arg-type]

    def scores(self, scores: Mapping[Candidate, float]) -> dict[Candidate, float]:
        return {c: self(c, f) for c, f in scores.items()}

    def evaluations(self, evaluations: list[Evaluation]) -> list[Evaluation]:
        if not self.strength:
            return evaluations
        return [Evaluation(e.request, self(e.candidate, e.fitness)) for e in evaluations]
