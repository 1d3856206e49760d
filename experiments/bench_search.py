"""Benchmark of the searchers on MiniLM: held-out distortion at equal fitness evaluations, over seeds.

One profile (the default experiment's data and options) is shared by every run; each searcher is
run at each budget with several search seeds. ``evolution`` and both ``optuna`` samplers get the
same number of fitness evaluations as ``hybrid`` used with that seed. Prints mean ± std of the
calibration fitness and the held-out distortion and writes the raw rows as JSON::

    python -m layerbudget.experiments.bench_search --budgets 3.0 2.5 --seeds 5 [--out bench-search.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from layerbudget.budget import Budget
from layerbudget.config import load_config
from layerbudget.prepare import prepare
from layerbudget.profiles.profile import load_or_build_profile
from layerbudget.search import InlineExecutor, make_searcher, run_search

HYBRID = {"generations": 20, "offspring": 12, "stages": [[3, 2], [1, 8]]}


def run_one(prep, evaluator, name: str, budget: Budget, seed: int, params: dict) -> dict:
    t = time.perf_counter()
    searcher = make_searcher(name, prep.problem, budget, seed=seed, **params)
    out = run_search(searcher, InlineExecutor(evaluator))
    best = out.result
    return {
        "searcher": name if name != "optuna" else f"optuna-{params['sampler']}",
        "budget": budget.to_dict()["avg_bits"],
        "seed": seed,
        "evaluations": len(out.evaluations),
        "avg_bits": prep.problem.metric(best, "avg_bits"),
        "fitness": evaluator.score(best),
        "heldout": evaluator.heldout(best),
        "seconds": time.perf_counter() - t,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.0, 2.5])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="bench-search.json")
    args = parser.parse_args()
    cfg = load_config()
    prep = prepare(cfg, progress=False)
    evaluator = prep.evaluator()
    key = {"calib": prep.calib_hash, "fitness": prep.fitness.name, "seq_len": prep.tokens.seq_len}
    profile, _ = load_or_build_profile(prep.problem, prep.database, prep.adapter, evaluator.score, prep.cache_dir, key, progress=False)
    prep.problem.set_proxy(profile.proxy())
    rows = []
    for bits in args.budgets:
        budget = Budget.from_dict({"avg_bits": bits})
        for name in ("uniform", "ilp"):
            rows.append(run_one(prep, evaluator, name, budget, 0, {}))
        for seed in range(args.seeds):
            hyb = run_one(prep, evaluator, "hybrid", budget, seed, HYBRID)
            rows.append(hyb)
            n = hyb["evaluations"]
            evo = {**HYBRID, "max_evaluations": n, "generations": 10 * HYBRID["generations"]}
            rows.append(run_one(prep, evaluator, "evolution", budget, seed, evo))
            for sampler in ("nsga2", "tpe"):
                rows.append(run_one(prep, evaluator, "optuna", budget, seed, {"sampler": sampler, "max_evaluations": n}))
            print(f"avg_bits {bits} seed {seed} done", file=sys.stderr)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'budget':>6}  {'searcher':<14}{'evals':>7}  {'fitness (mean±std)':>22}  {'held-out (mean±std)':>22}")
    for bits in args.budgets:
        for name in dict.fromkeys(r["searcher"] for r in rows):
            sel = [r for r in rows if r["budget"] == bits and r["searcher"] == name]

            def ms(key: str, sel=sel) -> str:
                vals = [r[key] for r in sel]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                return f"{statistics.mean(vals):.4f} ± {sd:.4f}"

            evals = statistics.mean(r["evaluations"] for r in sel)
            print(f"{bits:>6}  {name:<14}{evals:>7.0f}  {ms('fitness'):>22}  {ms('heldout'):>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
