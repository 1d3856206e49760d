"""Benchmark of the searchers on MiniLM: held-out distortion at equal fitness evaluations, over seeds.

One profile (the data and options of the default experiment, or of ``--config``) is shared by every
run. ``uniform``, ``ilp`` and ``ilp-op`` (the ILP on operating-point sensitivities around the best
uniform plan, two rounds) run once per budget (they have no randomness; with the chunk that starts
at seed 0); ``hybrid`` runs with each search seed under ``--max-evaluations`` (seeds included;
``--hybrid-params`` adds parameters, e.g. the default config's explicit evolution stages), and
``evolution`` (given only ``max_evaluations``, so both are sized to the cap the same way) and both
``optuna`` samplers get exactly as many fitness evaluations as ``hybrid`` used with that seed
(``--max-evaluations`` when hybrid is not run). Every run is appended to the JSON file as soon as it
ends, so a subset (``--searchers``, ``--budgets``, ``--seeds``/``--first-seed``) can run now and
the rest later or elsewhere; every row names its experiment config, and ``--table`` prints mean ±
std of the calibration fitness and the held-out distortion per config, budget and searcher over any
set of such files::

    python benchmarks/bench_search.py --budgets 3.0 2.5 --seeds 5 [--threads 1] [--out bench-search.json]
    python benchmarks/bench_search.py --budgets 2.5 --first-seed 2 --seeds 3 --out part2.json
    python benchmarks/bench_search.py --config experiments/minilm_gptq.toml --out gptq.json
    python benchmarks/bench_search.py --table bench-search.json part2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.experiments.config import load_config
from layerbudget.experiments.prepare import prepare
from layerbudget.problem import Budget
from layerbudget.search.registry import make_searcher
from layerbudget.storage import atomic_write_text

SEARCHERS = ("uniform", "ilp", "ilp-op", "ilp-op-sol", "hybrid", "evolution", "optuna-nsga2", "optuna-tpe")
SEEDLESS = ("uniform", "ilp", "ilp-op", "ilp-op-sol")
# ilp-op: the ILP on operating-point sensitivities around the best fitting uniform plan, re-linearised
# once around its solution (see layerbudget.search.operating_point); ilp-op-sol: the same around the
# ILP's own dense-proxy solution
LABELS = {  # label -> (searcher, parameters)
    "optuna-nsga2": ("optuna", {"sampler": "nsga2"}),
    "optuna-tpe": ("optuna", {"sampler": "tpe"}),
    "ilp-op": ("ilp", {"reference": "uniform", "rounds": 2}),
    "ilp-op-sol": ("ilp", {"reference": "solution", "rounds": 2}),
}
ORDER = {name: k for k, name in enumerate(SEARCHERS)}


def run_one(prep, evaluator, label: str, budget: Budget, seed: int, params: dict) -> dict:
    name, extra = LABELS.get(label, (label, {}))
    params = {**extra, **params}
    t = time.perf_counter()
    searcher = make_searcher(name, prep.problem, budget, seed=seed, **params)
    out = run_search(searcher, InlineExecutor(evaluator))
    best = out.result
    row = {
        "config": prep.cfg.name,
        "searcher": label,
        "budget": budget.to_dict()["avg_bits"],
        "seed": seed,
        "params": params,
        "evaluations": len(out.evaluations),
        "avg_bits": prep.problem.metric(best, "avg_bits"),
        "fitness": evaluator.score(best),
        "heldout": evaluator.heldout(best),
        "seconds": time.perf_counter() - t,
    }
    if name == "hybrid":  # where the evolution started: the best seed, and whether it was a uniform plan
        row["seeds"] = len(searcher.seeds)
        row["start_fitness"] = searcher.scores[searcher.start]
        start = searcher.start  # a seed (solver or uniform plan), or a corrected / operating-point plan
        row["start_kind"] = (
            ("uniform" if searcher.seeds.index(start) >= searcher.n_solver_seeds else "solver")
            if start in searcher.seeds
            else "corrected"
        )
        row["finalists"] = [  # compared on the validation batch; the chosen one is the result
            {
                "fitness": searcher.scores[c],
                "validation": v,
                "heldout": row["heldout"] if c == best else evaluator.heldout(c),
                "chosen": c == best,
            }
            for c, v in searcher.validation.items()
        ]
    return row


def table(rows: list[dict]) -> str:
    """Mean ± std per (config, budget, searcher); rows without a config are the default experiment's."""
    lines = [
        f"{'config':<14}{'budget':>6}  {'searcher':<14}{'runs':>5}{'evals':>7}  "
        f"{'fitness (mean±std)':>22}  {'held-out (mean±std)':>22}"
    ]
    default = load_config().name  # rows written before rows named their config
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("config", default), r["budget"], r["searcher"]), []).append(r)
    for (config, bits, name), sel in sorted(
        groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], ORDER.get(kv[0][2], 99), kv[0][2])
    ):

        def ms(key: str, sel=sel) -> str:
            vals = [r[key] for r in sel]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):.4f} ± {sd:.4f}"

        evals = statistics.mean(r["evaluations"] for r in sel)
        lines.append(
            f"{config:<14}{bits:>6}  {name:<14}{len(sel):>5}{evals:>7.0f}  {ms('fitness'):>22}  {ms('heldout'):>22}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=[3.0, 2.5], help="average bits per weight"
    )
    parser.add_argument(
        "--config", help="experiment TOML (default: the embedded default; e.g. experiments/minilm_gptq.toml)"
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of search seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=SEARCHERS)
    parser.add_argument("--max-evaluations", type=int, default=350, help="hybrid's cap (seeds included)")
    parser.add_argument("--hybrid-params", default="{}", help="extra hybrid parameters as JSON")
    parser.add_argument(
        "--out", default="bench-search.json", help="JSON list of rows (appended to when it exists)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 is fastest on a busy 2-core machine)"
    )
    parser.add_argument(
        "--table", nargs="+", metavar="JSON", help="only print the table of these result files"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.table:
        print(table([r for f in args.table for r in json.loads(Path(f).read_text())]))
        return 0
    try:
        cfg = load_config(args.config)
    except LayerbudgetError as exc:
        parser.exit(2, f"error: {exc}\n")
    prep = prepare(cfg, progress=False)
    evaluator = prep.evaluator()
    profile, _ = prep.profile(evaluator, progress=False)
    prep.problem.set_proxy(profile.proxy())
    out = Path(args.out)
    rows: list[dict] = json.loads(out.read_text()) if out.exists() else []
    new: list[dict] = []

    def record(row: dict) -> dict:
        rows.append(row)
        new.append(row)
        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
        print(
            f"avg_bits {row['budget']} seed {row['seed']} {row['searcher']}: fitness {row['fitness']:.4f} "
            f"held-out {row['heldout']:.4f} ({row['evaluations']} evaluations, {row['seconds']:.0f} s)",
            file=sys.stderr,
        )
        return row

    hybrid_params = {"max_evaluations": args.max_evaluations, **json.loads(args.hybrid_params)}
    for bits in args.budgets:
        budget = Budget.from_dict({"avg_bits": bits})
        for name in SEEDLESS:
            if name in args.searchers and args.first_seed == 0:  # seedless: once, with the first chunk
                record(run_one(prep, evaluator, name, budget, 0, {}))
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            n = args.max_evaluations
            if "hybrid" in args.searchers:
                n = record(run_one(prep, evaluator, "hybrid", budget, seed, hybrid_params))["evaluations"]
            for name in ("evolution", "optuna-nsga2", "optuna-tpe"):
                if name in args.searchers:
                    record(run_one(prep, evaluator, name, budget, seed, {"max_evaluations": n}))
    print(table(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
