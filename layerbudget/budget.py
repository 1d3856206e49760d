"""Budgets: one or more constraints on the whole model that every returned plan must satisfy.

Metrics (each is linear in the per-unit choices, so solvers handle any combination exactly):

- ``avg_bits`` (≤): storage bits of the compressible units, scale/zero/mask metadata included,
  divided by their number of weights (dense units count 16 bits, dropped units 0 bits);
- ``bytes`` (≤): bytes of the whole model — each compressible unit at its compressed size, every
  other parameter (embeddings, norms, biases, heads) at fp16;
- ``sparsity`` (≥): fraction of zero weights over the compressible units (dropped units count as zero);
- ``dropped`` (≥): number of attention/MLP sub-blocks dropped;
- ``latency_us`` (≤): summed matmul latency of the compressible units, in microseconds, on the
  config's ``[latency] target`` at ``tokens`` rows (from :mod:`layerbudget.profiles.latency`;
  dropped units cost 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from layerbudget.errors import LayerbudgetError

LE = "<="
GE = ">="

METRICS: dict[str, str] = {"avg_bits": LE, "bytes": LE, "sparsity": GE, "dropped": GE, "latency_us": LE}
NS_PER_US = 1000  # latency coefficients are integer nanoseconds; the metric is in microseconds


def metric_scale(metric: str, unit_numel: int, other_numel: int) -> tuple[int, int]:
    """``(divisor, offset)`` such that a metric's value is ``(raw + offset) / divisor``.

    ``raw`` is the integer sum of per-(slot, option) coefficients that solvers and budget checks
    work with; this is the one table from a metric's value to that integer form.
    ``unit_numel``: weights of the compressible units; ``other_numel``: every other parameter.
    """
    table = {
        "avg_bits": (unit_numel, 0),  # storage bits per compressible weight
        "sparsity": (unit_numel, 0),  # zero weights per compressible weight
        "bytes": (1, 2 * other_numel),  # units' bytes plus every other parameter at fp16
        "dropped": (1, 0),  # sub-blocks
        "latency_us": (NS_PER_US, 0),  # nanoseconds
    }
    if metric not in table:
        raise LayerbudgetError(f"unknown budget metric {metric!r}; known: {', '.join(METRICS)}")
    return table[metric]


@dataclass(frozen=True)
class Constraint:
    """``metric`` must stay ``<=`` (or ``>=`` for sparsity and dropped) ``value``."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise LayerbudgetError(f"unknown budget metric {self.metric!r}; known: {', '.join(METRICS)}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise LayerbudgetError(f"budget {self.metric} must be a finite number, but got {self.value!r}")
        if self.value < 0:
            raise LayerbudgetError(f"budget {self.metric} must be non-negative, but got {self.value}")
        if self.metric == "sparsity" and self.value >= 1:
            raise LayerbudgetError(f"budget sparsity is a fraction in [0, 1), but got {self.value}")

    @property
    def sense(self) -> str:
        return METRICS[self.metric]

    def holds(self, achieved: float, tol: float = 1e-9) -> bool:
        if self.sense == LE:
            return achieved <= self.value * (1 + tol) + tol
        return achieved >= self.value * (1 - tol) - tol

    def __str__(self) -> str:
        return f"{self.metric}{self.sense}{self.value:g}"


@dataclass(frozen=True)
class Budget:
    """A set of constraints, at most one per metric."""

    constraints: tuple[Constraint, ...]

    def __post_init__(self) -> None:
        if not self.constraints:
            raise LayerbudgetError("a budget needs at least one constraint, e.g. avg_bits = 3.5")
        metrics = [c.metric for c in self.constraints]
        if len(set(metrics)) != len(metrics):
            raise LayerbudgetError(f"a budget names each metric once, but got {metrics}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Budget:
        if not isinstance(data, Mapping):
            raise LayerbudgetError(f"a budget is a table of metric = value, but got {data!r}")
        return cls(tuple(Constraint(str(k), v) for k, v in data.items()))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, float]:
        return {c.metric: c.value for c in self.constraints}

    def __str__(self) -> str:
        return ", ".join(str(c) for c in self.constraints)
