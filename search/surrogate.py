"""Online additive surrogate of fitness changes: ranks offspring before they are scored.

The one-at-a-time proxy says what each (slot, option) costs next to the dense model; far from it
(very low bits, where layer errors compound) it misjudges what a change costs inside the current
plan. Every scored offspring tells what its few changes really cost around its parent:
``fitness(child) - fitness(parent)``. The surrogate fits one value per (slot, option), ``theta``,
so that a change's predicted cost is the sum of ``theta[new] - theta[old]`` over the slots it
changes, by ridge regression towards the scaled proxy:

    minimise  sum_k (y_k - x_k . theta)^2 + ridge * |theta - alpha * proxy|^2

where ``x_k`` is +1 at the child's options and -1 at the parent's, and ``alpha`` is the
least-squares scale of the proxy on the same deltas (1 before any data). With no data the ranking
is the proxy's; each observation moves only the options it involves.

Used by ``evolution``/``hybrid`` with ``prescreen = k > 1``: of ``k`` times the offspring count of
new children, only the best-ranked are scored (off by default; README, "Benchmarks", says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from layerbudget.problem import INACTIVE, Candidate, Problem


class DeltaSurrogate:
    """Ridge regression of fitness deltas on per-(slot, option) changes, with the proxy as prior."""

    def __init__(self, problem: Problem, *, ridge: float = 1.0):
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0, but got {ridge}")
        self.ridge = ridge
        sizes = [len(s.options) for s in problem.slots]
        self.offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.prior = np.concatenate([np.asarray(p, dtype=np.float64) for p in problem.proxy])
        n = int(sum(sizes))
        self._a = np.zeros((n, n))  # X^T X
        self._b = np.zeros(n)  # X^T y
        self._py = 0.0  # sum of y * (x . prior)
        self._pp = 0.0  # sum of (x . prior)^2
        self.observations = 0
        self._theta: np.ndarray | None = self.prior.copy()

    def _x(self, cand: Candidate, ref: Candidate) -> tuple[np.ndarray, np.ndarray]:
        """Columns and signs of the change from ``ref`` to ``cand``."""
        cols, signs = [], []
        for i, (c, r) in enumerate(zip(cand, ref)):
            if c == r:
                continue
            if c != INACTIVE:
                cols.append(self.offset[i] + c)
                signs.append(1.0)
            if r != INACTIVE:
                cols.append(self.offset[i] + r)
                signs.append(-1.0)
        return np.asarray(cols, dtype=np.int64), np.asarray(signs)

    def observe(self, cand: Candidate, ref: Candidate, delta: float) -> None:
        """Record ``fitness(cand) - fitness(ref) = delta`` (both scored on the same windows)."""
        if not math.isfinite(delta) or cand == ref:
            return
        cols, signs = self._x(cand, ref)
        self._a[np.ix_(cols, cols)] += np.outer(signs, signs)
        np.add.at(self._b, cols, signs * delta)
        p = float(signs @ self.prior[cols])
        self._py += delta * p
        self._pp += p * p
        self.observations += 1
        self._theta = None

    @property
    def alpha(self) -> float:
        """Scale of the proxy that best fits the observed deltas (1 before any informative data)."""
        if self._pp <= 0:
            return 1.0
        return float(min(max(self._py / self._pp, 0.05), 100.0))

    def theta(self) -> np.ndarray:
        if self._theta is None:
            prior = self.alpha * self.prior
            lhs = self._a + self.ridge * np.eye(len(prior))
            self._theta = np.linalg.solve(lhs, self._b + self.ridge * prior)
        return self._theta

    def predict(self, cands: Sequence[Candidate], ref: Candidate) -> np.ndarray:
        """Predicted ``fitness(c) - fitness(ref)`` of every candidate."""
        theta = self.theta()
        out = np.empty(len(cands))
        for k, c in enumerate(cands):
            cols, signs = self._x(c, ref)
            out[k] = float(signs @ theta[cols])
        return out
