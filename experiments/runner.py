"""The experiment runner: model → data → database → profile → searchers per budget → run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from layerbudget.config import ExperimentConfig
from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.outputs import CandidateLog, write_run_dir
from layerbudget.plan import Plan, package_versions
from layerbudget.prepare import prepare
from layerbudget.profiles.profile import load_or_build_profile
from layerbudget.search import InlineExecutor, make_searcher, run_search


@dataclass
class RunResult:
    """What a run produced: its directory, one summary row and one plan per (budget, searcher)."""

    run_dir: Path
    rows: list[dict] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def resolve_run_dir(cfg: ExperimentConfig, out: str | Path | None, overwrite: bool) -> Path:
    """The run directory; refuse an existing one unless ``overwrite``."""
    if out is None and cfg.output.dir:
        out = cfg.output.dir
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{cfg.name}-{stamp}"
    path = Path(out).expanduser()
    if path.exists() and not overwrite:
        raise LayerbudgetError(f"output directory {str(path)!r} exists; pass --overwrite or choose another --out")
    if path.exists() and not path.is_dir():
        raise LayerbudgetError(f"output path {str(path)!r} exists and is not a directory")
    return path


def run_experiment(
    cfg: ExperimentConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
) -> RunResult:
    """Run every searcher at every budget of ``cfg`` and write the run directory atomically."""
    run_dir = resolve_run_dir(cfg, out, overwrite)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prep = prepare(cfg, progress=progress)
    adapter, tokens, fitness, database, problem = prep.adapter, prep.tokens, prep.fitness, prep.database, prep.problem
    calib_hash = prep.calib_hash
    timings["prepare"] = time.perf_counter() - t0
    log(
        f"database: {len(adapter.units)} units, {len(prep.option_names)} options, "
        f"{'reused' if prep.database_reused else 'built'} ({database.root})"
    )

    t = time.perf_counter()
    evaluator = prep.evaluator()
    key_parts = {"calib": calib_hash, "fitness": fitness.name, "seq_len": tokens.seq_len}
    profile, prof_reused = load_or_build_profile(
        problem, database, adapter, evaluator.score, prep.cache_dir, key_parts, progress=progress
    )
    problem.set_proxy(profile.proxy())
    timings["profile"] = time.perf_counter() - t
    log(f"profile: {len(profile.table)} (slot, option) rows, {'reused' if prof_reused else 'measured'}")

    candidates = CandidateLog(problem)
    result = RunResult(run_dir, timings=timings)
    provenance_base = {
        "profile_hash": profile.key,
        "database_key": database.key,
        "data": {"source": tokens.source, "text_sha256": tokens.text_hash, "calib_sha256": calib_hash},
        "fitness": fitness.name,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "versions": package_versions(),
    }
    model_info = {"id": adapter.model_id, "weight_hash": adapter.weight_hash(), "family": adapter.spec.name}
    with InlineExecutor(evaluator) as executor:
        for b_idx, budget in enumerate(cfg.budget):
            for name in cfg.search.searchers:
                t = time.perf_counter()
                params = dict(cfg.search.params.get(name, {}))
                searcher = make_searcher(name, problem, budget, seed=cfg.seed, **params)
                outcome = run_search(
                    searcher, executor, on_evaluations=lambda evs, n=name, b=b_idx: candidates.add(b, n, evs)
                )
                best = outcome.result
                fit, held = evaluator.score(best), evaluator.heldout(best)
                seconds = time.perf_counter() - t
                timings[f"search:{name}:{b_idx}"] = seconds
                units, dropped = problem.assignment(best)
                predicted = {**problem.metrics(best), "proxy": problem.proxy_score(best)}
                plan = Plan(
                    model=model_info,
                    units=units,
                    dropped=tuple(dropped),
                    searcher=name,
                    budget=budget.to_dict(),
                    predicted=predicted,
                    measured={"fitness": fit, "heldout": held, "evaluations": len(outcome.evaluations)},
                    provenance={**provenance_base, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                )
                result.plans.append(plan)
                result.rows.append(
                    {
                        "budget": str(budget),
                        "searcher": name,
                        "avg_bits": predicted["avg_bits"],
                        "bytes": predicted["bytes"],
                        "fitness": fit,
                        "heldout": held,
                        "evaluations": len(outcome.evaluations),
                        "broken": len(outcome.broken),
                        "seconds": seconds,
                    }
                )
    timings["total"] = time.perf_counter() - t0
    write_run_dir(run_dir, cfg, result, candidates, profile, overwrite=overwrite)
    return result
