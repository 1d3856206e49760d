"""Run-directory outputs: plan.json, per-searcher plans, candidates.parquet, summary.csv, report.md.

Everything is written into a temporary sibling directory that is renamed into place at the end, so
a run directory is either complete or absent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from layerbudget.data import EvalSet
from layerbudget.experiments.config import ExperimentConfig
from layerbudget.experiments.plots import write_run_plots
from layerbudget.experiments.significance import (
    COMPARISON_COLUMNS,
    comparisons_markdown,
    display_rows,
    measured_columns,
)
from layerbudget.plan import Plan
from layerbudget.problem import INACTIVE, Evaluation, Problem
from layerbudget.profiles.profile import Profile, write_profile
from layerbudget.storage import atomic_dir


@dataclass
class RunResult:
    """What a run produced: its directory, one summary row and one plan per (budget, searcher)."""

    run_dir: Path
    rows: list[dict] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    comparisons: list[dict] = field(default_factory=list)  # paired searcher differences per budget and window set
    eval_sets: list[EvalSet] = field(default_factory=list)  # where the final plans were measured besides calibration


class CandidateLog:
    """Every evaluated candidate with its searcher, budget, fidelity, costs and fitness."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.rows: list[dict] = []

    def add(self, budget: int, searcher: str, evaluations: list[Evaluation]) -> None:
        p = self.problem
        for e in evaluations:
            cand = e.candidate
            options = [None if c == INACTIVE else s.options[c] for s, c in zip(p.slots, cand)]
            self.rows.append(
                {
                    "budget": budget,
                    "searcher": searcher,
                    "eval": len(self.rows),
                    "windows": -1 if e.request.windows is None else e.request.windows,
                    "batch": e.request.batch,
                    "fitness": e.fitness,
                    **p.metrics(cand),
                    "proxy": p.proxy_score(cand),
                    "options": json.dumps(options),
                }
            )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


SUMMARY_COLUMNS = ["budget", "searcher", "avg_bits", "fitness", "heldout", "evaluations", "seconds"]


def summary_columns(rows: list[dict]) -> list[str]:
    """The printed columns: :data:`SUMMARY_COLUMNS` with every held-out text after ``heldout``."""
    present = list(rows[0]) if rows else []
    extra = [c for c in measured_columns(present) if c.startswith("heldout:")]
    cols = [c for c in SUMMARY_COLUMNS if c in present or not rows]
    at = cols.index("heldout") + 1 if "heldout" in cols else len(cols)
    return cols[:at] + extra + cols[at:]


def best_plan_index(result: RunResult) -> int:
    """The plan of the first budget with the lowest measured fitness (ties: the first searcher)."""
    first_budget = result.rows[0]["budget"]
    idx = [i for i, r in enumerate(result.rows) if r["budget"] == first_budget]
    return min(idx, key=lambda i: (result.rows[i]["fitness"], i))


def write_run_dir(
    run_dir: Path,
    cfg: ExperimentConfig,
    result: RunResult,
    candidates: CandidateLog,
    profile: Profile,
    *,
    overwrite: bool,
    latency: pd.DataFrame | None = None,
) -> None:
    best = best_plan_index(result)
    with atomic_dir(run_dir) as tmp:
        result.plans[best].save(tmp / "plan.json")
        (tmp / "plans").mkdir()
        budgets = {str(b): i for i, b in enumerate(cfg.budget)}
        for row, plan in zip(result.rows, result.plans):
            plan.save(tmp / "plans" / f"{row['searcher']}-b{budgets[row['budget']]}.json")
        candidates.frame().to_parquet(tmp / "candidates.parquet", index=False)
        write_profile(profile, tmp / "profile.parquet", {"run": cfg.name})
        if latency is not None:
            latency.to_parquet(tmp / "latency.parquet", index=False)
        pd.DataFrame(result.rows).to_csv(tmp / "summary.csv", index=False)
        pd.DataFrame(result.comparisons, columns=COMPARISON_COLUMNS).to_csv(tmp / "comparisons.csv", index=False)
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (tmp / "report.md").write_text(report_markdown(cfg, result, best))
        if len(cfg.budget) > 1 or len(cfg.search.searchers) > 1:
            write_run_plots(tmp, name=run_dir.name)


def report_markdown(cfg: ExperimentConfig, result: RunResult, best: int) -> str:
    plan = result.plans[best]
    counts: dict[str, int] = {}
    for opt in plan.units.values():
        counts[opt] = counts.get(opt, 0) + 1
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    held = "; ".join(
        f"`{es.label}`: {es.windows} windows of " + (
            f"the last {cfg.data.heldout_fraction:g} of {es.source}" if es.label == "heldout" else es.source
        )
        for es in result.eval_sets
    ) or f"{cfg.data.heldout_windows} held-out windows"
    columns = summary_columns(result.rows)
    return "\n".join(
        [
            f"# layerbudget run: {cfg.name}",
            "",
            f"- model: `{plan.model['id']}` (weights sha256 `{plan.model['weight_hash'][:16]}`)",
            f"- fitness: `{plan.provenance.get('fitness')}` on {cfg.data.calib_windows}×{cfg.data.seq_len} "
            f"calibration tokens; held-out, the same measure on texts the search never saw: {held}",
            "- every measured figure is `value ± standard error` over its windows",
            f"- seed: {cfg.seed}; profile `{str(plan.provenance.get('profile_hash'))[:16]}`",
            f"- timings: {timing}",
            "",
            "## Results",
            "",
            _markdown_table(display_rows(result.rows, columns), columns),
            "",
            "## Searcher differences",
            "",
            comparisons_markdown(result.comparisons),
            "",
            f"`plan.json` is the `{plan.searcher}` plan at budget {plan.budget} "
            f"(lowest calibration fitness at the first budget); every plan is under `plans/`.",
            "",
            "## Options in plan.json",
            "",
            _markdown_table([{"option": k, "units": v} for k, v in sorted(counts.items())], ["option", "units"]),
            "",
        ]
    )
