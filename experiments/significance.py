"""A run's figures with their noise: standard errors of the final plans and paired searcher comparisons.

After the search, every final plan is scored window by window (:mod:`layerbudget.evaluators.measure`)
on the calibration windows and on every evaluation set (the calibration text's held-out part and
each text of ``data.eval_sources``). Each measured column ``c`` of the summary gets ``c_se``, its
standard error over windows (:mod:`layerbudget.evaluators.uncertainty`); at every budget, each pair
of searchers is compared on the same windows, and the difference is called real when it exceeds
``NOISE_Z`` paired standard errors.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

import torch

from layerbudget.data import EvalSet
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.measure import measure_plans
from layerbudget.evaluators.uncertainty import NOISE_Z, WindowScores, paired_difference
from layerbudget.plan import Plan
from layerbudget.problem import Candidate

FITNESS = "fitness"  # the calibration windows' column
SE = "_se"  # suffix of a column's standard error
COMPARISON_COLUMNS = ["budget", "set", "a", "b", "a_value", "b_value", "difference", "se", "z", "beyond_noise"]


def measure_final_plans(
    evaluator: Evaluator,
    finals: Sequence[Candidate],
    calib: torch.Tensor,
    eval_sets: Sequence[EvalSet],
    rows: list[dict],
    plans: list[Plan],
) -> dict[str, list[WindowScores]]:
    """Score ``finals`` (one per summary row and plan) window by window and add the figures to ``rows`` and ``plans``.

    The calibration fitness keeps the search's own number and gains ``fitness_se``; every evaluation
    set adds ``<label>`` and ``<label>_se``. Returns the window scores per column label.
    """
    scores = {FITNESS: measure_plans(evaluator, finals, calib)}
    for es in eval_sets:
        scores[es.label] = measure_plans(evaluator, finals, es.ids)
    for k, (row, plan) in enumerate(zip(rows, plans)):
        figures = {FITNESS: row[FITNESS], FITNESS + SE: scores[FITNESS][k].se}
        for es in eval_sets:
            figures[es.label] = scores[es.label][k].value
            figures[es.label + SE] = scores[es.label][k].se
        new_row: dict = {}
        for key, value in row.items():
            new_row.update(figures if key == FITNESS else {key: value})
        rows[k] = new_row
        measured = {**figures, **{m: v for m, v in plan.measured.items() if m not in figures}}
        plans[k] = dataclasses.replace(plan, measured=measured)
    return scores


def compare_searchers(rows: Sequence[Mapping], scores: Mapping[str, Sequence[WindowScores]]) -> list[dict]:
    """Every pair of searchers at every budget on every window set: ``b − a`` (``a`` listed first) and
    its paired standard error; ``beyond_noise`` when ``|b − a| > NOISE_Z · SE``."""
    out = []
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    for budget in budgets:
        idx = [k for k, r in enumerate(rows) if r["budget"] == budget]
        for label, per_plan in scores.items():
            for i, j in itertools.combinations(idx, 2):
                d = paired_difference(per_plan[j], per_plan[i])
                out.append(
                    {
                        "budget": budget,
                        "set": label,
                        "a": rows[i]["searcher"],
                        "b": rows[j]["searcher"],
                        "a_value": per_plan[i].value,
                        "b_value": per_plan[j].value,
                        "difference": d.value,
                        "se": d.se,
                        "z": d.z,
                        "beyond_noise": d.exceeds_noise,
                    }
                )
    return out


# ----- text ----------------------------------------------------------------------------------------
def measured_columns(columns: Sequence[str]) -> list[str]:
    """The columns that come with a standard error column (``c`` and ``c_se``), in order."""
    names = set(columns)
    return [c for c in columns if not c.endswith(SE) and c + SE in names]


def with_error(value: object, se: object) -> str:
    """``0.3036 ± 0.0021``: the standard error to two significant digits, the value to its last digit."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if not isinstance(se, (int, float)) or not math.isfinite(se) or se <= 0:
        return f"{value:.4g}"
    digits = max(0, 1 - math.floor(math.log10(se)))
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def display_rows(rows: Sequence[Mapping], columns: Sequence[str]) -> list[dict[str, str]]:
    """``rows`` as text cells for ``columns``; a measured column shows ``value ± SE``."""
    out = []
    for r in rows:
        cells = {}
        for c in columns:
            v = r.get(c, "")
            if c + SE in r:
                cells[c] = with_error(v, r[c + SE])
            elif isinstance(v, float):
                cells[c] = f"{v:.4g}" if math.isfinite(v) else str(v)
            else:
                cells[c] = str(v)
        out.append(cells)
    return out


def aligned_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """A plain-text table with one line per row and a header (columns padded to their widest cell)."""
    cells = display_rows(rows, columns)
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in cells]
    return "\n".join(lines)


def noise_line(comparisons: Sequence[Mapping]) -> str:
    """One line naming the held-out searcher differences that exceed their noise (or saying there are none)."""
    real = [c for c in comparisons if bool(c["beyond_noise"]) and c["set"] != FITNESS]
    said = ", ".join(
        f"{c['b']} - {c['a']} {c['difference']:+.4f} ({c['z']:+.1f} SE) on {c['set']} at {c['budget']}" for c in real
    )
    return f"held-out differences beyond noise (paired, |z| > {NOISE_Z:g}): {said or 'none'}"


def _set_name(label: str) -> str:
    return "calibration windows" if label == FITNESS else label


def comparisons_markdown(comparisons: Sequence[Mapping]) -> str:
    """Per budget: a table of searcher differences per window set, and which exceed their noise."""
    if not comparisons:
        return "One searcher per budget: nothing to compare."
    parts = [
        f"`b − a` on the same windows with its paired standard error; a difference is beyond noise when "
        f"|z| > {NOISE_Z:g} (negative: `b` is better). Calibration differences are what the searchers "
        "optimised and flatter them; held-out sets are never seen by a search.",
    ]
    for budget in dict.fromkeys(c["budget"] for c in comparisons):
        rows = [c for c in comparisons if c["budget"] == budget]
        parts += ["", f"### {budget}", "", "| set | b − a | difference | z | beyond noise |", "|---|---|---|---|---|"]
        for c in rows:
            rel = c["difference"] / c["a_value"] if c["a_value"] else math.nan
            parts.append(
                f"| {_set_name(c['set'])} | {c['b']} − {c['a']} | {with_error(c['difference'], c['se'])} "
                f"({rel:+.1%}) | {c['z']:.1f} | {'yes' if c['beyond_noise'] else 'no'} |"
            )
        real = [c for c in rows if c["beyond_noise"] and c["set"] != FITNESS]
        if real:
            said = [
                f"{c['b'] if c['difference'] < 0 else c['a']} beats {c['a'] if c['difference'] < 0 else c['b']} "
                f"on {c['set']}"
                for c in real
            ]
            parts += ["", "Beyond noise held out: " + "; ".join(said) + "."]
        else:
            parts += ["", "No held-out difference between searchers at this budget exceeds its noise."]
    return "\n".join(parts)
