"""Options that do not fit some units, and how that moves the range a budget can reach.

An option does not apply to a unit whose shape it cannot encode (a group size that does not divide
K, 2:4 with K not divisible by 4). The unit's tie group then lacks that option, so the cheapest
plan is dearer than the option list suggests (with ``rtn-b*-g128`` only, a ``down_proj`` with
K = 352 stays dense). This module names those (options, units) compactly, builds the search
problem from the shapes alone (what the database will hold), so budgets are checked before the
database is built, and says in an infeasible-budget error which options were lost where.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from layerbudget.errors import LayerbudgetError
from layerbudget.model import ModelAdapter
from layerbudget.options import DENSE, DROP, META_BITS, Option, parse_option
from layerbudget.problem import Budget, Problem
from layerbudget.profiles.profile import build_problem

GROUP_SIZES = (256, 128, 64, 32, 16, 8)  # group sizes worth suggesting, largest first
_BLOCK_INDEX = re.compile(r"^(?P<head>.*?\.)(?P<index>\d+)(?P<tail>\..*)$")


@dataclass(frozen=True)
class Misfit:
    """Options that do not apply to a set of units (each unit lacks every one of them)."""

    options: tuple[str, ...]
    units: tuple[str, ...]
    reasons: tuple[str, ...]  # Option.applies_to's reasons, e.g. "group size 128 does not divide K=352"
    hint: str = ""  # what would fit instead, e.g. "g32 or gch would fit"
    every_unit: bool = False  # the units are all the model's units

    def __str__(self) -> str:
        verb = "does" if len(self.options) == 1 else "do"
        why = "; ".join(self.reasons) + (f"; {self.hint}" if self.hint else "")
        where = "any unit of this model" if self.every_unit else compact_names(self.units)
        return f"{', '.join(self.options)} {verb} not apply to {where} ({why})"


def compact_names(names: Sequence[str]) -> str:
    """Unit names with their block indices folded: ``model.layers.{0-3,6}.mlp.down_proj``."""
    groups: dict[tuple[str, str], list[int]] = {}
    plain: list[str] = []
    for name in names:
        m = _BLOCK_INDEX.match(name)
        if m is None:
            plain.append(name)
        else:
            groups.setdefault((m["head"], m["tail"]), []).append(int(m["index"]))
    parts = []
    for (head, tail), idx in groups.items():
        parts.append(f"{head}{idx[0]}{tail}" if len(idx) == 1 else f"{head}{{{_ranges(sorted(set(idx)))}}}{tail}")
    return ", ".join(parts + plain)


def _ranges(values: list[int]) -> str:
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def find_misfits(adapter: ModelAdapter, names: Sequence[str]) -> list[Misfit]:
    """Every stored option that does not apply to some unit, grouped by the set of units it misses."""
    by_units: dict[tuple[str, ...], list[tuple[Option, list[tuple[str, int, str]]]]] = {}
    for name in names:
        if name in (DENSE, DROP):
            continue
        opt = parse_option(name)
        missed = [(u.name, u.shape[1], reason) for u in adapter.units if (reason := opt.applies_to(u.shape))]
        if missed:
            by_units.setdefault(tuple(u for u, _, _ in missed), []).append((opt, missed))
    every = len(adapter.units)
    return [_misfit(units, entries, every) for units, entries in by_units.items()]


def _misfit(units: tuple[str, ...], entries: list, every: int) -> Misfit:
    """One :class:`Misfit` with its reasons summarised (group sizes and the Ks they do not divide)."""
    groups: dict[int, set[int]] = {}
    other: list[str] = []
    for opt, missed in entries:
        for _, k, reason in missed:
            if opt.group_size is not None and k % opt.group_size:
                groups.setdefault(opt.group_size, set()).add(k)
            elif reason not in other:
                other.append(reason)
    reasons = []
    if groups:
        sizes = sorted(groups)
        ks = sorted(set().union(*groups.values()))
        reasons.append(
            f"group size{'s' if len(sizes) > 1 else ''} {', '.join(map(str, sizes))} "
            f"{'do' if len(sizes) > 1 else 'does'} not divide K={', '.join(map(str, ks))}"
        )
    reasons.extend(other)
    hint = ""
    if groups:
        k = math.gcd(*ks)
        fits = [g for g in GROUP_SIZES if g < min(groups) and k % g == 0]
        hint = f"g{fits[0]} or gch would fit" if fits else "gch would fit"
    return Misfit(tuple(opt.name for opt, _ in entries), units, tuple(reasons), hint, len(units) == every)


class _ShapeOptions:
    """The options a database of ``names`` holds for each unit, known from the unit shapes alone
    (``every=True``: as if every option applied everywhere)."""

    def __init__(self, adapter: ModelAdapter, names: Sequence[str], *, every: bool = False):
        stored = [n for n in names if n not in (DENSE, DROP)]
        self._options = {
            u.name: [DENSE, *(n for n in stored if every or parse_option(n).applies_to(u.shape) is None)]
            for u in adapter.units
        }

    def unit_options(self, unit: str) -> list[str]:
        return self._options[unit]


def shape_problem(adapter: ModelAdapter, names: Sequence[str], *, every: bool = False) -> Problem:
    """The search problem the database of ``names`` will give.

    ``every=True``: the problem it would give if every option applied to every unit, a group size
    that does not divide K counted with its last, partial group (scale and zero included).
    """
    problem = build_problem(adapter, _ShapeOptions(adapter, names, every=every), names)  # type: ignore[arg-type]
    if every:
        for i, slot in enumerate(problem.slots):
            for j, name in enumerate(slot.options):
                opt = None if slot.is_subblock or name == DENSE else parse_option(name)
                if opt is None or opt.group_size is None:
                    continue
                extra = [n * META_BITS if k % opt.group_size else 0 for _, (n, k) in slot.units]
                if any(extra):  # Option.cost_bits counts the whole groups only
                    bits = [opt.cost_bits(shape) + e for (_, shape), e in zip(slot.units, extra)]
                    problem.coef["avg_bits"][i][j] = sum(bits)
                    problem.coef["bytes"][i][j] = sum(-(-b // 8) for b in bits)
    return problem


def moved_ranges(
    adapter: ModelAdapter, names: Sequence[str], metrics: Sequence[str]
) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """metric → (achievable range, range if every option applied) for each metric the misfits move."""
    actual, every = shape_problem(adapter, names), shape_problem(adapter, names, every=True)
    out = {}
    for metric in dict.fromkeys(metrics):
        if metric in actual.coef and actual.metric_range(metric) != every.metric_range(metric):
            out[metric] = (actual.metric_range(metric), every.metric_range(metric))
    return out


def _span(lo: float, hi: float) -> str:
    return f"from {lo:.6g} to {hi:.6g}"


def fit_notes(adapter: ModelAdapter, names: Sequence[str], budgets: Sequence[Budget]) -> list[str]:
    """Lines telling which options do not apply to which units and how that moves the budgets' metrics."""
    misfits = find_misfits(adapter, names)
    if not misfits:
        return []
    lines = [str(m) for m in misfits]
    moved = moved_ranges(adapter, names, [c.metric for b in budgets for c in b.constraints])
    if moved:
        shifts = "; ".join(f"{m} ranges {_span(*now)} instead of from about {ideal[0]:.6g} to {ideal[1]:.6g}" for m, (now, ideal) in moved.items())
        lines.append(f"those units keep to the other options, so {shifts}")
    return lines


