"""Best-so-far curves of the search benchmark: traces, evaluations to a target fitness, and their plot.

A run's trace is its best calibration fitness so far against the number of evaluations it has
asked for: only requests on the standard calibration windows whose plan fits the budget count
(fresh-window and over-budget requests cost an evaluation but set no fitness). The target of a
(config, budget) and seed is the evolution's final calibration fitness with that seed (the fitness
of the plan it returns, after its whole evaluation cap); a run needs ``k`` evaluations to reach it
when its trace first falls to the target (relative tolerance ``TOL``) at evaluation ``k``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

TOL = 1e-9
TARGET_SEARCHER = "evolution"


def trace(evaluations: Iterable, fits: Callable[[tuple[int, ...]], bool]) -> list[list[float]]:
    """``[[k, best], ...]``: evaluation counts where the best in-budget calibration fitness fell, and its value.

    ``evaluations``: the run's :class:`Evaluation` records in order; ``fits(candidate)``: whether a
    plan satisfies the budget.
    """
    out: list[list[float]] = []
    best = math.inf
    for k, e in enumerate(evaluations, 1):
        f = e.fitness
        if e.request.windows is None and math.isfinite(f) and f < best and fits(e.candidate):
            best = f
            out.append([k, f])
    return out


def reached_at(steps: Sequence[Sequence[float]], target: float) -> int | None:
    """The first evaluation count at which a trace is at or below ``target`` (None: never)."""
    limit = target + TOL * abs(target)
    return next((int(k) for k, f in steps if f <= limit), None)


def _key(row: dict, default_config: str) -> tuple[str, float]:
    return row.get("config", default_config), row["budget"]


def targets(rows: Sequence[dict], default_config: str) -> dict[tuple[str, float], dict[int, float]]:
    """(config, budget) -> seed -> the evolution's final calibration fitness with that seed."""
    out: dict[tuple[str, float], dict[int, float]] = {}
    for r in rows:
        if r["searcher"] == TARGET_SEARCHER:
            out.setdefault(_key(r, default_config), {})[r["seed"]] = r["fitness"]
    return out


def to_target(rows: Sequence[dict], default_config: str, seedless: Iterable[str] = ()) -> list[dict]:
    """Per (config, budget, searcher): evaluations each run needed to reach each seed's target.

    A seeded searcher's run is compared with the target of its own seed; a ``seedless`` one (run
    once) with the target of every seed. Rows without a trace (written before traces were recorded) and
    budgets without an evolution run are left out.
    """
    goal = targets(rows, default_config)
    groups: dict[tuple[str, float, str], list[dict]] = {}
    for r in rows:
        if "trace" in r and _key(r, default_config) in goal:
            groups.setdefault((*_key(r, default_config), r["searcher"]), []).append(r)
    out = []
    for (config, budget, name), sel in groups.items():
        seeds = goal[(config, budget)]
        pairs = []  # (seed, evaluations to the target or None, the run's evaluation count)
        for r in sel:
            for seed in sorted(seeds) if name in seedless else [r["seed"]]:
                if seed in seeds:
                    pairs.append((seed, reached_at(r["trace"], seeds[seed]), r["evaluations"]))
        hit = [k for _, k, _ in pairs if k is not None]
        cap = max(r["evaluations"] for r in rows if _key(r, default_config) == (config, budget) and r["searcher"] == TARGET_SEARCHER)
        out.append(
            {
                "config": config,
                "budget": budget,
                "searcher": name,
                "cap": cap,
                "runs": len(pairs),
                "reached": len(hit),
                "median": statistics.median(hit) if hit else None,
                "max": max(hit) if hit else None,
                "within_third": sum(k <= cap / 3 for k in hit),
                "per_seed": {str(s): k for s, k, _ in sorted(pairs, key=lambda p: p[0])},
            }
        )
    return out


def target_table(entries: Sequence[dict], order: dict[str, int]) -> str:
    """Printed form of :func:`to_target`: reached / runs, median and worst evaluations, runs within cap/3."""
    lines = [
        f"{'config':<14}{'budget':>6}  {'searcher':<14}{'cap':>5}{'reached':>9}{'median':>8}{'worst':>7}{'<=cap/3':>9}"
    ]
    for e in sorted(entries, key=lambda e: (e["config"], -e["budget"], order.get(e["searcher"], 99), e["searcher"])):
        med = "-" if e["median"] is None else f"{e['median']:.0f}"
        worst = "-" if e["max"] is None else str(e["max"])
        lines.append(
            f"{e['config']:<14}{e['budget']:>6}  {e['searcher']:<14}{e['cap']:>5}{e['reached']:>5}/{e['runs']:<3}"
            f"{med:>8}{worst:>7}{e['within_third']:>5}/{e['runs']:<3}"
        )
    return "\n".join(lines)


def _at(steps: Sequence[Sequence[float]], k: float) -> float | None:
    """A trace's best fitness after ``k`` evaluations (None before its first)."""
    return next((f for n, f in reversed(steps) if n <= k), None)


def plot(rows: Sequence[dict], default_config: str, path: Path, order: dict[str, int]) -> None:
    """Best-so-far calibration fitness against evaluations, one panel per (config, budget): every run
    a thin line, the evolution's final fitness per seed dotted, and cap/3 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    goal = targets(rows, default_config)
    panels = sorted({_key(r, default_config) for r in rows if "trace" in r}, key=lambda k: (k[0], -k[1]))
    if not panels:
        return
    cols = min(2, len(panels))
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6 * cols, 4.2 * rows_), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    names = sorted({r["searcher"] for r in rows if "trace" in r}, key=lambda n: (order.get(n, 99), n))
    colours = {n: f"C{k}" for k, n in enumerate(names)}
    for ax, (config, budget) in zip(axes.flat, panels):
        sel = [r for r in rows if "trace" in r and _key(r, default_config) == (config, budget)]
        cap = max(r["evaluations"] for r in sel)
        for r in sel:
            steps = r["trace"]
            if not steps:
                continue
            xs = [k for k, _ in steps] + [r["evaluations"]]
            ys = [f for _, f in steps] + [steps[-1][1]]
            first = r is next(x for x in sel if x["searcher"] == r["searcher"] and x["trace"])
            ax.step(xs, ys, where="post", color=colours[r["searcher"]], lw=1, alpha=0.7,
                    marker="o" if r["evaluations"] <= 2 else None, ms=3, label=r["searcher"] if first else None)
        for f in goal.get((config, budget), {}).values():
            ax.axhline(f, color="k", ls=":", lw=0.6)
        ax.axvline(cap / 3, color="grey", ls="--", lw=0.8)
        # y from the best final value to where the long runs stand after a tenth of the cap
        finals = [r["trace"][-1][1] for r in sel if r["trace"]]
        later = [_at(r["trace"], cap / 10) for r in sel if r["trace"] and r["evaluations"] > 10]
        lo, hi = min(finals), max([f for f in later if f is not None] or finals)
        near = [f for r in sel if r["trace"] and r["evaluations"] <= 2 and (f := r["trace"][-1][1]) <= lo + 3 * (hi - lo)]
        hi = max([hi, *near])  # one-evaluation plans close to the rest stay in view
        pad = 0.05 * (hi - lo) or 0.01 * abs(lo) or 0.01
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xscale("log")
        ax.set_xlim(0.9, cap * 1.1)
        ax.set_title(f"{config}, avg_bits <= {budget}")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best calibration fitness so far")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
