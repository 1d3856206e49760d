"""The searcher contract as checks any searcher can be put through, by registered name or by class.

``test_searcher_contract.py`` runs them on every registered searcher and ``test_contract_catches.py``
on deliberately broken searchers, to show that each check fails when it should. The checks raise
``AssertionError`` with a message saying what broke:

- every candidate a searcher asks for is inspected as asked, before ``Problem`` expands it: one entry
  per slot (a tie group is one slot, so its units cannot differ), option indices in range, ``-1``
  exactly inside dropped sub-blocks, within the budget (unless declared), and the problem's tie
  groups unchanged by the search;
- ``max_evaluations`` (for searchers that take it) caps every request, fresh-window ones included;
- the same seed gives the same requests, fitness and result, also in another process with another
  string-hash seed (run as a script, this module prints those runs as JSON);
- an infeasible budget raises a ``LayerbudgetError`` whose message states the achievable range of a
  budget metric, and that range excludes the budget's value.

A searcher opts out of a check with a class attribute (see :data:`OPT_OUTS`) and a one-line reason in
``contract_reasons``; a case it opts out of must then end in a ``LayerbudgetError``, never a skip.
Inline and Ray executors are not compared here: a searcher sees only fitness values in request order,
which ``tests/evaluators/test_ray_executor.py`` checks are the same on both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import Executor
from layerbudget.evaluators.loop import SearchOutcome, run_search
from layerbudget.options import DROP
from layerbudget.problem import INACTIVE, KEEP, Budget, Candidate, EvalRequest, Evaluation, Problem, Slot
from layerbudget.search.base import Searcher
from layerbudget.search.registry import make_searcher, searcher_class

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SMALL: dict[str, dict[str, object]] = {  # parameters that keep slow defaults short
    "evolution": {"generations": 4, "offspring": 6, "stages": [(3, 1), (1, 2)]},
    "random": {"n": 6},
    "optuna": {"max_evaluations": 16},
    "hybrid": {"generations": 4, "offspring": 6, "stages": [(3, 1), (1, 2)]},
}
OPTIONS = ("dense", "rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "magnitude-0.5", "magnitude-0.5+rtn-b4-g128")
OPT_OUTS: dict[str, object] = {  # declaration -> its value when not declared
    "needs_subblocks": False,  # cases without droppable sub-blocks must raise
    "budget_metrics": None,  # cases with other budget metrics must raise or fit
    "max_constraints": None,  # cases with more constraints must raise
    "scores_partial_plans": False,  # may score plans over the budget
}
CASES = {  # name: (problem kind, budget)
    "bits": ("flat", {"avg_bits": 4.0}),
    "bytes": ("drop", {"bytes": 60000}),
    "sparsity": ("drop", {"sparsity": 0.3}),
    "bits+sparsity": ("flat", {"avg_bits": 4.0, "sparsity": 0.25}),
    "bits+bytes": ("drop", {"avg_bits": 3.8, "bytes": 62000}),
}


def tied_problem(kind: str = "flat") -> Problem:
    """3 blocks of a tied q/k/v slot, an o slot of another shape and a tied gate/up slot; ``drop``: every
    attention/MLP sub-block droppable, ``partial``: only the MLP ones (attention units stay)."""
    rng = np.random.default_rng(0)
    slots, proxy = [], {}
    for b in range(3):
        attn = f"b{b}.attn" if kind == "drop" else None
        mlp = f"b{b}.mlp" if kind in ("drop", "partial") else None
        qkv = tuple((f"b{b}.{n}", (64, 128)) for n in "qkv")
        o = ((f"b{b}.o", (32, 256)),)
        gate_up = ((f"b{b}.gate", (64, 128)), (f"b{b}.up", (64, 128)))
        if attn:
            slots.append(Slot(attn, (KEEP, DROP), qkv + o, b, is_subblock=True))
            proxy[(attn, DROP)] = 3.0 + b
        if mlp:
            slots.append(Slot(mlp, (KEEP, DROP), gate_up, b, is_subblock=True))
            proxy[(mlp, DROP)] = 4.0 + b
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
    """Proxy plus a non-additive term (neighbouring slots both below 4 bits), plus request-seeded noise."""

    def __init__(self, problem: Problem, noise: float = 0.01):
        self.problem, self.noise = problem, noise

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        p = self.problem
        low = [c != INACTIVE and "b2" in p.slots[i].options[c] for i, c in enumerate(candidate)]
        inter = 0.3 * sum(a and b for a, b in zip(low, low[1:]))
        rng = np.random.default_rng([batch, 0 if windows is None else windows, *(c + 1 for c in candidate)])
        return p.proxy_score(candidate) + inter + self.noise * float(rng.normal())


# ----- declarations -----------------------------------------------------------------------------
Target = str | type[Searcher]


def searcher_type(target: Target) -> type[Searcher]:
    return searcher_class(target) if isinstance(target, str) else target


def declared(target: Target, attribute: str) -> Any:
    """A searcher's declaration for this suite (its :data:`OPT_OUTS` default when it declares nothing)."""
    return getattr(searcher_type(target), attribute, OPT_OUTS.get(attribute))


