"""ShortGPT baseline: drop the attention/MLP sub-blocks of lowest Block Influence until the budget holds.

ShortGPT (Men et al. 2024) measures how much a layer changes its input, Block Influence
``BI = 1 - E[cos(h_in, h_out)]``, and removes the layers that change it least. Here the decisions
are attention/MLP sub-blocks (slots with options ``keep``/``drop``), and the influence of each comes
from the profile as the problem feature ``block_influence`` (one value per sub-block slot).

The plan: every unit slot keeps its least-compressed option (see :func:`least_compressed`), then
sub-blocks are dropped in increasing order of influence (ties: the earlier slot) until every
constraint of the budget holds; with ``dropped >= k`` alone that is exactly the ``k`` lowest.
Dropping only ever helps every budget metric (fewer bits and bytes, more zeros, more drops), so
when dropping every sub-block still misses the budget, no ShortGPT plan exists and the searcher
says so. The single plan is scored once.
"""

from __future__ import annotations

import math

from layerbudget.errors import LayerbudgetError
from layerbudget.options import DENSE, DROP
from layerbudget.problem import KEEP, LE, Budget, Candidate, Problem
from layerbudget.search.base import ScoreOnceSearcher, register_searcher


def least_compressed(problem: Problem, budget: Budget) -> list[int]:
    """Option index per slot: ``dense`` where offered, else the least-compressed option for ``budget``.

    Depth baselines change the model only by dropping sub-blocks, so unit slots stay as close to the
    original weights as they can. A slot without ``dense`` takes the option that spends the most of
    this budget (the constraints' metrics, each normalised by its whole range, summed), so that the
    dropping, not the unit options, is what meets the budget; ties (e.g. a ``dropped`` budget, which
    unit options do not touch) go to more storage bits, then fewer zeros, then the lower proxy, then
    the earlier option. Sub-block slots are ``keep``.
    """
    scale = {
        c.metric: max(sum(int(cf.max() - cf.min()) for cf in problem.coef[c.metric]), 1)
        for c in budget.constraints
    }
    out = []
    for i, s in enumerate(problem.slots):
        if s.is_subblock:
            out.append(s.options.index(KEEP))
            continue
        if DENSE in s.options:
            out.append(s.options.index(DENSE))
            continue

        def key(o: int, i: int = i) -> tuple[float, ...]:
            spend = sum(
                (1 if c.sense == LE else -1) * int(problem.coef[c.metric][i][o]) / scale[c.metric]
                for c in budget.constraints
            )
            coef = problem.coef
            return (
                -spend,
                -int(coef["avg_bits"][i][o]),
                int(coef["sparsity"][i][o]),
                float(problem.proxy[i][o]),
                o,
            )

        out.append(min(range(len(s.options)), key=key))
    return out


def subblock_slots(problem: Problem, who: str) -> list[int]:
    """Indices of the keep/drop slots; a one-line error when the problem has none."""
    subs = [i for i, s in enumerate(problem.slots) if s.is_subblock]
    if not subs:
        raise LayerbudgetError(
            f"{who} drops attention/MLP sub-blocks, but this problem has none (add 'drop' to the options)"
        )
    return subs


def drop(problem: Problem, cand: list[int], sub: int) -> None:
    """Drop sub-block slot ``sub`` in ``cand`` (in place; its unit slots become inactive)."""
    cand[sub] = problem.slots[sub].options.index(DROP)


def check_reachable(problem: Problem, budget: Budget, start: list[int], subs: list[int], who: str) -> None:
    """Raise when even dropping every sub-block from ``start`` misses the budget."""
    cand = list(start)
    for s in subs:
        drop(problem, cand, s)
    everything = problem.canonical(cand)
    if not problem.satisfies(everything, budget):
        raise LayerbudgetError(
            f"{who} cannot meet budget {budget} by dropping sub-blocks alone: with all {len(subs)} dropped "
            f"the plan still reaches {problem.metrics(everything)}"
        )


@register_searcher
class ShortGPTSearcher(ScoreOnceSearcher):
    """Drops the sub-blocks of lowest ``block_influence`` until the budget holds (module docstring)."""

    name = "shortgpt"
    # declarations read by tests/search/test_searcher_contract.py
    needs_subblocks = True  # its only decision is which sub-blocks to drop
    needs_features = ("block_influence",)  # profile features it reads

    def __init__(self, problem, budget, *, seed: int = 0, params=None):
        super().__init__(problem, budget, seed=seed, params=params)
        subs = subblock_slots(problem, self.name)
        influence = problem.feature("block_influence", who=self.name)
        missing = [problem.slots[i].name for i in subs if not math.isfinite(influence[i])]
        if missing:
            raise LayerbudgetError(
                f"{self.name}: block_influence is missing or not finite for sub-block(s) {missing[:5]}"
            )
        start = least_compressed(problem, budget)
        check_reachable(problem, budget, start, subs, self.name)
        self.order = sorted(subs, key=lambda i: (float(influence[i]), i))  # lowest influence first
        cand = list(start)
        self.dropped: list[str] = []
        for i in [None, *self.order]:
            if i is not None:
                drop(problem, cand, i)
                self.dropped.append(problem.slots[i].name)
            plan = problem.canonical(cand)
            if problem.satisfies(plan, budget):
                break
        assert problem.satisfies(plan, budget)
        self.plan: Candidate = plan
        self._candidates([plan])
