"""The contract every registered searcher must pass: within budget, deterministic, clear errors, ties.

A new searcher gets this suite for free; give it small parameters in ``SMALL`` if its defaults are slow.
Baselines that cannot apply to every case say so with class attributes (see :func:`declared`):
``needs_subblocks`` (it only drops sub-blocks: cases without them are skipped), ``needs_features``
(profile features it reads: filled here with fixed synthetic values), ``budget_metrics`` (the only
budget metrics it targets: other cases are skipped) and ``scores_partial_plans`` (it scores plans
that do not meet the budget yet, as SLEB's greedy does: only that check is skipped).
"""

from __future__ import annotations

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import INACTIVE, KEEP, Budget, Candidate, Problem, Slot
from layerbudget.search.base import registered_searchers
from layerbudget.search.registry import known_searchers, make_searcher

SMALL: dict[str, dict[str, object]] = {
    "evolution": {"generations": 4, "offspring": 6, "stages": [(3, 1), (1, 2)]},
    "random": {"n": 6},
    "optuna": {"max_evaluations": 16},
    "hybrid": {"generations": 4, "offspring": 6, "stages": [(3, 1), (1, 2)]},
}
ONE_CONSTRAINT_ONLY = {"dp"}
OPTIONS = ("dense", "rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "magnitude-0.5", "magnitude-0.5+rtn-b4-g128")


def tied_problem(drop: bool = False) -> Problem:
    """3 blocks: a tied q/k/v slot, an o slot of another shape, a tied gate/up slot (+ droppable sub-blocks)."""
    rng = np.random.default_rng(0)
    slots, proxy = [], {}
    for b in range(3):
        attn, mlp = (f"b{b}.attn", f"b{b}.mlp") if drop else (None, None)
        qkv = tuple((f"b{b}.{n}", (64, 128)) for n in "qkv")
        o = ((f"b{b}.o", (32, 256)),)
        gate_up = ((f"b{b}.gate", (64, 128)), (f"b{b}.up", (64, 128)))
        if drop:
            slots.append(Slot(attn, (KEEP, "drop"), qkv + o, b, is_subblock=True))
            slots.append(Slot(mlp, (KEEP, "drop"), gate_up, b, is_subblock=True))
            proxy[(attn, "drop")], proxy[(mlp, "drop")] = 3.0 + b, 4.0 + b
        slots.append(Slot(f"b{b}.qkv", OPTIONS, qkv, b, subblock=attn))
        slots.append(Slot(f"b{b}.o", OPTIONS, o, b, subblock=attn))
        slots.append(Slot(f"b{b}.gate_up", OPTIONS, gate_up, b, subblock=mlp))
    for s in slots:
        if not s.is_subblock:
            scale = rng.uniform(0.5, 2.0)
            for o, base in zip(OPTIONS[1:], (1.0, 0.4, 0.15, 0.6, 0.7)):
                proxy[(s.name, o)] = scale * base
    return Problem(slots, other_numel=1000, proxy=proxy)


class Scorer:
    """Proxy plus a non-additive term (neighbouring slots both below 4 bits), plus batch-seeded noise."""

    def __init__(self, problem: Problem, noise: float = 0.01):
        self.problem, self.noise = problem, noise

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        p = self.problem
        low = [c != INACTIVE and "b2" in p.slots[i].options[c] for i, c in enumerate(candidate)]
        inter = 0.3 * sum(a and b for a, b in zip(low, low[1:]))
        rng = np.random.default_rng([batch, 0 if windows is None else windows, *(c + 1 for c in candidate)])
        return p.proxy_score(candidate) + inter + self.noise * float(rng.normal())


CASES = {
    "bits": (False, {"avg_bits": 4.0}),
    "bytes": (True, {"bytes": 60000}),
    "sparsity": (True, {"sparsity": 0.3}),
    "bits+sparsity": (False, {"avg_bits": 4.0, "sparsity": 0.25}),
    "bits+bytes": (True, {"avg_bits": 3.8, "bytes": 62000}),
}


def declared(name: str, attribute: str, default: object) -> object:
    """A searcher's class-level declaration for this suite (``default`` when it declares nothing)."""
    return getattr(registered_searchers()[name], attribute, default)


def skip_if_not_applicable(name: str, problem: Problem, budget: Budget) -> None:
    if declared(name, "needs_subblocks", False) and not any(s.is_subblock for s in problem.slots):
        pytest.skip(f"{name} only drops sub-blocks, and this problem has none")
    metrics = declared(name, "budget_metrics", None)
    if metrics is not None and not set(budget.to_dict()) <= set(metrics):
        pytest.skip(f"{name} targets only {sorted(metrics)} budgets")


def _run(name: str, problem: Problem, budget: Budget, seed: int = 0):
    for feature in declared(name, "needs_features", ()):  # fixed synthetic profile features
        values = np.random.default_rng(len(feature)).uniform(0.01, 1.0, len(problem.slots))
        problem.set_feature(feature, {s.name: float(v) for s, v in zip(problem.slots, values)})
    searcher = make_searcher(name, problem, budget, seed=seed, **SMALL.get(name, {}))
    return run_search(searcher, InlineExecutor(Scorer(problem)))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", known_searchers())
def test_stays_within_budget_and_respects_ties(name, case):
    drop, spec = CASES[case]
    budget = Budget.from_dict(spec)
    if name in ONE_CONSTRAINT_ONLY and len(spec) > 1:
        pytest.skip(f"{name} handles one constraint")
    p = tied_problem(drop)
    skip_if_not_applicable(name, p, budget)
    out = _run(name, p, budget)
    assert p.satisfies(out.result, budget)
    assert p.canonical(out.result) == out.result
    partial = declared(name, "scores_partial_plans", False)
    for e in out.evaluations:  # nothing over budget is ever evaluated (unless declared)
        assert p.canonical(e.candidate) == e.candidate
        assert partial or p.satisfies(e.candidate, budget), (e.candidate, p.metrics(e.candidate))
    units, dropped = p.assignment(out.result)
    for s in p.slots:
        if not s.is_subblock:
            assert len({units[u] for u, _ in s.units}) == 1, f"tied units of {s.name} differ"
    assert p.from_assignment(units, dropped) == out.result


@pytest.mark.parametrize("name", known_searchers())
def test_deterministic_for_a_seed(name):
    p = tied_problem(drop=True)
    budget = Budget.from_dict({"avg_bits": 3.9})
    skip_if_not_applicable(name, p, budget)
    a, b = _run(name, p, budget, seed=3), _run(name, p, budget, seed=3)
    assert a.result == b.result
    assert [e.request for e in a.evaluations] == [e.request for e in b.evaluations]
    assert [e.fitness for e in a.evaluations] == [e.fitness for e in b.evaluations]


@pytest.mark.parametrize(
    "spec",
    [{"avg_bits": 1.0}, {"sparsity": 0.9}, {"avg_bits": 2.6, "sparsity": 0.5}],
    ids=["bits-below-range", "sparsity-above-range", "contradictory-pair"],
)
@pytest.mark.parametrize("name", known_searchers())
def test_raises_on_infeasible_budget(name, spec):
    p = tied_problem()
    with pytest.raises(LayerbudgetError):
        _run(name, p, Budget.from_dict(spec))