def check_budget_fit(problem: Problem, budget: Budget, adapter: ModelAdapter, names: Sequence[str]) -> None:
    """:meth:`Problem.check_budget`; when a constraint cannot be met and options that do not fit some
    units are part of why, the one-line error says which and how far they moved the range."""
    try:
        problem.check_budget(budget)
    except LayerbudgetError as exc:
        misfits = find_misfits(adapter, names)
        moved = moved_ranges(adapter, names, [c.metric for c in budget.constraints]) if misfits else {}
        if not moved:  # the options that do not fit move none of this budget's metrics
            raise
        ideal = "; ".join(f"{m} would range from about {ideal[0]:.6g} to {ideal[1]:.6g}" for m, (_, ideal) in moved.items())
        raise LayerbudgetError(f"{exc}; {'; '.join(str(m) for m in misfits)}; if they applied, {ideal}") from None


def check_budgets_early(adapter: ModelAdapter, names: Sequence[str], budgets: Sequence[Budget]) -> None:
    """Check every budget's constraints on the metrics known from the shapes alone (all but latency),
    before anything is built."""
    problem = shape_problem(adapter, names)
    for budget in budgets:
        known = tuple(c for c in budget.constraints if c.metric in problem.coef)
        if known:
            check_budget_fit(problem, Budget(known), adapter, names)
