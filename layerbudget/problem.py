"""The search problem: budgets, decision slots and their options, exact linear costs, the additive
proxy, and the ask/tell contract between searchers and executors.

A *budget* is one or more constraints on the whole model that every returned plan must satisfy; each
metric is linear in the per-unit choices, so solvers handle any combination exactly:

- ``avg_bits`` (≤): storage bits of the compressible units, scale/zero/mask metadata included,
  divided by their number of weights (dense units count 16 bits, dropped units 0 bits);
- ``bytes`` (≤): bytes of the whole model — each compressible unit at its compressed size, every
  other parameter (embeddings, norms, biases, heads) at fp16;
- ``sparsity`` (≥): fraction of zero weights over the compressible units (dropped units count as zero);
- ``dropped`` (≥): number of attention/MLP sub-blocks dropped;
- ``latency_us`` (≤): summed matmul latency of the compressible units, in microseconds, on the
  config's ``[latency] target`` at ``tokens`` rows (dropped units cost 0).

A *slot* is one search decision: a tie group of units that share one option, or (when depth is
searched) a sub-block with options ``keep``/``drop``. A *candidate* is a tuple with one option
index per slot; unit slots inside a dropped sub-block are inactive and hold ``-1``, so equal plans
have equal tuples. Every metric is a sum of per-(slot, option) integer coefficients
(:func:`metric_scale` is the one table from a value to that integer form), which makes budget
checks exact and lets every solver use the same numbers. Searchers ask for :class:`EvalRequest`
s and are told :class:`Evaluation` s (:class:`AskTell`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from layerbudget.errors import LayerbudgetError
from layerbudget.options import DROP, parse_option

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


KEEP = "keep"
LATENCY = "latency_us"
INACTIVE = -1
Candidate = tuple[int, ...]


@dataclass(frozen=True)
class Slot:
    """One decision: a tie group of units (``subblock`` set when it can be dropped) or a sub-block."""

    name: str
    options: tuple[str, ...]
    units: tuple[tuple[str, tuple[int, int]], ...]  # (unit name, [N, K] shape)
    block: int
    subblock: str | None = None  # the droppable sub-block this unit slot lies in
    is_subblock: bool = False  # a keep/drop slot

    def __post_init__(self) -> None:
        if not self.options:
            raise LayerbudgetError(f"slot {self.name!r} has an empty option set")
        if len(set(self.options)) != len(self.options):
            raise LayerbudgetError(f"slot {self.name!r} lists an option twice: {self.options}")
        if self.is_subblock and self.options != (KEEP, DROP):
            raise LayerbudgetError(f"sub-block slot {self.name!r} must have options (keep, drop)")

    @property
    def numel(self) -> int:
        return sum(n * k for _, (n, k) in self.units)


class Problem:
    """Slots, per-(slot, option) metric coefficients, and the additive proxy score of each option."""

    def __init__(self, slots: Sequence[Slot], *, other_numel: int = 0, proxy: Mapping[tuple[str, str], float] | None = None):
        self.slots: tuple[Slot, ...] = tuple(slots)
        if not self.slots:
            raise LayerbudgetError("the problem has no slots (no compressible units)")
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise LayerbudgetError("slot names must be unique")
        self.index = {s.name: i for i, s in enumerate(self.slots)}
        self.other_numel = int(other_numel)
        self.unit_numel = sum(s.numel for s in self.slots if not s.is_subblock)
        # children[i]: unit slots inside sub-block slot i
        self.children: dict[int, list[int]] = {}
        self.parent: list[int | None] = []
        sub_index = {s.name: i for i, s in enumerate(self.slots) if s.is_subblock}
        for i, s in enumerate(self.slots):
            p = sub_index.get(s.subblock) if (s.subblock and not s.is_subblock) else None
            if s.subblock and not s.is_subblock and p is None:
                raise LayerbudgetError(f"slot {s.name!r} names sub-block {s.subblock!r}, which has no slot")
            self.parent.append(p)
            if p is not None:
                self.children.setdefault(p, []).append(i)
        self.coef: dict[str, list[np.ndarray]] = {m: [] for m in ("avg_bits", "bytes", "sparsity", "dropped")}
        for s in self.slots:
            bits, nbytes, zeros, dropped = [], [], [], []
            for o in s.options:
                if s.is_subblock:
                    drop = o == DROP
                    bits.append(0)
                    nbytes.append(0)
                    zeros.append(s.numel if drop else 0)
                    dropped.append(1 if drop else 0)
                    continue
                opt = parse_option(o)
                if opt.is_drop:
                    raise LayerbudgetError(f"'drop' is a sub-block option; slot {s.name!r} lists it")
                b = [opt.cost_bits(shape) for _, shape in s.units]
                bits.append(sum(b))
                nbytes.append(sum(-(-x // 8) for x in b))
                zeros.append(sum(opt.zeros(shape) for _, shape in s.units))
                dropped.append(0)
            for m, vals in zip(("avg_bits", "bytes", "sparsity", "dropped"), (bits, nbytes, zeros, dropped)):
                self.coef[m].append(np.asarray(vals, dtype=np.int64))
        self.proxy: list[np.ndarray] = [np.zeros(len(s.options)) for s in self.slots]
        self.features: dict[str, np.ndarray] = {}
        if proxy is not None:
            self.set_proxy(proxy)

    # ----- proxy -------------------------------------------------------------------------------
    def set_proxy(self, proxy: Mapping[tuple[str, str], float]) -> None:
        """Set the additive proxy score of every (slot, option); ``keep`` and missing dense are 0."""
        for i, s in enumerate(self.slots):
            vals = []
            for o in s.options:
                if o == KEEP:
                    vals.append(0.0)
                elif (s.name, o) in proxy:
                    vals.append(float(proxy[(s.name, o)]))
                elif o == "dense":
                    vals.append(0.0)
                else:
                    raise LayerbudgetError(f"the profile has no score for slot {s.name!r} option {o!r}")
            arr = np.asarray(vals, dtype=np.float64)
            if not np.all(np.isfinite(arr)):
                raise LayerbudgetError(f"the profile score of slot {s.name!r} is not finite: {arr}")
            self.proxy[i] = arr

    # ----- latency ------------------------------------------------------------------------------
    def set_latency(self, nanoseconds: Mapping[tuple[str, str], int]) -> None:
        """Add the ``latency_us`` metric: integer nanoseconds of every (unit slot, option).

        Sub-block slots cost 0 (``keep`` adds nothing beyond its units, ``drop`` removes them).
        """
        coef = []
        for s in self.slots:
            if s.is_subblock:
                coef.append(np.zeros(len(s.options), dtype=np.int64))
                continue
            missing = [o for o in s.options if (s.name, o) not in nanoseconds]
            if missing:
                raise LayerbudgetError(f"the latency table has no entry for slot {s.name!r} option(s) {missing}")
            coef.append(np.asarray([int(nanoseconds[(s.name, o)]) for o in s.options], dtype=np.int64))
        self.coef[LATENCY] = coef

    # ----- per-slot features ------------------------------------------------------------------
    def set_feature(self, name: str, values: Mapping[str, float]) -> None:
        """Attach a per-slot measurement (e.g. ``block_influence``); slots not named hold NaN."""
        unknown = sorted(set(values) - set(self.index))
        if unknown:
            raise LayerbudgetError(f"feature {name!r} names unknown slots: {unknown[:5]}")
        arr = np.full(len(self.slots), np.nan)
        for slot, v in values.items():
            arr[self.index[slot]] = float(v)
        self.features[name] = arr

    def feature(self, name: str, *, who: str = "this searcher") -> np.ndarray:
        """A per-slot feature array (NaN where undefined); a one-line error when it was never set."""
        if name not in self.features:
            have = ", ".join(sorted(self.features)) or "none"
            raise LayerbudgetError(f"{who} needs the profile feature {name!r}, which this problem lacks (has: {have})")
        return self.features[name]

    # ----- candidates --------------------------------------------------------------------------
    def active(self, cand: Candidate) -> list[bool]:
        act = []
        for i in range(len(self.slots)):
            p = self.parent[i]
            act.append(p is None or self.slots[p].options[cand[p]] != DROP)
        return act

    def canonical(self, cand: Sequence[int]) -> Candidate:
        """Validate indices and mark unit slots inside dropped sub-blocks inactive (-1)."""
        if len(cand) != len(self.slots):
            raise LayerbudgetError(f"a candidate has {len(self.slots)} entries, but got {len(cand)}")
        out = list(int(c) for c in cand)
        for i, s in enumerate(self.slots):
            p = self.parent[i]
            if p is not None and self.slots[p].options[out[p]] == DROP:
                out[i] = INACTIVE
            elif not 0 <= out[i] < len(s.options):
                raise LayerbudgetError(f"option index {out[i]} out of range for slot {s.name!r}")
        return tuple(out)

    def _coef(self, metric: str) -> list[np.ndarray]:
        if metric not in self.coef:
            raise LayerbudgetError(
                f"budget metric {metric!r} needs a latency table: set [latency] target (cpu, h100, ...) in the config"
            )
        return self.coef[metric]

    def raw(self, cand: Candidate, metric: str) -> int:
        coef = self._coef(metric)
        return int(sum(coef[i][c] for i, c in enumerate(cand) if c != INACTIVE))

    def metric_value(self, metric: str, raw: int) -> float:
        """The value of a budget metric whose coefficients sum to ``raw`` (see :func:`metric_scale`)."""
        divisor, offset = metric_scale(metric, self.unit_numel, self.other_numel)
        return (raw + offset) / divisor

    def metric(self, cand: Candidate, metric: str) -> float:
        """The achieved value of a budget metric (see :func:`metric_scale`)."""
        return self.metric_value(metric, self.raw(cand, metric))

    def metrics(self, cand: Candidate) -> dict[str, float]:
        return {m: self.metric(cand, m) for m in self.coef}

    def rhs(self, c: Constraint) -> float:
        """Right-hand side of ``Σ coef · x (sense) rhs`` for one constraint."""
        divisor, offset = metric_scale(c.metric, self.unit_numel, self.other_numel)
        return c.value * divisor - offset

    def satisfies(self, cand: Candidate, budget: Budget) -> bool:
        return all(c.holds(self.metric(cand, c.metric)) for c in budget.constraints)

    def proxy_score(self, cand: Candidate) -> float:
        return float(sum(self.proxy[i][c] for i, c in enumerate(cand) if c != INACTIVE))

    def with_proxy(self, proxy: Sequence[np.ndarray]) -> Problem:
        """A shallow copy of this problem whose additive proxy is ``proxy`` (per slot, per option)."""
        view = copy.copy(self)
        view.proxy = list(proxy)
        return view

    def shared_options(self) -> list[str]:
        """Options every unit slot offers, in the first unit slot's order (none without unit slots)."""
        units = [s for s in self.slots if not s.is_subblock]
        return [o for o in units[0].options if all(o in s.options for s in units)] if units else []

    def fitting_uniform(self, budget: Budget) -> dict[str, Candidate]:
        """Every uniform plan (see :meth:`uniform`) that satisfies ``budget``: option -> plan."""
        plans = {o: self.uniform(o) for o in self.shared_options()}
        return {o: c for o, c in plans.items() if c is not None and self.satisfies(c, budget)}

    def uniform(self, option: str) -> Candidate | None:
        """Every unit slot at ``option`` and every sub-block kept; ``None`` if a slot lacks it."""
        out = []
        for s in self.slots:
            o = KEEP if s.is_subblock else option
            if o not in s.options:
                return None
            out.append(s.options.index(o))
        return tuple(out)

    def assignment(self, cand: Candidate) -> tuple[dict[str, str], list[str]]:
        """Per-unit option names (``drop`` inside dropped sub-blocks) and the dropped sub-blocks.

        The candidate is checked first (:meth:`canonical`): a wrong length or an index that is not
        one of its slot's options (-1 outside a dropped sub-block included) is an error.
        """
        units: dict[str, str] = {}
        dropped: list[str] = []
        for s, c in zip(self.slots, self.canonical(cand)):
            if s.is_subblock:
                if s.options[c] == DROP:
                    dropped.append(s.name)
                continue
            for u, _ in s.units:
                units[u] = DROP if c == INACTIVE else s.options[c]
        return units, dropped

    def from_assignment(self, units: Mapping[str, str], dropped: Sequence[str] = ()) -> Candidate:
        """Inverse of :meth:`assignment`; tie groups must agree."""
        out = []
        for s in self.slots:
            if s.is_subblock:
                out.append(s.options.index(DROP if s.name in dropped else KEEP))
                continue
            opts = {units.get(u) for u, _ in s.units}
            if None in opts:
                missing = [u for u, _ in s.units if u not in units]
                raise LayerbudgetError(f"the plan gives no option for unit(s) {missing}")
            if s.subblock in dropped:
                out.append(0)
                continue
            if len(opts) != 1:
                raise LayerbudgetError(f"tied units of {s.name!r} must share one option, but got {sorted(opts)}")
            o = opts.pop()
            if o not in s.options:
                raise LayerbudgetError(f"option {o!r} is not available for {s.name!r}; available: {s.options}")
            out.append(s.options.index(o))
        return self.canonical(out)

    # ----- feasibility -------------------------------------------------------------------------
    def metric_range(self, metric: str) -> tuple[float, float]:
        """Smallest and largest achievable value of one metric over all candidates."""
        coef = self._coef(metric)
        lo = hi = 0
        for i, s in enumerate(self.slots):
            if self.parent[i] is not None:
                continue
            if s.is_subblock:
                kids = self.children.get(i, [])
                keep_lo = coef[i][s.options.index(KEEP)] + sum(int(coef[k].min()) for k in kids)
                keep_hi = coef[i][s.options.index(KEEP)] + sum(int(coef[k].max()) for k in kids)
                drop = int(coef[i][s.options.index(DROP)])
                lo += min(keep_lo, drop)
                hi += max(keep_hi, drop)
            else:
                lo += int(coef[i].min())
                hi += int(coef[i].max())
        return self.metric_value(metric, lo), self.metric_value(metric, hi)

    def check_budget(self, budget: Budget) -> None:
        """Raise a one-line error when a constraint on its own cannot be met by any candidate."""
        for c in budget.constraints:
            lo, hi = self.metric_range(c.metric)
            if (c.sense == LE and not c.holds(lo)) or (c.sense != LE and not c.holds(hi)):
                raise LayerbudgetError(
                    f"budget {c} is infeasible: with these options {c.metric} ranges from {lo:.6g} to {hi:.6g}"
                )

    def describe_ranges(self, budget: Budget) -> str:
        parts = []
        for c in budget.constraints:
            lo, hi = self.metric_range(c.metric)
            parts.append(f"{c.metric} ranges from {lo:.6g} to {hi:.6g}")
        return "; ".join(parts)


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
