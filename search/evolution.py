"""Evolutionary search (EvoPress-style): level-switch mutation, budget repair, staged (1+λ) selection.

Each generation mutates the parent into ``offspring`` new feasible candidates and filters them
through stages ``[(survivors, windows), ...]``: at every stage each remaining candidate and the parent
are scored on ``windows`` calibration windows of one fresh batch, and the best ``survivors`` go on;
the best of the last stage (the parent included: elitism) becomes the next parent.

Presets follow EvoPress's table (generations, offspring, survivors per stage). Its stage sizes are
in tokens; one calibration window (``seq_len`` tokens) stands for 2048 EvoPress tokens:
``windows = max(1, ceil(tokens / 2048))``. A stage of 0 windows compares on the standard
calibration windows instead (scores are kept, so the parent is not re-scored there). Under an
evaluation cap with the "auto" preset the search is sized to the cap
(see :meth:`EvolutionSearcher._fit_to_cap`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.options import DROP
from layerbudget.problem import Budget, Candidate, EvalRequest, Evaluation
from layerbudget.search.base import Searcher, register_searcher
from layerbudget.search.feasible import FeasibleSpace
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.surrogate import DeltaSurrogate

TOKENS_PER_WINDOW = 2048


CALIB = 0  # stage windows 0: the standard calibration windows (known scores are never asked again)
MIN_GENERATIONS = 12  # when sized to an evaluation cap (preset "auto")
MIN_OFFSPRING = 4
ADAPT_START = 2
MAX_RADIUS = 6  # mutations chained to one child when the parent's nearer neighbours were all seen


def _windows(tokens: int) -> int:
    return max(1, math.ceil(tokens / TOKENS_PER_WINDOW))


# name: (generations, offspring, [(survivors, EvoPress tokens), ...]); depth generations are k(n-k)/1.5
PRESETS: dict[str, tuple[int | None, int, list[tuple[int, int]]]] = {
    "quantization": (150, 128, [(16, 2048), (4, 16384), (1, 131072)]),
    "sparsity": (400, 64, [(8, 2048), (2, 16384), (1, 65536)]),
    "depth": (None, 32, [(2, 2048), (1, 32768)]),
    "superfast": (400, 16, [(1, 512), (1, 8192)]),
}


def initial_candidate(
    space: FeasibleSpace, budget: Budget, rng: np.random.Generator, init: str, seed_plan: Any
) -> Candidate:
    """The starting parent for ``init`` in {"uniform", "random", "plan"}; raises when none fits."""
    problem = space.problem
    if init == "plan":
        if seed_plan is None:
            raise LayerbudgetError('init="plan" needs an init_candidate (option indices or unit -> option)')
        if isinstance(seed_plan, Mapping):
            # unit -> option; a sub-block whose units all say "drop" is dropped
            drops = [
                problem.slots[s].name
                for s in space.subs
                if problem.children.get(s)
                and all(
                    seed_plan.get(u) == DROP for k in problem.children[s] for u, _ in problem.slots[k].units
                )
            ]
            cand = problem.from_assignment(seed_plan, drops)
        else:
            cand = problem.canonical(list(seed_plan))
        if not problem.satisfies(cand, budget):
            raise LayerbudgetError(
                f"init_candidate violates budget {budget}: it reaches {problem.metrics(cand)}"
            )
        return cand
    if init == "random":
        for _ in range(16):
            cand = space.random(rng, space.required_drops(budget))
            if cand is not None:
                return cand
    cand = space.best_uniform(budget) or space.greedy()
    if cand is not None:  # spend what the uniform plan leaves of the budget where the proxy gains most
        cand = space.fill(cand)
    if cand is None:  # greedy repair can miss feasible points with several constraints; ask the ILP
        cand = solve_ilp(problem, budget)  # (it raises a clear error when none exists)
    return cand


def _stages_ok(stages: tuple[tuple[int, int], ...]) -> str | None:
    if stages and all(s >= 1 and w >= 0 for s, w in stages):
        return None
    return "must be a non-empty list of [survivors >= 1, windows >= 0] pairs (0 windows: the standard calibration windows)"


@dataclass(frozen=True)
class EvolutionParams(Record):
    """Parameters of :class:`EvolutionSearcher` (``None``: from the preset).

    ``preset`` "auto": depth for keep/drop-only problems, sparsity for sparsity budgets, else
    quantization; with ``max_evaluations`` and neither ``offspring`` nor ``stages`` given, the search
    is sized to the cap and scores on the standard windows (:meth:`EvolutionSearcher._fit_to_cap`).
    ``stages``: ``[(survivors, windows), ...]``, a stage of 0 windows compares on the standard
    calibration windows. ``init``: "uniform" (the fitting uniform plan of least proxy, its leftover
    budget spent by the proxy), "random", or "plan" with ``init_candidate`` (option indices per
    slot, or unit -> option name). ``prescreen`` k > 1: draw k times the offspring count of new
    children and score only those a :class:`~layerbudget.search.surrogate.DeltaSurrogate` ranks best.
    """

    WHERE = "evolution"
    preset: Literal["auto", "quantization", "sparsity", "depth", "superfast"] = "auto"
    generations: int | None = rule(None, least=1)
    offspring: int | None = rule(None, least=1)
    stages: tuple[tuple[int, int], ...] | None = rule(None, check=_stages_ok)
    max_evaluations: int | None = rule(None, least=1)
    init: Literal["uniform", "random", "plan"] = "uniform"
    init_candidate: tuple[int, ...] | Mapping[str, str] | None = None
    prescreen: int = rule(1, least=1)


@register_searcher
class EvolutionSearcher(Searcher):
    """(1+λ) evolution with staged selection on fresh calibration batches (see module docstring and
    :class:`EvolutionParams`).

    Duplicates are rejected: no candidate is offered twice (seeds passed to :meth:`remember`
    included). When random draws find no unseen neighbour of the parent, children are drawn from
    chains of 2, 3, ... up to ``MAX_RADIUS`` mutations; the search ends after ``generations``, at
    the cap, or when even those find nothing new. Candidates that score NaN are quarantined.
    """

    name = "evolution"
    Params = EvolutionParams

    def __init__(self, problem, budget, *, seed: int = 0, params: EvolutionParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        p: EvolutionParams = self.params
        self.prescreen = p.prescreen
        self.surrogate = DeltaSurrogate(problem) if self.prescreen > 1 else None
        self.space = FeasibleSpace(problem, budget)
        preset = p.preset
        auto = preset == "auto"
        if auto:
            depth_only = bool(self.space.subs) and all(
                len(problem.slots[i].options) == 1 for i in self.space.units
            )
            preset = (
                "depth" if depth_only else "sparsity" if "sparsity" in budget.to_dict() else "quantization"
            )
        self.preset = preset
        self.parent = initial_candidate(self.space, budget, self.rng, p.init, p.init_candidate)
        self.calib: dict[Candidate, float] = {}  # fitness on the standard calibration windows
        gens, lam, stage_tokens = PRESETS[preset]
        if gens is None:  # depth: k(n-k)/1.5 generations for k of n sub-blocks dropped
            n, k = len(self.space.subs), round(problem.metric(self.parent, "dropped"))
            gens = max(1, math.ceil(k * (n - k) / 1.5))
        self.generations = gens if p.generations is None else p.generations
        self.offspring = lam if p.offspring is None else p.offspring
        self.stages = [(s, _windows(t)) for s, t in stage_tokens] if p.stages is None else list(p.stages)
        self.max_evaluations = p.max_evaluations
        self.adaptive: int | None = None  # the current offspring count when it adapts (see _fit_to_cap)
        if auto and self.max_evaluations is not None and p.offspring is None and p.stages is None:
            self._fit_to_cap(self.max_evaluations, keep_generations=p.generations is not None)
        if self.max_evaluations is not None and self.max_evaluations < self._generation_cost(1):
            raise LayerbudgetError(
                f"evolution max_evaluations must cover one generation with one offspring "
                f"({self._generation_cost(1)} evaluations for {len(self.stages)} stages), but got {self.max_evaluations}"
            )
        self.seen: set[Candidate] = {self.parent}
        self.generation = self.evaluations = self.finite = 0
        self.quarantined: set[Candidate] = set()
        self.nan_count = self.rejected = self.duplicates = 0
        self.widened = 1  # the most mutations chained to one child so far
        self._stage = 0
        self._pool: list[Candidate] = []
        self._asked: list[EvalRequest] = []
        self._done = False

    def _fit_to_cap(self, cap: int, *, keep_generations: bool) -> None:
        """Size the search to a cap of ``cap`` evaluations (preset "auto" without stage overrides).

        EvoPress's presets spend thousands of evaluations (e.g. 150 generations of 128 offspring)
        and save time with staged selection on small fresh batches; cut to a few hundred, they stop
        after a handful of generations. When a request is the unit of cost, each one is better spent
        on the standard calibration windows, the measure every plan is finally judged by: a fresh
        batch estimates the whole calibration pool, whose best plan can differ from the standard
        set's, so staged selection keeps losing it. So: one stage on the
        standard windows (the parent is never re-scored), and a self-adjusting number of offspring
        between ``MIN_OFFSPRING`` and ``cap // MIN_GENERATIONS`` (at most the preset's): halved
        after a generation that improved the parent, doubled after one that did not, so easy
        progress takes many cheap steps and a local optimum gets a wide look around it. The cap, not
        the preset's generation count, ends the search.
        """
        self.offspring = max(MIN_OFFSPRING, min(self.offspring, cap // MIN_GENERATIONS))
        self.stages = [(1, CALIB)]
        self.adaptive = max(MIN_OFFSPRING, self.offspring // ADAPT_START)
        if not keep_generations:
            self.generations = max(self.generations, cap)

    def _generation_cost(self, lam: int) -> int:
        """Most evaluations one generation of ``lam`` offspring asks for (stage by stage)."""
        cost, pool = 0, lam
        parent_known = self.parent in self.calib
        for k, (survivors, windows) in enumerate(self.stages):
            cost += pool + (0 if windows == CALIB and parent_known else 1)
            if windows == CALIB:
                parent_known = True
            if k < len(self.stages) - 1:
                pool = min(survivors, pool)
        return cost

    def remember(self, scores: Mapping[Candidate, float]) -> None:
        """Standard-window fitness the caller already knows (e.g. scored seeds): never asked again."""
        for cand, f in scores.items():
            self.calib[cand] = float(f)
            self.seen.add(cand)
            if math.isnan(f):
                self.quarantined.add(cand)

    def _offspring(self) -> list[Candidate]:
        lam = self.offspring if self.adaptive is None else self.adaptive
        if self.max_evaluations is not None:
            left = self.max_evaluations - self.evaluations
            while lam > 0 and self._generation_cost(lam) > left:
                lam -= 1
        want = lam * self.prescreen
        pool: list[Candidate] = []
        drawn: set[Candidate] = set()
        radius = 1
        while lam > 0 and not pool and radius <= MAX_RADIUS:
            for _ in range(10 * want + 50):  # then the unseen neighbours are (nearly) exhausted
                if len(pool) >= want:
                    break
                child = self._chain(radius)
                if child is None:
                    self.rejected += 1
                elif child in self.seen or child in drawn:
                    self.duplicates += 1
                else:
                    drawn.add(child)
                    pool.append(child)
            radius += 1  # every neighbour seen: look further away (chains of mutations)
        self.widened = max(self.widened, radius - 1)
        if self.surrogate is not None and len(pool) > lam:
            order = np.argsort(self.surrogate.predict(pool, self.parent), kind="stable")
            pool = [pool[k] for k in order[:lam]]
        self.seen.update(pool)
        return pool

    def _chain(self, radius: int) -> Candidate | None:
        """The parent mutated ``radius`` times in a row (None when a mutation cannot be repaired)."""
        child: Candidate | None = self.parent
        for _ in range(radius):
            if child is None:
                break
            child = self.space.mutate(child, self.rng)
        return child

    def ask(self) -> list[EvalRequest]:
        while not self._done:
            if self._stage == 0:
                if self.generation >= self.generations:
                    break
                self._pool = self._offspring()
                if not self._pool:  # evaluation cap reached or no new feasible neighbour left
                    break
            windows = self.stages[self._stage][1]
            entrants = (*self._pool, self.parent)
            if windows == CALIB:
                self._asked = [EvalRequest(c) for c in entrants if c not in self.calib]
                if not self._asked:  # every score is known: select without asking
                    self._select({c: self.calib[c] for c in entrants})
                    continue
                return self._asked
            batch = int(self.rng.integers(2**31 - 1))
            self._asked = [EvalRequest(c, windows=windows, batch=batch) for c in entrants]
            return self._asked
        self._done = True
        return []

    def tell(self, evaluations: list[Evaluation]) -> None:
        if len(evaluations) != len(self._asked):
            raise LayerbudgetError(
                f"tell() expects {len(self._asked)} evaluations, but got {len(evaluations)}"
            )
        self.evaluations += len(evaluations)
        scores = {e.candidate: e.fitness for e in evaluations}
        for c, f in scores.items():
            if math.isnan(f):
                self.nan_count += 1
                self.quarantined.add(c)
            else:
                self.finite += 1
        if self.stages[self._stage][1] == CALIB:
            self.calib.update(scores)
            scores = {c: self.calib[c] for c in (*self._pool, self.parent)}
        if self.surrogate is not None and math.isfinite(ref := scores.get(self.parent, math.nan)):
            for c in self._pool:
                self.surrogate.observe(c, self.parent, scores[c] - ref)
        self._select(scores)

    def _select(self, scores: Mapping[Candidate, float]) -> None:
        """Keep the stage's best ``survivors`` (the parent competes, and wins ties); next stage or generation."""
        scored = [
            (f, c != self.parent, k, c)
            for k, c in enumerate((*self._pool, self.parent))
            if c not in self.quarantined and not math.isnan(f := scores[c])
        ]
        scored.sort()  # by fitness; ties keep the parent, then request order
        survivors, _ = self.stages[self._stage]
        if self._stage < len(self.stages) - 1:
            self._pool = [c for _, _, _, c in scored[:survivors] if c != self.parent]
            self._stage += 1
            if self._pool:
                return
        elif scored:
            improved = scored[0][3] != self.parent
            self.parent = scored[0][3]
            if self.adaptive is not None:  # fewer offspring while steps come easily, more when stuck
                lam = self.adaptive // 2 if improved else 2 * self.adaptive
                self.adaptive = max(MIN_OFFSPRING, min(self.offspring, lam))
        self._stage = 0
        self.generation += 1

    def fresh_windows(self) -> int:
        return max(windows for _, windows in self.stages)

    def result(self) -> Candidate:
        if self.evaluations and not self.finite:
            raise LayerbudgetError("every evolution candidate scored NaN; the model cannot be evaluated")
        return self.parent