def not_applicable(target: Target, problem: Problem, budget: Budget) -> str | None:
    """Why the searcher opts out of this case (its declared reason), or None when it applies."""
    reasons = getattr(searcher_type(target), "contract_reasons", {})
    if declared(target, "needs_subblocks") and not any(s.is_subblock for s in problem.slots):
        return reasons["needs_subblocks"]
    metrics = declared(target, "budget_metrics")
    if metrics is not None and not set(budget.to_dict()) <= set(metrics):
        return reasons["budget_metrics"]
    most = declared(target, "max_constraints")
    if most is not None and len(budget.constraints) > most:
        return reasons["max_constraints"]
    return None


def check_opt_outs_are_justified(target: Target) -> None:
    """Every declared opt-out has a one-line reason, and every reason belongs to a declared opt-out."""
    cls = searcher_type(target)
    reasons = dict(getattr(cls, "contract_reasons", {}))
    used = {a for a, default in OPT_OUTS.items() if getattr(cls, a, default) != default}
    assert set(reasons) == used, f"{cls.__name__}: opt-outs {sorted(used)}, reasons given for {sorted(reasons)}"
    for a, why in reasons.items():
        assert isinstance(why, str) and why.strip() and "\n" not in why, f"{cls.__name__}.{a}: reason {why!r}"


# ----- running a searcher under inspection -------------------------------------------------------
def build(target: Target, problem: Problem, budget: Budget, seed: int = 0, **params: Any) -> Searcher:
    """The searcher (suite parameters for slow registered ones), with synthetic profile features."""
    cls = searcher_type(target)
    for feature in getattr(cls, "needs_features", ()):  # fixed synthetic profile features
        values = np.random.default_rng(len(feature)).uniform(0.01, 1.0, len(problem.slots))
        problem.set_feature(feature, {s.name: float(v) for s, v in zip(problem.slots, values)})
    if isinstance(target, str):
        return make_searcher(target, problem, budget, seed=seed, **{**SMALL.get(target, {}), **params})
    return cls(problem, budget, seed=seed, params=cls.Params(**params))


def ties(problem: Problem) -> dict[str, tuple[str, ...]]:
    """Tie groups as the test built them: unit slot -> its units."""
    return {s.name: tuple(u for u, _ in s.units) for s in problem.slots if not s.is_subblock}


def check_candidate(problem: Problem, groups: Mapping[str, tuple[str, ...]], cand: object, what: str) -> None:
    """A candidate as a searcher gave it: one int per slot, valid indices, ``-1`` exactly where dropped."""
    slots = problem.slots
    assert isinstance(cand, tuple) and all(type(c) is int for c in cand), f"{what} {cand!r} is not a tuple of ints"
    units = sum(len(u) for u in groups.values())
    assert len(cand) == len(slots), (
        f"{what} has {len(cand)} entries for {len(slots)} slots: a tie group is one slot with one option"
        + (" (one entry per unit: tied units can differ)" if len(cand) == units else "")
    )
    dropped = {s.name for s, c in zip(slots, cand) if s.is_subblock and c == s.options.index(DROP)}
    for s, c in zip(slots, cand):
        if s.subblock in dropped and not s.is_subblock:
            assert c == INACTIVE, f"{what}: unit slot {s.name} inside dropped {s.subblock} is {c}, not -1"
        else:
            assert 0 <= c < len(s.options), f"{what}: slot {s.name} has option index {c} of {len(s.options)}"


class Inspector(Executor):
    """Checks every request before scoring it (:func:`check_candidate`, the budget, the cap)."""

    def __init__(self, problem: Problem, budget: Budget, *, partial: bool, cap: int | None):
        self.problem, self.budget, self.partial, self.cap = problem, budget, partial, cap
        self.groups = ties(problem)
        self.scorer = Scorer(problem)
        self.count = 0

    def evaluate(self, requests: list[EvalRequest]) -> list[Evaluation]:
        for r in requests:
            check_candidate(self.problem, self.groups, r.candidate, "an asked candidate")
            assert self.partial or self.problem.satisfies(r.candidate, self.budget), (
                f"asked to score {r.candidate}, outside budget {self.budget}: {self.problem.metrics(r.candidate)}"
            )
        self.count += len(requests)
        assert self.cap is None or self.count <= self.cap, (
            f"asked for {self.count} evaluations, over its max_evaluations={self.cap}"
        )
        return [Evaluation(r, float(self.scorer.score(r.candidate, r.windows, r.batch))) for r in requests]


