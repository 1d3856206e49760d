"""Dynamic-programming allocation: exact knapsack DP for one budget constraint, and depth DP.

:func:`solve_dp` minimises the additive proxy under a single constraint (``avg_bits``/``bytes``
``<=``, or ``sparsity``/``dropped`` ``>=``) in O(L·K·B) time for L slots, K options and B buckets.

Discretisation. A ``>=`` constraint is negated into a ``<=`` one; every group's costs are shifted
so its cheapest choice costs 0, and the capacity ``C`` (the integer slack left by the cheapest
choices) is clipped to the most the groups can ever use. When ``C / g <= buckets`` for ``g`` the
gcd of all shifted costs, the bucket unit is ``g`` and the DP is exact: it returns an ILP optimum.
Otherwise the unit is ``u = ceil(C / buckets)``, each cost is rounded *up* to ``ceil(w / u)``
buckets and the capacity *down* to ``C // u``, so ``Σ w <= u·Σ ceil(w / u) <= u·(C // u) <= C``:
the returned plan always satisfies the exact integer constraint. Before that conservative DP, a DP on
costs rounded to the *nearest* bucket runs (its errors mostly cancel); its plan is brought within
the exact budget by greedy downgrades (:func:`_repair`) and kept when that succeeds. Either way the
slack left is then spent greedily with exact costs (:func:`_polish`).
If rounding up leaves no plan within budget, the DP retries with finer buckets before giving up.
Discretised DPs keep their values in float32 (half the memory traffic; the proxies' rounding is
far below the costs'), exact ones in float64.

Sub-blocks are nested knapsacks: a droppable sub-block and its unit slots form one group whose
choices are "drop" or "keep, then the DP over its unit slots".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from layerbudget.errors import LayerbudgetError, rule
from layerbudget.options import DROP
from layerbudget.problem import INACTIVE, KEEP, LE, Budget, Candidate, Constraint, Problem
from layerbudget.search.base import register_searcher
from layerbudget.search.feasible import raw_limit
from layerbudget.search.operating_point import SolverParams, SolverSearcher

_RETRIES = 2  # finer discretisations tried (x8 buckets each) when rounding up loses every plan


def single_constraint(budget: Budget) -> Constraint:
    if len(budget.constraints) != 1:
        raise LayerbudgetError(f"dp handles one constraint; use ilp for budget {budget} (got {len(budget.constraints)})")
    return budget.constraints[0]


def top_groups(problem: Problem) -> list[tuple[int, list[int]]]:
    """Top-level slots in order, each with its unit slots when it is a droppable sub-block."""
    return [(i, problem.children.get(i, [])) for i in range(len(problem.slots)) if problem.parent[i] is None]


def _pareto(w: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Indices of options not dominated in (weight, proxy): a dominated option is never needed."""
    order = np.lexsort((p, w))  # by weight, then proxy
    keep, best = [], math.inf
    for j in order:
        if p[j] < best:
            keep.append(int(j))
            best = p[j]
    return np.asarray(keep, dtype=np.int64)


class _Item:
    """One knapsack step: the options kept after pruning, their bucket weights and proxies."""

    def __init__(self, slot: int, w: np.ndarray, p: np.ndarray):
        self.slot = slot
        self.idx = _pareto(w, p)
        self.w = w[self.idx]
        self.p = p[self.idx]


def _step(dp: np.ndarray, item: _Item, lo: int, hi: int, tmp: np.ndarray) -> np.ndarray:
    """``out[b] = min_k dp[b - w_k] + p_k`` for ``lo <= b <= hi`` (``dp[b]``: least proxy at cost <= b).

    Entries below ``lo`` are never read again (inf); above ``hi`` every plan of the prefix fits, so
    they repeat ``out[hi]``.
    """
    out = np.empty_like(dp)
    out[: hi + 1] = np.inf
    for wk, pk in zip(item.w.tolist(), item.p.tolist()):
        if wk == 0:  # the cheapest option (shifted to cost 0; Pareto order puts it first): a plain add
            np.add(dp[lo : hi + 1], pk, out=out[lo : hi + 1])
            continue
        start = max(lo, wk)
        if start > hi:
            continue
        n = hi + 1 - start
        np.add(dp[start - wk : start - wk + n], pk, out=tmp[:n])
        np.minimum(out[start : hi + 1], tmp[:n], out=out[start : hi + 1])
    out[hi + 1 :] = out[hi]
    return out


