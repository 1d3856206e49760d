"""The experiment runner: model → data → database → profile → searchers per budget → run directory."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from layerbudget.data import HELDOUT, EvalSet, build_eval_sets, check_eval_sources
from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.executor import Executor, InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.evaluators.scorer import identity
from layerbudget.experiments.config import ExperimentConfig, executor_kind
from layerbudget.experiments.outputs import CandidateLog, RunResult, write_run_dir
from layerbudget.experiments.partial_run import PartialRun, has_checkpoints, partial_dir
from layerbudget.experiments.prepare import Prepared, prepare
from layerbudget.experiments.significance import compare_searchers, measure_final_plans
from layerbudget.plan import Plan, package_versions
from layerbudget.profiles.option_fit import fit_notes
from layerbudget.search.registry import make_searcher


def resolve_run_dir(cfg: ExperimentConfig, out: str | Path | None, overwrite: bool, resume: bool = False) -> Path:
    """The run directory; refuse an existing one unless ``overwrite`` (or ``resume`` an unfinished one)."""
    if out is None and cfg.output.dir:
        out = cfg.output.dir
    if out is None:
        if resume:
            raise LayerbudgetError("--resume needs the run directory of the interrupted run")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{cfg.name}-{stamp}"
    path = Path(out).expanduser()
    if resume:
        if not partial_dir(path).is_dir():
            raise LayerbudgetError(f"{str(path)!r} has no unfinished run to resume ({partial_dir(path)} is missing)")
        return path
    if path.exists() and not overwrite:
        raise LayerbudgetError(f"output directory {str(path)!r} exists; pass --overwrite or choose another --out")
    if path.exists() and not path.is_dir():
        raise LayerbudgetError(f"output path {str(path)!r} exists and is not a directory")
    if partial_dir(path).is_dir() and not has_checkpoints(partial_dir(path)):
        shutil.rmtree(partial_dir(path), ignore_errors=True)  # stale: nothing in it to resume
    if partial_dir(path).exists() and not overwrite:
        raise LayerbudgetError(
            f"an interrupted run exists at {str(partial_dir(path))!r}; pass --resume {path} or --overwrite"
        )
    return path


def make_executor(cfg: ExperimentConfig, prep: Prepared, evaluator: Evaluator) -> Executor:
    """The executor of ``cfg.executor`` (see :func:`~layerbudget.experiments.config.executor_kind`;
    Ray is imported only when it is used, not to load it for inline runs)."""
    if executor_kind(cfg.executor) == "inline":
        return InlineExecutor(evaluator)
    from layerbudget.evaluators.ray_executor import RayExecutor

    ex = cfg.executor
    return RayExecutor(
        prep.scorer_spec(),
        address=ex.address or None,
        num_workers=ex.workers or None,
        threads_per_worker=ex.threads_per_worker or None,
        max_retries=ex.max_retries,
        expect=identity(evaluator),
        ship_database=ex.ship_database,
    )


def run_experiment(
    cfg: ExperimentConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
    resume: bool = False,
) -> RunResult:
    """Run every searcher at every budget of ``cfg`` and write the run directory atomically.

    Searchers checkpoint after every round into ``<run dir>.partial/``; ``resume=True`` continues an
    interrupted run from there and finishes with the plan an uninterrupted run would give.
    """
    run_dir = resolve_run_dir(cfg, out, overwrite, resume)
    check_eval_sources(cfg.data.eval_sources)  # before any work
    partial = PartialRun(run_dir, cfg, resume=resume)  # created with the first checkpoint
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if executor_kind(cfg.executor) == "ray":  # an unreachable cluster fails now, not after the database
        from layerbudget.evaluators.ray_connect import check_address

        check_address(cfg.executor.address or None)
    prep = prepare(cfg, progress=progress)
    adapter, tokens, fitness, database, problem = prep.adapter, prep.tokens, prep.fitness, prep.database, prep.problem
    calib_hash = prep.calib_hash
    eval_sets = [
        EvalSet(HELDOUT, tokens.source, tokens.heldout, tokens.text_hash),
        *build_eval_sets(
            adapter.tokenizer, cfg.data.eval_sources, seq_len=tokens.seq_len, windows=cfg.data.heldout_windows,
            seed=cfg.seed,
        ),
    ]
    timings["prepare"] = time.perf_counter() - t0
    log(
        f"database: {len(adapter.units)} units, {len(prep.option_names)} options, "
        f"{'reused' if prep.database_reused else 'built'} ({database.root})"
    )
    for note in fit_notes(adapter, prep.option_names, cfg.budget):
        log(f"note: {note}")

    evaluator = prep.evaluator()
    with make_executor(cfg, prep, evaluator) as executor:
        workers = getattr(executor, "num_workers", 1)
        log(f"executor: {executor_kind(cfg.executor)} ({workers} worker{'s' if workers != 1 else ''})")
        t = time.perf_counter()
        profile, prof_reused = prep.profile(evaluator, executor=executor, progress=progress)
        profile.apply(problem)
        timings["profile"] = time.perf_counter() - t
        log(f"profile: {len(profile.table)} (slot, option) rows, {'reused' if prof_reused else 'measured'}")
        if prep.latency is not None:
            lat = cfg.latency
            dense = problem.uniform("dense")
            dense_us = problem.metric(dense, "latency_us") if dense is not None else float("nan")
            source = prep.latency["source"].iloc[0]
            log(f"latency: {lat.target} at {lat.tokens} row(s), dense units {dense_us:.1f} us ({source})")

        candidates = CandidateLog(problem)
        result = RunResult(run_dir, timings=timings, eval_sets=eval_sets)
        finals = []  # the result of every (budget, searcher), in order
        provenance_base = {
            "profile_hash": profile.key,
            "database_key": database.key,
            "data": {
                "source": tokens.source,
                "text_sha256": tokens.text_hash,
                "calib_sha256": calib_hash,
                "eval_texts": {es.label: {"source": es.source, "text_sha256": es.text_hash, "windows": es.windows}
                               for es in eval_sets},
            },
            "fitness": fitness.name,
            "seed": cfg.seed,
            "config": cfg.to_dict(),
            "versions": package_versions(),
        }
        model_info = {"id": adapter.model_id, "weight_hash": adapter.weight_hash(), "family": adapter.spec.name}
        partial.start()
        for b_idx, budget in enumerate(cfg.budget):
            for name in cfg.search.searchers:
                t = time.perf_counter()
                try:
                    searcher = make_searcher(name, problem, budget, seed=cfg.seed,
                                             params=cfg.search.searcher_params(name))
                    tokens.check_fresh(searcher.fresh_windows(), f"search.params.{name}")
                except LayerbudgetError:  # bad parameters: earlier searchers' checkpoints are of no use
                    partial.discard()
                    raise
                outcome = run_search(
                    searcher,
                    executor,
                    checkpoint=partial.checkpoint(f"b{b_idx}-{name}"),
                    fingerprint=cfg.fingerprint(),
                    on_evaluations=lambda evs, n=name, b=b_idx: candidates.add(b, n, evs),
                    before_save=partial.ensure,
                )
                best = outcome.result
                fit = evaluator.score(best)
                finals.append(best)
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
                    measured={"fitness": fit, "evaluations": len(outcome.evaluations)},
                    provenance={**provenance_base, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                )
                result.plans.append(plan)
                result.rows.append(
                    {
                        "budget": str(budget),
                        "searcher": name,
                        "avg_bits": predicted["avg_bits"],
                        "bytes": predicted["bytes"],
                        **({"latency_us": predicted["latency_us"]} if "latency_us" in predicted else {}),
                        "fitness": fit,
                        "evaluations": len(outcome.evaluations),
                        "broken": len(outcome.broken),
                        "seconds": seconds,
                    }
                )
    # every final plan on the calibration windows and every evaluation text, window by window
    t = time.perf_counter()
    scores = measure_final_plans(evaluator, finals, tokens.calib, eval_sets, result.rows, result.plans)
    result.comparisons = compare_searchers(result.rows, scores)
    timings["heldout"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    write_run_dir(run_dir, cfg, result, candidates, profile, overwrite=overwrite or resume, latency=prep.latency)
    partial.finish()
    return result
