"""OWL baseline: per-block sparsity from the layerwise outlier distribution (Outlier Weighed Layerwise).

OWL (Yin et al. 2024) gives blocks with more activation outliers less sparsity. The profile provides
the problem feature ``outlier_ratio``: per unit slot, the fraction of its Wanda scores
``|W_ij|·‖X_j‖`` above ``M`` times their mean. Per block ``l`` (``Slot.block``):

- ``D_l`` = the outlier ratio of its unit slots, averaged with their numbers of weights as weights;
- ``N_l`` = ``D_l`` min-max normalised to ``[0, 2λ]`` (all 0 when every block has the same ratio);
- the block's target sparsity ``S_l = S + mean(N) - N_l``: the block densities ``1 - S_l`` are ``N_l``
  shifted so that their mean over blocks is ``1 - S``; more outliers, lower sparsity, and the
  targets span ``2λ`` around ``S``.

Each unit slot takes the sparsity level nearest its block's target (ties: the sparser one). Its
levels are ``dense`` (sparsity 0) and the unstructured options of one method, e.g. ``wanda-0.5``
(the ``method`` parameter; by default the first sparsity method found in the slot options, in slot
order; 2:4 and sparsity+quantization options are not levels). Sub-blocks are kept.

The target ``S`` is set by the budget: it is the smallest common shift of the targets at which the
discretised plan satisfies every constraint. Raising ``S`` moves slots up one level at a time, in
the order their blocks' targets cross the midpoint to the next level, so this is a greedy that moves
the slots furthest below their OWL target first and stops as soon as the budget holds. For a
``sparsity >= S`` budget with levels fine enough, the shift is ``S`` itself; for ``avg_bits`` or
``bytes`` budgets the same rule derives ``S`` (OWL's levels only ever trade sparsity for storage).
With ``λ = 0`` every block has the same target, so all slots change level together and the result
is the least sparse uniform level that fits: the uniform allocation.

One plan is built per ``λ`` in ``lambdas`` (default 0.02, 0.05, 0.08, 0.12); each distinct plan is
scored once and the best fitness wins (ties: the earlier ``λ``), as OWL tunes ``λ`` by perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.options import DENSE, SPARSE_METHODS, parse_option
from layerbudget.problem import KEEP, LE, Candidate, Problem
from layerbudget.search.base import ScoreOnceSearcher, register_searcher
from layerbudget.search.feasible import raw_limit

DEFAULT_LAMBDAS = (0.02, 0.05, 0.08, 0.12)
MAX_LAMBDA = 0.5  # the block targets span 2λ, at most the whole [0, 1] range


def _lambdas_ok(value: tuple[float, ...]) -> str | None:
    if value and all(0 <= x <= MAX_LAMBDA for x in value):
        return None
    return f"must be a non-empty list of numbers in [0, {MAX_LAMBDA}]"


@dataclass(frozen=True)
class OwlParams(Record):
    """``lambdas``: the λ of each plan; ``method``: the sparsity method of the levels (unset: the
    first found in the slot options)."""

    WHERE = "owl"
    lambdas: tuple[float, ...] = rule(DEFAULT_LAMBDAS, check=_lambdas_ok)
    method: Literal["magnitude", "wanda", "sparsegpt"] | None = None


def sparsity_levels(problem: Problem, method: str | None) -> tuple[str, dict[int, list[tuple[float, int]]]]:
    """The sparsity method and, per unit slot, its levels ``[(sparsity, option index), ...]`` ascending.

    Levels are ``dense`` (0.0) and the method's unstructured options without quantization.
    """
    unit = [i for i, s in enumerate(problem.slots) if not s.is_subblock]

    def pure(name: str):
        opt = parse_option(name)
        return opt if opt.sparse and opt.quant is None and opt.pattern is None else None

    found = [o.sparse for i in unit for name in problem.slots[i].options if (o := pure(name)) is not None]
    if not found:
        raise LayerbudgetError(
            f"owl allocates unstructured sparsity, but no slot offers an option such as wanda-0.5 "
            f"(methods: {', '.join(SPARSE_METHODS)})"
        )
    if method is None:
        method = found[0]
    elif method not in SPARSE_METHODS:
        raise LayerbudgetError(f"owl `method` must be one of {', '.join(SPARSE_METHODS)}, but got {method!r}")
    elif method not in found:
        raise LayerbudgetError(
            f"owl `method` is {method!r}, but the slots offer only {', '.join(sorted(set(found)))} sparsity"
        )
    levels: dict[int, list[tuple[float, int]]] = {}
    for i in unit:
        s = problem.slots[i]
        by_sparsity: dict[float, int] = {}
        for k, name in enumerate(s.options):
            opt = pure(name)
            if name == DENSE:
                by_sparsity.setdefault(0.0, k)
            elif opt is not None and opt.sparse == method:
                by_sparsity.setdefault(float(opt.sparsity), k)
        if not by_sparsity:
            raise LayerbudgetError(
                f"owl: slot {s.name!r} offers neither dense nor a {method} sparsity option: {s.options}"
            )
        levels[i] = sorted(by_sparsity.items())
    return method, levels


@register_searcher
class OWLSearcher(ScoreOnceSearcher):
    """Outlier-weighted per-block sparsity, one plan per ``λ``, the best by fitness (module docstring)."""

    name = "owl"
    # declarations read by tests/search/test_searcher_contract.py
    needs_features = ("outlier_ratio",)  # profile features it reads
    # the budget metric it is built for: it chooses sparsity levels only, so avg_bits/bytes budgets
    # are met only where those levels reach them (not on the contract's problems, whose one sparse
    # option costs 9 bits per weight)
    budget_metrics = frozenset({"sparsity"})

    Params = OwlParams

    def __init__(self, problem, budget, *, seed: int = 0, params: OwlParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        self.lambdas = self.params.lambdas
        self.method, self.levels = sparsity_levels(problem, self.params.method)
        ratio = problem.feature("outlier_ratio", who=self.name)
        missing = [problem.slots[i].name for i in self.levels if not math.isfinite(ratio[i])]
        if missing:
            raise LayerbudgetError(
                f"owl: outlier_ratio is missing or not finite for unit slot(s) {missing[:5]}"
            )
        self.blocks = sorted({problem.slots[i].block for i in self.levels})
        num = dict.fromkeys(self.blocks, 0.0)
        den = dict.fromkeys(self.blocks, 0.0)
        for i in self.levels:
            b, n = problem.slots[i].block, problem.slots[i].numel
            num[b] += n * float(ratio[i])
            den[b] += n
        self.outliers = np.array([num[b] / den[b] if den[b] else 0.0 for b in self.blocks])  # D_l
        self.plans: dict[float, Candidate] = {}
        self.offsets: dict[float, np.ndarray] = {}  # per λ: S_l - S for each block
        for lam in self.lambdas:
            self.offsets[lam] = self.block_offsets(lam)
            self.plans[lam] = self._plan(self.offsets[lam])
        self._candidates(list(dict.fromkeys(self.plans.values())))

    def block_offsets(self, lam: float) -> np.ndarray:
        """``S_l - S`` per block (in ``self.blocks`` order): ``mean(N) - N_l``, ``N`` = D scaled to [0, 2λ]."""
        d = self.outliers
        spread = float(d.max() - d.min())
        n = 2 * lam * (d - d.min()) / spread if spread > 0 else np.zeros_like(d)
        return n.mean() - n

    def _plan(self, offsets: np.ndarray) -> Candidate:
        problem, budget = self.problem, self.budget
        offset = {b: float(o) for b, o in zip(self.blocks, offsets)}
        cand = [s.options.index(KEEP) if s.is_subblock else 0 for s in problem.slots]
        level = {i: 0 for i in self.levels}
        events: dict[float, list[int]] = {}  # shift S at which slot i moves up one level (nearest, ties up)
        for i, lv in self.levels.items():
            cand[i] = lv[0][1]
            for (a, _), (b, _) in zip(lv, lv[1:]):
                events.setdefault((a + b) / 2 - offset[problem.slots[i].block], []).append(i)
        constraints = budget.constraints
        sign = np.array([1 if c.sense == LE else -1 for c in constraints])
        limit = np.array([raw_limit(problem, c) for c in constraints], dtype=np.int64)
        coef = [problem.coef[c.metric] for c in constraints]
        totals = np.array([sum(int(cm[i][k]) for i, k in enumerate(cand)) for cm in coef], dtype=np.int64)

        def fits() -> bool:
            return bool(np.all(sign * (totals - limit) <= 0))

        for shift in [None, *sorted(events)]:
            if shift is not None:
                for i in events[shift]:
                    old = cand[i]
                    level[i] += 1
                    cand[i] = self.levels[i][level[i]][1]
                    totals += np.array([int(cm[i][cand[i]]) - int(cm[i][old]) for cm in coef], dtype=np.int64)
            if fits():
                plan = problem.canonical(cand)
                assert problem.satisfies(plan, budget)
                return plan
        raise LayerbudgetError(
            f"owl cannot meet budget {budget} with {self.method} sparsity levels alone (sub-blocks kept): "
            f"at its sparsest the plan reaches {problem.metrics(problem.canonical(cand))}"
        )

    def lambda_of(self, candidate: Candidate) -> float:
        """The first ``λ`` whose plan is ``candidate``."""
        return next(lam for lam, plan in self.plans.items() if plan == candidate)