def _pick(dp: np.ndarray, item: _Item, b: int) -> tuple[int, int]:
    """Backtrack one step: the option index and its weight that reach ``out[b]`` from ``dp``."""
    vals = [dp[b - wk] + pk if wk <= b else math.inf for wk, pk in zip(item.w.tolist(), item.p.tolist())]
    k = int(np.argmin(vals))
    return int(item.idx[k]), int(item.w[k])


def _shift(dp: np.ndarray, w: int, add: float) -> np.ndarray:
    out = np.full_like(dp, np.inf)
    if w < len(dp):
        out[w:] = dp[: len(dp) - w] + add
    return out


def _most(problem: Problem, w: list[np.ndarray], top: int, kids: list[int]) -> int:
    """The largest cost a group can take: its dearest option, or for a sub-block drop or keep+kids."""
    if not problem.slots[top].is_subblock:
        return int(w[top].max())
    keep = int(w[top][problem.slots[top].options.index(KEEP)]) + sum(int(w[k].max()) for k in kids)
    return max(keep, int(w[top][problem.slots[top].options.index(DROP)]))


def _solve_buckets(
    problem: Problem,
    weights: list[np.ndarray],
    groups,
    unit: int,
    cap: int,
    *,
    nearest: bool = False,
    dtype: type = np.float64,
) -> Candidate | None:
    """The DP on bucket weights ``ceil(w / unit)`` (or rounded to the nearest bucket when ``nearest``,
    which may overspend the exact budget slightly) and capacity ``cap // unit``; None if none fits.

    ``dtype`` of the value arrays: float32 halves the memory traffic of large discretised DPs, whose
    rounding of costs is far coarser than float32's of proxies; exact DPs use float64."""
    size = cap // unit + 1
    # ceil division keeps every plan within the exact budget
    bw = [(w + unit // 2) // unit if nearest else -(-w // unit) for w in weights]
    proxy = problem.proxy
    # the most buckets each group can use; b only matters in [size-1 - (what later groups can use), size-1]
    most = [_most(problem, bw, top, kids) for top, kids in groups]
    suffix = np.concatenate([np.cumsum(most[::-1])[::-1][1:], [0]]).tolist()
    dp = np.zeros(size, dtype=dtype)
    tmp = np.empty(size, dtype=dtype)
    trace: list[tuple] = []  # per group: what backtracking needs
    used = 0
    for (top, kids), later in zip(groups, suffix):
        used += most[len(trace)]
        lo, hi = max(0, size - 1 - later), min(size - 1, used)
        if problem.slots[top].is_subblock:
            s = problem.slots[top]
            ki, di = s.options.index(KEEP), s.options.index(DROP)
            wkeep, wdrop = int(bw[top][ki]), int(bw[top][di])
            keep = _shift(dp, wkeep, float(proxy[top][ki]))
            kid_trace = []
            for k in kids:  # inside a sub-block the full range is computed (simple, and rare)
                item = _Item(k, bw[k], proxy[k])
                kid_trace.append((keep, item))
                keep = _step(keep, item, 0, size - 1, tmp)
            drop = _shift(dp, wdrop, float(proxy[top][di]))
            dropped = drop < keep
            trace.append(("sub", top, kids, dropped, kid_trace, wkeep, wdrop, ki, di))
            dp = np.where(dropped, drop, keep)
        else:
            item = _Item(top, bw[top], proxy[top])
            trace.append(("slot", dp, item))
            dp = _step(dp, item, lo, hi, tmp)
    b = size - 1
    if not np.isfinite(dp[b]):
        return None
    cand = [INACTIVE] * len(problem.slots)
    for entry in reversed(trace):
        if entry[0] == "slot":
            _, prev, item = entry
            cand[item.slot], w = _pick(prev, item, b)
            b -= w
            continue
        _, top, kids, dropped, kid_trace, wkeep, wdrop, ki, di = entry
        if dropped[b]:
            cand[top] = di
            b -= wdrop
        else:
            for prev, item in reversed(kid_trace):
                cand[item.slot], w = _pick(prev, item, b)
                b -= w
            cand[top] = ki
            b -= wkeep
    if b < 0:  # a bug in the DP, never a user error
        raise RuntimeError(f"dp backtracking overspent the budget by {-b} buckets")
    return problem.canonical(cand)


def default_buckets(problem: Problem) -> int:
    """Buckets when none are given: 50 per slot, at least 10 000 (fine enough that rounding rarely
    decides between two options of one unit)."""
    return max(10_000, 50 * len(problem.slots))


def solve_dp(problem: Problem, budget: Budget, *, buckets: int | None = None) -> Candidate:
    """The candidate minimising the proxy under a one-constraint ``budget`` (see module docstring)."""
    if buckets is None:
        buckets = default_buckets(problem)
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise LayerbudgetError(f"dp buckets must be a positive integer, but got {buckets!r}")
    c = single_constraint(budget)
    problem.check_budget(budget)
    sign = 1 if c.sense == LE else -1  # a >= row becomes a <= row on negated costs
    limit = sign * raw_limit(problem, c)
    signed = [sign * a for a in problem.coef[c.metric]]
    groups = top_groups(problem)
    weights: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(problem.slots)
    offset = 0
    for top, kids in groups:
        s = problem.slots[top]
        if not s.is_subblock:
            lo = int(signed[top].min())
            weights[top] = signed[top] - lo
            offset += lo
            continue
        for k in kids:
            weights[k] = signed[k] - signed[k].min()
        ki, di = s.options.index(KEEP), s.options.index(DROP)
        keep_cost = int(signed[top][ki]) + sum(int(signed[k].min()) for k in kids)
        drop_cost = int(signed[top][di])
        lo = min(keep_cost, drop_cost)
        w = np.zeros(2, dtype=np.int64)
        w[ki], w[di] = keep_cost - lo, drop_cost - lo
        weights[top] = w
        offset += lo
    most = sum(_most(problem, weights, top, kids) for top, kids in groups)
    cap = limit - offset
    if cap < 0:  # check_budget rules this out; kept as a guard
        raise LayerbudgetError(f"budget {budget} is infeasible ({problem.describe_ranges(budget)})")
    if cap >= most:  # the constraint cannot bind: every plan fits, so costs do not matter
        weights, cap = [np.zeros_like(w) for w in weights], 0
    g = math.gcd(*(int(x) for w in weights for x in w)) or 1
    tries = buckets
    for _ in range(_RETRIES + 1):
        exact = cap // g <= tries
        unit = g if exact else -(-cap // tries)
        cand = None
        if not exact:  # costs rounded to the nearest bucket: errors cancel; then fix with exact costs
            near = _solve_buckets(problem, weights, groups, unit, cap, nearest=True, dtype=np.float32)
            if near is not None:
                cand = _repair(problem, near, signed, limit)
        if cand is None:
            cand = _solve_buckets(problem, weights, groups, unit, cap, dtype=np.float64 if exact else np.float32)
        if cand is not None and not exact:
            cand = _polish(problem, cand, signed, limit)
        if cand is not None:
            if not problem.satisfies(cand, budget):  # the guarantee above; a bug if it fails
                raise RuntimeError(f"dp solution violates budget {budget}: {problem.metrics(cand)}")
            return cand
        if exact:
            break
        tries *= 8
    raise LayerbudgetError(
        f"dp found no plan within budget {budget} with up to {tries} buckets (costs are rounded up); "
        "raise `buckets` or use ilp"
    )


def _unit_table(problem: Problem, cand: Candidate, signed: list[np.ndarray]):
    """Active unit slots of ``cand`` as padded cost/proxy matrices, current choices and the cost used."""
    rows = [i for i, s in enumerate(problem.slots) if not s.is_subblock and cand[i] != INACTIVE]
    kmax = max((len(problem.slots[i].options) for i in rows), default=1)
    w = np.full((len(rows), kmax), np.iinfo(np.int64).max // 4, dtype=np.int64)
    p = np.full((len(rows), kmax), np.inf)
    for r, i in enumerate(rows):
        w[r, : len(signed[i])] = signed[i]
        p[r, : len(problem.proxy[i])] = problem.proxy[i]
    used = sum(int(signed[i][c]) for i, c in enumerate(cand) if c != INACTIVE)
    return rows, w, p, np.asarray([cand[i] for i in rows], dtype=np.int64), used


def _with_choices(problem: Problem, cand: Candidate, rows: list[int], cur: np.ndarray) -> Candidate:
    out = list(cand)
    for r, i in enumerate(rows):
        out[i] = int(cur[r])
    return problem.canonical(out)


def _repair(problem: Problem, cand: Candidate, signed: list[np.ndarray], limit: int) -> Candidate | None:
    """Bring a plan that overspends ``limit`` back within it: cheapest proxy increase per cost saved."""
    rows, w, p, cur, used = _unit_table(problem, cand, signed)
    idx = np.arange(len(rows))
    while used > limit:
        if not rows:
            return None
        dw = w - w[idx, cur][:, None]
        dp = p - p[idx, cur][:, None]
        ok = (dw < 0) & np.isfinite(dp)
        if not ok.any():
            return None
        score = np.where(ok, dp / np.maximum(-dw, 1), np.inf)
        r, k = np.unravel_index(int(np.argmin(score)), score.shape)
        used += int(dw[r, k])
        cur[r] = k
    return _with_choices(problem, cand, rows, cur)


def _polish(problem: Problem, cand: Candidate, signed: list[np.ndarray], limit: int) -> Candidate:
    """Spend the slack that rounding costs up left unused, with exact costs (bucketed DP only).

    Greedy over active unit slots: take any move that lowers the proxy without raising the cost,
    else the affordable move with the largest proxy decrease per unit of cost, until none is left.
    Sub-block keep/drop decisions are not changed. Every step keeps ``Σ cost <= limit``.
    """
    rows, w, p, cur, used = _unit_table(problem, cand, signed)
    if not rows:
        return cand
    idx = np.arange(len(rows))
    slack = limit - used
    for _ in range(len(rows) * w.shape[1]):
        dw = w - w[idx, cur][:, None]
        dp = p - p[idx, cur][:, None]
        ok = (dw <= slack) & (dp < 0)
        if not ok.any():
            break
        free = ok & (dw <= 0)
        if free.any():
            score = np.where(free, dp, np.inf)
        else:
            score = np.where(ok, dp / np.maximum(dw, 1), np.inf)
        r, k = np.unravel_index(int(np.argmin(score)), score.shape)
        slack -= int(dw[r, k])
        cur[r] = k
    return _with_choices(problem, cand, rows, cur)


def depth_objective(scores_drop: Sequence[float], dropped: Sequence[int], pair: Sequence[float] | None = None) -> float:
    """``Σ_{i dropped} s_i + Σ_{i, i+1 both dropped} pair_i``."""
    d = set(dropped)
    total = float(sum(scores_drop[i] for i in d))
    if pair is not None:
        total += float(sum(pair[i] for i in range(len(pair)) if i in d and i + 1 in d))
    return total


def solve_depth_dp(scores_drop: Sequence[float], k: int, pair: Sequence[float] | None = None) -> tuple[int, ...]:
    """Drop exactly ``k`` of ``n`` sub-blocks, minimising :func:`depth_objective`; sorted indices.

    Model: dropping sub-block ``i`` costs ``scores_drop[i]``; ``pair[i]`` (length ``n - 1``) is a
    correction added when sub-blocks ``i`` and ``i + 1`` (adjacent in model order) are both dropped.
    Without ``pair`` the ``k`` smallest scores win; with it, an exact DP over sub-blocks in order with
    state (number dropped, previous dropped) runs in O(n·k).
    """
    s = np.asarray(scores_drop, dtype=np.float64)
    n = len(s)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise LayerbudgetError(f"depth scores must be a finite 1-D sequence, but got {scores_drop!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise LayerbudgetError(f"depth dp drops k of {n} sub-blocks, so 0 <= k <= {n}, but got {k!r}")
    if pair is None:
        return tuple(sorted(int(i) for i in np.argsort(s, kind="stable")[:k]))
    q = np.asarray(pair, dtype=np.float64)
    if q.shape != (max(n - 1, 0),) or not np.all(np.isfinite(q)):
        raise LayerbudgetError(f"pair must hold {max(n - 1, 0)} finite adjacent-pair terms, but got {pair!r}")
    inf = math.inf
    # f[c][d]: best objective with c dropped so far, d = whether the previous sub-block is dropped
    f = [[inf, inf] for _ in range(k + 1)]
    f[0][0] = 0.0
    back: list[list[list[tuple[int, int] | None]]] = []
    for i in range(n):
        g = [[inf, inf] for _ in range(k + 1)]
        arg: list[list[tuple[int, int] | None]] = [[None, None] for _ in range(k + 1)]
        for c in range(k + 1):
            for d in (0, 1):
                v = f[c][d]
                if v == inf:
                    continue
                if v < g[c][0]:  # keep i
                    g[c][0], arg[c][0] = v, (c, d)
                if c < k:  # drop i
                    w = v + s[i] + (q[i - 1] if d and i > 0 else 0.0)
                    if w < g[c + 1][1]:
                        g[c + 1][1], arg[c + 1][1] = w, (c, d)
        back.append(arg)
        f = g
    c, d = k, int(f[k][1] < f[k][0])
    out = []
    for i in range(n - 1, -1, -1):
        if d:
            out.append(i)
        prev = back[i][c][d]
        if prev is None:  # unreachable: k <= n makes every state on the path finite
            raise RuntimeError("depth dp lost its path")
        c, d = prev
    return tuple(sorted(out))


def _depth_only(problem: Problem) -> bool:
    subs = [i for i, s in enumerate(problem.slots) if s.is_subblock]
    return bool(subs) and all(s.is_subblock or len(s.options) == 1 for s in problem.slots)


@dataclass(frozen=True)
class DpParams(SolverParams):
    """``buckets``: discretisation of the budget (unset: :func:`default_buckets`); ``pair``: adjacent-pair
    corrections of a depth-only problem (see :class:`DpSearcher`)."""

    WHERE = "dp"
    buckets: int | None = rule(None, least=1)
    pair: tuple[float, ...] | None = None


@register_searcher
class DpSearcher(SolverSearcher):
    """Solves the DP over an additive proxy and scores its solution.

    ``reference`` and ``rounds`` as for ``ilp`` (operating-point sensitivities around the best fitting
    uniform plan; see :mod:`layerbudget.search.operating_point`). ``pair`` (depth-only problems with
    one ``dropped`` budget, dense reference): adjacent-pair corrections for :func:`solve_depth_dp`, one
    per neighbouring pair of sub-blocks in slot order; the best plan dropping any allowed number of
    sub-blocks wins.
    """

    name = "dp"
    Params = DpParams

    def __init__(self, problem, budget, *, seed: int = 0, params: DpParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        self._constraint = single_constraint(budget)
        self.buckets = self.params.buckets
        pair, reference = self.params.pair, self.params.reference
        self.pair = None if pair is None else list(pair)
        if pair is not None:
            if self._constraint.metric != "dropped" or not _depth_only(problem):
                raise LayerbudgetError(
                    f"dp `pair` needs a depth-only problem with a `dropped` budget, but got budget {budget}"
                )
            if reference != "dense":
                raise LayerbudgetError(f"dp `pair` needs reference = \"dense\", but got {reference!r}")
        self._start()

    def solve(self, problem: Problem) -> Candidate:
        if self.pair is None:
            return solve_dp(problem, self.budget, buckets=self.buckets)
        return self._solve_depth(problem, self._constraint, self.pair)

    @staticmethod
    def _solve_depth(problem: Problem, c: Constraint, pair: Sequence[float]) -> Candidate:
        subs = [i for i, s in enumerate(problem.slots) if s.is_subblock]
        scores = []
        for i in subs:
            opts = problem.slots[i].options
            kept = problem.proxy[i][opts.index(KEEP)] + sum(problem.proxy[k][0] for k in problem.children.get(i, []))
            scores.append(float(problem.proxy[i][opts.index(DROP)] - kept))
        best, best_val = None, math.inf
        for k in range(max(raw_limit(problem, c), 0), len(subs) + 1):
            chosen = solve_depth_dp(scores, k, pair)
            val = depth_objective(scores, chosen, pair)
            if val < best_val:
                best, best_val = chosen, val
        cand = [0] * len(problem.slots)
        for j, i in enumerate(subs):
            opts = problem.slots[i].options
            cand[i] = opts.index(DROP) if best is not None and j in best else opts.index(KEEP)
        return problem.canonical(cand)

