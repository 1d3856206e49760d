"""Exact budget bookkeeping shared by the searchers: integer limits, feasibility, greedy repair.

Every budget check here works on the problem's integer coefficients against :func:`raw_limit`,
which agrees exactly with :meth:`~layerbudget.problem.Problem.satisfies`, so a candidate these
checks accept is always within budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from layerbudget.options import DROP
from layerbudget.problem import INACTIVE, KEEP, LE, Budget, Candidate, Constraint, Problem

EXCHANGE = 1 / 3  # share of exchange switches where they apply (see FeasibleSpace.mutate)


def raw_limit(problem: Problem, constraint: Constraint) -> int:
    """The largest (``<=``) or smallest (``>=``) raw coefficient sum that satisfies ``constraint``.

    Agrees exactly with :meth:`Problem.satisfies`, tolerance included, so integer checks against
    this limit never accept a plan that the budget check would reject.
    """
    metric, le = constraint.metric, constraint.sense == LE
    r = math.floor(problem.rhs(constraint)) if le else math.ceil(problem.rhs(constraint))
    step = 1 if le else -1
    ok = lambda x: constraint.holds(problem.metric_value(metric, x))  # noqa: E731
    for _ in range(64):  # the float tolerance is tiny, so a few steps settle it
        if ok(r + step):
            r += step
        elif not ok(r):
            r -= step
        else:
            break
    return r


def range_phrase(c: Constraint, others: Sequence[Constraint], lo: float, hi: float) -> str:
    """``"avg_bits ranges from 3.25 to 16 where sparsity>=0.1"``: ``c``'s metric over plans meeting ``others``."""
    where = f" where {', '.join(str(o) for o in others)}" if others else ""
    return f"{c.metric} ranges from {lo:.6g} to {hi:.6g}{where}"


def explain(budget: Budget, reached: Sequence[Mapping[str, float]]) -> str:
    """Why none of a set of plans meets ``budget``, given each plan's metrics (``reached``).

    For each constraint, the range its metric spans over the plans that meet every *other*
    constraint (``"avg_bits ranges from 3.25 to 16 where sparsity>=0.1"``): when no plan meets the
    whole budget, that range lies on the wrong side of the constraint's value. Constraints that no
    plan brings within the others are left out; when that leaves nothing, every metric's whole range.
    """
    parts = []
    for c in budget.constraints:
        others = [o for o in budget.constraints if o is not c]
        vals = [r[c.metric] for r in reached if all(o.holds(r[o.metric]) for o in others)]
        if vals:
            parts.append(range_phrase(c, others, min(vals), max(vals)))
    if not parts:
        parts = [
            range_phrase(c, (), min(r[c.metric] for r in reached), max(r[c.metric] for r in reached))
            for c in budget.constraints
        ]
    return "; ".join(parts)


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
        # with two or more constraints one order of levels cannot follow every trade-off (e.g. 2-bit
        # vs 2:4 at 4 bits), so mutation may also exchange the options of two unit slots
        self.swaps = len(budget.constraints) > 1
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
        Under two or more constraints an exchange switch is a third kind: two active unit slots
        trade options (each must offer the other's), a step the level order may not hold.
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
            if self.swaps and len(active) > 1 and (not kinds or rng.random() < EXCHANGE):
                self._exchange(child, active, rng, put)
                continue
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

    def _exchange(self, child: list[int], active: list[int], rng: np.random.Generator, put) -> None:
        """Trade the options of a random active unit slot and a random partner holding another one."""
        slots = self.problem.slots
        i = active[int(rng.integers(len(active)))]
        oi = slots[i].options[child[i]]
        partners = [
            j
            for j in active
            if (oj := slots[j].options[child[j]]) != oi and oj in slots[i].options and oi in slots[j].options
        ]
        if partners:
            j = partners[int(rng.integers(len(partners)))]
            oj = slots[j].options[child[j]]
            put(i, slots[i].options.index(oj))
            put(j, slots[j].options.index(oi))

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