def run_checked(
    target: Target, problem: Problem, budget: Budget, seed: int = 0, *, cap: int | None = None, **params: Any
) -> SearchOutcome:
    """Build and run a searcher under inspection; check its result and that the problem is unchanged."""
    groups = ties(problem)
    searcher = build(target, problem, budget, seed, **({"max_evaluations": cap} if cap else {}), **params)
    inspector = Inspector(problem, budget, partial=declared(target, "scores_partial_plans"), cap=cap)
    out = run_search(searcher, inspector)
    check_candidate(problem, groups, out.result, "the result")
    assert problem.satisfies(out.result, budget), f"the result is outside budget {budget}"
    assert ties(problem) == groups, "the search changed the problem's tie groups"
    return out


def check_case(target: Target, case: str) -> None:
    """Within budget with ties kept; a case the searcher opts out of must raise instead (or fit)."""
    kind, spec = CASES[case]
    problem, budget = tied_problem(kind), Budget.from_dict(spec)
    if not_applicable(target, problem, budget) is None:
        run_checked(target, problem, budget)
        return
    try:
        run_checked(target, problem, budget)
    except LayerbudgetError:
        pass


def applicable_case(target: Target) -> str:
    """The first case the searcher does not opt out of."""
    return next(c for c, (k, spec) in CASES.items() if not_applicable(target, tied_problem(k), Budget.from_dict(spec)) is None)


def fingerprint(target: Target, case: str, seed: int = 3) -> dict[str, Any]:
    """Everything a run shows of its randomness: requests, fitness, result (JSON-able)."""
    kind, spec = CASES[case]
    out = run_checked(target, tied_problem(kind), Budget.from_dict(spec), seed)
    return {
        "requests": [[list(e.request.candidate), e.request.windows, e.request.batch] for e in out.evaluations],
        "fitness": [e.fitness for e in out.evaluations],
        "result": list(out.result),
    }


def has_cap(target: Target) -> bool:
    return "max_evaluations" in {f.name for f in fields(searcher_type(target).Params)}


# ----- infeasible budgets -----------------------------------------------------------------------
RANGE = re.compile(r"(\w+) ranges from (\S+?) to (\S+?)(?:[;,)]|\s|$)")


def check_infeasible_message(message: str, budget: Budget) -> None:
    """The message states the achievable range of a budget metric, and the range excludes its value."""
    limits = {c.metric: c for c in budget.constraints}
    stated = [(m, float(lo), float(hi)) for m, lo, hi in RANGE.findall(message) if m in limits]
    assert stated, f"no achievable range of {sorted(limits)} in the message: {message!r}"
    excluding = [m for m, lo, hi in stated if (lo >= limits[m].value if limits[m].sense == "<=" else hi <= limits[m].value)]
    assert excluding, f"every stated range admits the budget {budget}: {message!r}"


def check_raises_infeasible(target: Target, problem: Problem, budget: Budget) -> str:
    """The searcher refuses the budget with a message that explains it; returns the message."""
    try:
        run_checked(target, problem, budget)
    except LayerbudgetError as exc:
        check_infeasible_message(str(exc), budget)
        return str(exc)
    raise AssertionError(f"no error for infeasible budget {budget}")


def fingerprints_in_processes(specs: list[tuple[str, str]], hash_seeds=("1", "2")) -> list[dict]:
    """The fingerprints of ``specs`` [(target, case)] computed in one new process per string-hash seed."""
    args = [x for spec in specs for x in spec]
    out = []
    for h in hash_seeds:
        env = {**os.environ, "PYTHONHASHSEED": h, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, str(HERE / "contract_checks.py"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.append(json.loads(proc.stdout))
    return out


if __name__ == "__main__":  # fingerprints for another process: TARGET CASE ... (name or module:Class)
    import importlib

    runs = {}
    for spec, case in zip(sys.argv[1::2], sys.argv[2::2]):
        mod, _, cls = spec.partition(":")
        target = getattr(importlib.import_module(mod), cls) if cls else spec
        runs[spec] = fingerprint(target, case)
    print(json.dumps(runs))
