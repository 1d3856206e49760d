"""Evolutionary search (EvoPress-style): level-switch mutation, budget repair, staged (1+λ) selection.

Each generation mutates the parent into ``offspring`` new feasible candidates and filters them
through stages ``[(survivors, windows), ...]``: at every stage each remaining candidate and the parent
are scored on ``windows`` calibration windows of one fresh batch, and the best ``survivors`` go on;
the best of the last stage (the parent included: elitism) becomes the next parent.

Presets follow EvoPress's table (generations, offspring, survivors per stage). Its stage sizes are
in tokens; here one calibration window (``seq_len`` tokens) stands for 2048 EvoPress tokens, so the
stage ratios are kept and at ``seq_len = 2048`` the token counts are EvoPress's own:
``windows = max(1, ceil(tokens / 2048))``. A stage of 0 windows compares on the standard
calibration windows instead (scores are kept, so the parent is not re-scored there).

Under an evaluation cap of a few hundred (``max_evaluations`` with the "auto" preset) the presets
would stop after a handful of generations; the search is then sized to the cap instead (see
:meth:`EvolutionSearcher._fit_to_cap`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from layerbudget.budget import LE, Budget
from layerbudget.errors import LayerbudgetError
from layerbudget.profiles.options import DROP
from layerbudget.search.base import EvalRequest, Evaluation, Searcher, register_searcher
from layerbudget.search.dp import raw_limit
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.problem import INACTIVE, KEEP, Candidate, Problem
from layerbudget.search.surrogate import DeltaSurrogate

TOKENS_PER_WINDOW = 2048


CALIB = 0  # stage windows 0: the standard calibration windows (known scores are never asked again)
MIN_GENERATIONS = 12  # when sized to an evaluation cap (preset "auto")
MIN_OFFSPRING = 4
ADAPT_START = 2


def _windows(tokens: int) -> int:
    return max(1, math.ceil(tokens / TOKENS_PER_WINDOW))


# name: (generations, offspring, [(survivors, EvoPress tokens), ...]); depth generations are k(n-k)/1.5
PRESETS: dict[str, tuple[int | None, int, list[tuple[int, int]]]] = {
    "quantization": (150, 128, [(16, 2048), (4, 16384), (1, 131072)]),
    "sparsity": (400, 64, [(8, 2048), (2, 16384), (1, 65536)]),
    "depth": (None, 32, [(2, 2048), (1, 32768)]),
    "superfast": (400, 16, [(1, 512), (1, 8192)]),
}


class FeasibleSpace:
    """Exact integer budget bookkeeping, per-slot compression levels, and greedy repair."""

    def __init__(self, problem: Problem, budget: Budget):
        self.problem = problem
        slots = problem.slots
        n, kmax = len(slots), max(len(s.options) for s in slots)
        self.sign = np.array([1 if c.sense == LE else -1 for c in budget.constraints])
        self.limit = np.array([raw_limit(problem, c) for c in budget.constraints], dtype=np.int64)
        self.valid = np.zeros((n, kmax), dtype=bool)
        self.coef = np.zeros((len(budget.constraints), n, kmax), dtype=np.int64)
        self.proxy = np.zeros((n, kmax))
        for i, s in enumerate(slots):
            self.valid[i, : len(s.options)] = True
            self.proxy[i, : len(s.options)] = problem.proxy[i]
            for m, c in enumerate(budget.constraints):
                self.coef[m, i, : len(s.options)] = problem.coef[c.metric][i]
        most = np.where(self.valid, self.coef, 0).max(axis=2)
        spread = most - np.where(self.valid, self.coef, 2**62).min(axis=2)
        self.scale = np.maximum(spread.sum(axis=1), 1).astype(np.float64)
        self.coef_by_slot = np.ascontiguousarray(np.moveaxis(self.coef, 0, -1))  # [L, K, M]
        self.units = [i for i, s in enumerate(slots) if not s.is_subblock]
        self.subs = [i for i, s in enumerate(slots) if s.is_subblock]
        self.keep = {i: slots[i].options.index(KEEP) for i in self.subs}
        self.drop = {i: slots[i].options.index(DROP) for i in self.subs}
        # levels: each slot's options from least to most compressed (budget pressure, then proxy)
        pressure = (self.sign[:, None, None] * self.coef / self.scale[:, None, None]).sum(axis=0)
        self.levels: list[list[int]] = []
        self.rank: list[dict[int, int]] = []
        for i, s in enumerate(slots):
            order = sorted(range(len(s.options)), key=lambda o, i=i: (-pressure[i, o], self.proxy[i, o], o))
            self.levels.append(order)
            self.rank.append({o: r for r, o in enumerate(order)})

    # ----- budget ------------------------------------------------------------------------------
    def totals(self, cand: Sequence[int]) -> np.ndarray:
        idx = np.asarray(cand)
        act = idx >= 0
        rows = np.arange(len(idx))
        return (self.coef[:, rows, np.where(act, idx, 0)] * act).sum(axis=1)

    def violation(self, totals: np.ndarray) -> np.ndarray:
        """Normalised excess over the budget (0 when feasible); broadcasts over leading move axes."""
        excess = np.maximum(self.sign * (totals - self.limit), 0)
        return (excess / self.scale).sum(axis=-1)

    def feasible(self, cand: Sequence[int]) -> bool:
        return bool(np.all(self.sign * (self.totals(cand) - self.limit) <= 0))

    # ----- repair ------------------------------------------------------------------------------
    def repair(self, cand: Sequence[int]) -> Candidate | None:
        """Greedily change one slot at a time until every constraint holds; None when stuck.

        Each step takes the change with the least proxy increase per unit of violation removed
        (another option for an active unit slot, or dropping a kept sub-block).
        """
        cur = list(cand)
        rows = np.arange(len(cur))
        while True:
            t = self.totals(cur)
            v = float(self.violation(t))
            if v == 0.0:
                return self.problem.canonical(cur)
            idx = np.asarray(cur)
            act = idx >= 0
            here = np.where(act, idx, 0)
            cur_coef = self.coef[:, rows, here] * act  # [M, L]
            delta = self.coef - cur_coef[:, :, None]  # [M, L, K]
            new_v = self.violation(np.moveaxis(t[:, None, None] + delta, 0, -1))  # [L, K]
            d_proxy = self.proxy - (self.proxy[rows, here] * act)[:, None]
            ok = self.valid & act[:, None]
            ok[self.subs] = False
            ok[rows, here] = False
            gain = v - new_v
            ok &= gain > 0
            best, best_ratio = None, math.inf
            if ok.any():
                ratio = np.where(ok, d_proxy / np.where(ok, gain, 1.0), np.inf)
                flat = int(np.argmin(ratio))
                best, best_ratio = divmod(flat, ratio.shape[1]), float(ratio.flat[flat])
            for s in self.subs:  # dropping a kept sub-block
                if cur[s] != self.keep[s]:
                    continue
                kids = self.problem.children.get(s, [])
                d = (
                    self.coef[:, s, self.drop[s]]
                    - self.coef[:, s, self.keep[s]]
                    - cur_coef[:, kids].sum(axis=1)
                )
                g = v - float(self.violation(t + d))
                if g > 0:
                    dp = (
                        self.proxy[s, self.drop[s]]
                        - self.proxy[s, self.keep[s]]
                        - sum(self.proxy[k, cur[k]] for k in kids)
                    )
                    if dp / g < best_ratio:
                        best, best_ratio = (s, self.drop[s]), dp / g
            if best is None:
                return None
            i, o = int(best[0]), int(best[1])
            cur[i] = o
            if i in self.keep:
                for k in self.problem.children.get(i, []):
                    cur[k] = INACTIVE

    # ----- candidates --------------------------------------------------------------------------
    def required_drops(self, budget: Budget) -> int:
        for c in budget.constraints:
            if c.metric == "dropped":
                return max(0, raw_limit(self.problem, c))
        return 0

    def random(self, rng: np.random.Generator, drops: int) -> Candidate | None:
        """A random candidate (``drops`` random sub-blocks dropped), repaired into the budget."""
        cand = [int(rng.integers(len(s.options))) for s in self.problem.slots]
        chosen = (
            set(rng.permutation(self.subs)[: min(drops, len(self.subs))].tolist()) if self.subs else set()
        )
        for s in self.subs:
            cand[s] = self.drop[s] if s in chosen else self.keep[s]
        return self.repair(self.problem.canonical(cand))

    def mutate(self, parent: Candidate, rng: np.random.Generator) -> Candidate | None:
        """min(U{1,3}, U{1,3}) switches, then repair; None if the child cannot be repaired.

        A level switch moves one slot a level less compressed and another a level more compressed;
        a depth switch keeps one dropped sub-block and drops one kept one (a swap). The second half
        of a switch is skipped while the budget still holds, so slack left by the initial candidate
        gets used; with exact budgets (e.g. ``dropped >= k`` met exactly) switches are EvoPress's.
        """
        child = list(parent)
        t = self.totals(child)  # kept up to date change by change: feasibility checks stay cheap

        def put(i: int, o: int) -> None:
            nonlocal t
            if child[i] != INACTIVE:
                t = t - self.coef_by_slot[i, child[i]]
            if o != INACTIVE:
                t = t + self.coef_by_slot[i, o]
            child[i] = o

        def fits() -> bool:
            return bool(np.all(self.sign * (t - self.limit) <= 0))

        for _ in range(int(min(rng.integers(1, 4), rng.integers(1, 4)))):
            active = [i for i in self.units if child[i] != INACTIVE]
            up = [i for i in active if self.rank[i][child[i]] < len(self.levels[i]) - 1]
            down = [i for i in active if self.rank[i][child[i]] > 0]
            kept = [s for s in self.subs if child[s] == self.keep[s]]
            gone = [s for s in self.subs if child[s] == self.drop[s]]
            kinds = (["level"] if up or down else []) + (["depth"] if self.subs else [])
            if not kinds:
                break
            if kinds[int(rng.integers(len(kinds)))] == "level":
                b = down[int(rng.integers(len(down)))] if down else None
                if b is not None:
                    put(b, self.levels[b][self.rank[b][child[b]] - 1])  # less compressed
                ups = [i for i in up if i != b]
                if ups and (b is None or not fits()):
                    a = ups[int(rng.integers(len(ups)))]
                    put(a, self.levels[a][self.rank[a][child[a]] + 1])  # more compressed
                continue
            on = gone[int(rng.integers(len(gone)))] if gone else None
            if on is not None:  # keep a dropped sub-block; its unit slots get random options
                put(on, self.keep[on])
                for k in self.problem.children.get(on, []):
                    put(k, int(rng.integers(len(self.problem.slots[k].options))))
            if kept and (on is None or not fits()):
                off = kept[int(rng.integers(len(kept)))]
                put(off, self.drop[off])
                for k in self.problem.children.get(off, []):
                    put(k, INACTIVE)
        cand = self.problem.canonical(child)
        return cand if fits() else self.repair(cand)

    def greedy(self) -> Candidate | None:
        """The lowest-proxy option everywhere (sub-blocks kept), repaired into the budget."""
        cand = [int(np.argmin(self.problem.proxy[i])) for i in range(len(self.problem.slots))]
        for s in self.subs:
            cand[s] = self.keep[s]
        return self.repair(self.problem.canonical(cand))

    def fill(self, cand: Sequence[int]) -> Candidate:
        """Spend budget slack greedily: while some change of one active unit slot lowers the proxy and
        keeps every constraint, take the one with the largest proxy drop per unit of budget used."""
        cur = list(cand)
        rows = np.arange(len(cur))
        pressure = (self.sign[:, None, None] * self.coef / self.scale[:, None, None]).sum(axis=0)  # [L, K]
        while True:
            idx = np.asarray(cur)
            act = idx >= 0
            here = np.where(act, idx, 0)
            t = self.totals(cur)
            delta = self.coef - (self.coef[:, rows, here] * act)[:, :, None]  # [M, L, K]
            fits = np.all(
                self.sign[:, None, None] * (t[:, None, None] + delta - self.limit[:, None, None]) <= 0, axis=0
            )
            gain = (self.proxy[rows, here] * act)[:, None] - self.proxy  # proxy drop of each change
            ok = self.valid & act[:, None] & fits & (gain > 0)
            ok[self.subs] = False
            if not ok.any():
                return self.problem.canonical(cur)
            used = np.maximum(pressure - pressure[rows, here][:, None], 1e-12)
            ratio = np.where(ok, gain / used, -np.inf)
            i, o = divmod(int(np.argmax(ratio)), ratio.shape[1])
            cur[i] = o

    def best_uniform(self, budget: Budget) -> Candidate | None:
        """The fitting uniform plan of lowest proxy (ties: the least compressed)."""
        problem = self.problem
        fits = [c for _, c in sorted(problem.fitting_uniform(budget).items())]
        if not fits:
            return None
        return min(fits, key=lambda c: (problem.proxy_score(c), -float(self.sign @ self.totals(c))))


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
    elif init != "uniform":
        raise LayerbudgetError(f'init must be "uniform", "random" or "plan", but got {init!r}')
    cand = space.best_uniform(budget) or space.greedy()
    if cand is not None:  # spend what the uniform plan leaves of the budget where the proxy gains most
        cand = space.fill(cand)
    if cand is None:  # greedy repair can miss feasible points with several constraints; ask the ILP
        cand = solve_ilp(problem, budget)  # (it raises a clear error when none exists)
    return cand


def _stages(stages: Any) -> list[tuple[int, int]]:
    def ok(x: Any, least: int) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= least

    pairs = list(stages) if isinstance(stages, Sequence) and not isinstance(stages, str) else []
    if not pairs or not all(
        isinstance(p, Sequence) and len(p) == 2 and ok(p[0], 1) and ok(p[1], 0) for p in pairs
    ):
        raise LayerbudgetError(
            f"stages must be a non-empty list of (survivors >= 1, windows >= 0) pairs (0 windows: the standard "
            f"calibration windows), but got {stages!r}"
        )
    return [(int(s), int(w)) for s, w in pairs]


def _positive(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LayerbudgetError(f"evolution `{name}` must be a positive integer, but got {value!r}")
    return int(value)


@register_searcher
class EvolutionSearcher(Searcher):
    """(1+λ) evolution with staged selection on fresh calibration batches (see module docstring).

    Parameters: ``preset`` ("auto": depth for keep/drop-only problems, sparsity for sparsity
    budgets, else quantization; with ``max_evaluations`` and neither ``offspring`` nor ``stages``
    given, it is sized to the cap and scores on the standard windows, see :meth:`_fit_to_cap`),
    ``generations``, ``offspring``, ``stages`` (overrides of the preset; a stage with 0 windows
    compares on the standard calibration windows), ``max_evaluations`` (a hard cap), ``init``
    ("uniform": the fitting uniform plan of least proxy, its leftover budget spent by the proxy;
    "random"; or "plan" with ``init_candidate``: option indices per slot, or unit -> option name),
    ``prescreen`` (1: off; k > 1: draw k times the offspring count of distinct new children and
    score only those a :class:`~layerbudget.search.surrogate.DeltaSurrogate`, fitted to the
    fitness changes of every offspring scored so far, ranks best; the rest may be drawn again later).

    Duplicates are rejected: no candidate is offered twice (seeds passed to :meth:`remember`
    included). The search ends after ``generations``, at the cap, or when no new feasible
    offspring can be found. Candidates that score NaN are quarantined.
    """

    name = "evolution"

    def __init__(
        self,
        problem,
        budget,
        *,
        seed: int = 0,
        preset: str = "auto",
        generations: int | None = None,
        offspring: int | None = None,
        stages: Sequence[Sequence[int]] | None = None,
        max_evaluations: int | None = None,
        init: str = "uniform",
        init_candidate: Any = None,
        prescreen: int = 1,
        **params: Any,
    ):
        super().__init__(problem, budget, seed=seed, **params)
        self.prescreen = _positive("prescreen", prescreen)
        self.surrogate = DeltaSurrogate(problem) if self.prescreen > 1 else None
        self.space = FeasibleSpace(problem, budget)
        auto = preset == "auto"
        if auto:
            depth_only = bool(self.space.subs) and all(
                len(problem.slots[i].options) == 1 for i in self.space.units
            )
            preset = (
                "depth" if depth_only else "sparsity" if "sparsity" in budget.to_dict() else "quantization"
            )
        if preset not in PRESETS:
            raise LayerbudgetError(f"unknown evolution preset {preset!r}; known: auto, {', '.join(PRESETS)}")
        self.preset = preset
        self.parent = initial_candidate(self.space, budget, self.rng, init, init_candidate)
        self.calib: dict[Candidate, float] = {}  # fitness on the standard calibration windows
        gens, lam, stage_tokens = PRESETS[preset]
        if gens is None:  # depth: k(n-k)/1.5 generations for k of n sub-blocks dropped
            n, k = len(self.space.subs), round(problem.metric(self.parent, "dropped"))
            gens = max(1, math.ceil(k * (n - k) / 1.5))
        self.generations = _positive("generations", gens if generations is None else generations)
        self.offspring = _positive("offspring", lam if offspring is None else offspring)
        self.stages = _stages([(s, _windows(t)) for s, t in stage_tokens] if stages is None else stages)
        self.max_evaluations = _positive("max_evaluations", max_evaluations, allow_none=True)
        self.adaptive: int | None = None  # the current offspring count when it adapts (see _fit_to_cap)
        if auto and self.max_evaluations is not None and offspring is None and stages is None:
            self._fit_to_cap(self.max_evaluations, keep_generations=generations is not None)
        if self.max_evaluations is not None and self.max_evaluations < self._generation_cost(1):
            raise LayerbudgetError(
                f"evolution max_evaluations must cover one generation with one offspring "
                f"({self._generation_cost(1)} evaluations for {len(self.stages)} stages), but got {self.max_evaluations}"
            )
        self.seen: set[Candidate] = {self.parent}
        self.generation = self.evaluations = self.finite = 0
        self.quarantined: set[Candidate] = set()
        self.nan_count = self.rejected = self.duplicates = 0
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
        set's (on MiniLM depth pruning the best plan on the standard windows scored 5-10% worse than
        the runner-up on fresh batches), so staged selection keeps losing it. So: one stage on the
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
        for _ in range(10 * want + 50):  # then the parent's unseen neighbours are (nearly) exhausted
            if len(pool) >= want:
                break
            child = self.space.mutate(self.parent, self.rng)
            if child is None:
                self.rejected += 1
            elif child in self.seen or child in drawn:
                self.duplicates += 1
            else:
                drawn.add(child)
                pool.append(child)
        if self.surrogate is not None and len(pool) > lam:
            order = np.argsort(self.surrogate.predict(pool, self.parent), kind="stable")
            pool = [pool[k] for k in order[:lam]]
        self.seen.update(pool)
        return pool

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
