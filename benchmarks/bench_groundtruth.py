"""Ground-truth benchmark on MiniLM: exhaustive optima of enumerable problems vs dp, ilp, evolution, hybrid.

Three problems small enough to score every plan (:mod:`groundtruth_problems`), on the benchmark's own
experiment (``benchmarks/groundtruth.toml``: the default model and text, 4 calibration windows of
64 tokens, so a table takes minutes on a 2-core CPU):

- ``depth``: the 12 attention/MLP sub-blocks of MiniLM's 6 blocks, each kept or dropped (unit slots
  are dense-only), 4096 plans; budgets ``dropped >= k`` for k = 1..11;
- ``quant``: the 12 MLP unit slots at ``rtn-b2-g64`` or ``rtn-b4-g64`` (attention dense, outside the
  problem), 4096 plans; budgets ``avg_bits <= 2.5 + (m + 0.5)/6``, i.e. at most m slots at 4 bits,
  m = 1..11;
- ``mixed``: the 8 MLP unit slots of blocks 2-5 with three options (``rtn-b4-g64``, ``rtn-b2-g64``,
  ``magnitude-2:4+rtn-b4-g64``), 6561 plans, under two constraints: ``avg_bits <= 4.5 - c/8`` and
  ``sparsity >= n/16`` (at least n slots at 2:4, and 2 x #2-bit + #2:4 >= c), n = 1, 3, 5 and
  c = 4, 6, 8, 10.

The additive proxy is the one-at-a-time fitness delta of each (slot, option) read off the same
table (depth: from the dense model; quant and mixed: from every slot at 4 bits).

Definitions. A searcher *hits* an instance (problem, budget) with a seed when the plan it
**returns** is the exhaustive real-fitness optimum (the best plan on the standard calibration
windows among all plans within budget); ``reached`` also counts how often the optimum was the best
plan it scored, whatever it returned. An instance *qualifies* as a test of search when the proxy
optimum is not the real optimum (otherwise the solver seed that evolution and hybrid start from is
already the answer) and more plans fit the budget than the evaluation cap (otherwise scoring them
all is possible); the others are reported apart as trivial. The target: on every qualifying
instance, ``evolution`` and ``hybrid`` (their defaults, ``max_evaluations=300``: every request
counts, fresh-window ones included) return the optimum in at least 9 of 10 seeds. ``dp`` (one
constraint) and ``ilp`` must reach the exhaustive proxy optimum on every instance.

Requests on the standard windows are looked up in the table; requests on fresh windows are really
evaluated (and memoised: the same plan on the same batch scores the same). Prints a table and
writes JSON with the tables' keys, whether each was rebuilt, and the package versions::

    python benchmarks/bench_groundtruth.py [--problems depth quant mixed] [--seeds 10]
        [--searchers evolution hybrid] [--params '{"evolution": {...}}'] [--threads 1]
        [--out bench-groundtruth.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from groundtruth_problems import PROBLEMS, GroundTruth, config_path, exhaustive, set_proxy

from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.executor import Executor
from layerbudget.evaluators.loop import run_search
from layerbudget.experiments.config import load_config
from layerbudget.experiments.prepare import prepare
from layerbudget.plan import package_versions
from layerbudget.problem import Budget, EvalRequest, Evaluation
from layerbudget.search.dp import solve_depth_dp, solve_dp
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.registry import make_searcher

TARGET = 9  # returned-optimum hits out of 10 seeds


# ----- executor ---------------------------------------------------------------------------------
class MemoExecutor(Executor):
    """Standard-window requests come from the exhaustive table; fresh-window requests are scored once
    per (plan, windows, batch) and remembered (the same request always scores the same)."""

    def __init__(self, gt: GroundTruth, evaluator: Evaluator, memo: dict):
        self.gt, self.evaluator, self.memo = gt, evaluator, memo
        self.looked_up = self.scored = 0

    def evaluate(self, requests: list[EvalRequest]) -> list[Evaluation]:
        out = []
        for r in requests:
            if r.windows is None:
                self.looked_up += 1
                f = float(self.gt.fitness[self.gt.index(r.candidate)])
            else:
                self.scored += 1
                key = (self.gt.index(r.candidate), r.windows, r.batch)
                if key not in self.memo:
                    self.memo[key] = float(self.evaluator.score(r.candidate, r.windows, r.batch))
                f = self.memo[key]
            out.append(Evaluation(r, f))
        return out


# ----- checks -----------------------------------------------------------------------------------
def budgets_of(name: str) -> list[Budget]:
    if name == "depth":
        return [Budget.from_dict({"dropped": k}) for k in range(1, 12)]
    if name == "quant":  # at most m of the 12 slots at 4 bits
        return [Budget.from_dict({"avg_bits": round(2.5 + (m + 0.5) / 6, 4)}) for m in range(1, 12)]
    # mixed: at least n slots at 2:4 and 2 x #2-bit + #2:4 >= c (the optima hold two 2:4 slots on their own)
    return [Budget.from_dict({"avg_bits": 4.5 - c / 8, "sparsity": n / 16}) for n in (1, 3, 5) for c in (4, 6, 8, 10)]


def solver_checks(gt: GroundTruth, budget: Budget, feasible: list[int], cap: int) -> dict:
    """Exhaustive proxy and real optima, whether the instance qualifies, whether each solver reaches the proxy optimum."""
    p = gt.problem
    cands = [gt.candidate(m) for m in feasible]
    proxy = np.asarray([p.proxy_score(c) for c in cands])
    real = gt.fitness[feasible]
    best_proxy = float(proxy.min())
    real_opt = feasible[int(np.argmin(real))]
    proxy_opt = feasible[int(np.argmin(proxy))]
    row = {
        "feasible": len(feasible),
        "real_opt": real_opt,
        "real_opt_fitness": float(real.min()),
        "proxy_opt": proxy_opt,
        "proxy_opt_fitness": float(gt.fitness[proxy_opt]),
        "proxy_opt_is_real_opt": proxy_opt == real_opt,
        "qualifies": proxy_opt != real_opt and len(feasible) > cap,
        "solvers": {},
    }
    solutions = {"ilp": solve_ilp(p, budget)}
    if len(budget.constraints) == 1:
        solutions["dp"] = solve_dp(p, budget)
    if gt.name == "depth":
        scores = [float(p.proxy[i][1]) for i in gt.free]
        k = int(budget.to_dict()["dropped"])
        dropped = set(solve_depth_dp(scores, k))
        solutions["depth_dp"] = gt.candidate(sum(1 << j for j in dropped))
    tol = 1e-9 * max(1.0, abs(best_proxy))
    for name, c in solutions.items():
        row["solvers"][name] = {
            "plan": gt.index(c),
            "proxy": p.proxy_score(c),
            "equals_exhaustive_proxy": bool(p.satisfies(c, budget) and p.proxy_score(c) <= best_proxy + tol),
            "fitness": float(gt.fitness[gt.index(c)]),
        }
    return row


def search_runs(
    gt: GroundTruth,
    budget: Budget,
    evaluator: Evaluator,
    args,
    real_opt: int,
    order: dict[int, int],
    heldout: Callable[[int], float],
    memo: dict,
) -> dict:
    out = {}
    for name in args.searchers:
        params = args.params.get(name, {})
        runs = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            ex = MemoExecutor(gt, evaluator, memo)
            searcher = make_searcher(
                name, gt.problem, budget, seed=seed, max_evaluations=args.max_evaluations, **params
            )
            res = run_search(searcher, ex)
            m = gt.index(res.result)
            best = min(
                (e for e in res.evaluations if e.request.windows is None and gt.problem.satisfies(e.candidate, budget)),
                key=lambda e: (e.fitness, gt.index(e.candidate)),
            )
            found = [k for k, e in enumerate(res.evaluations, 1) if gt.index(e.candidate) == real_opt]
            runs.append(
                {
                    "seed": seed,
                    "hit": m == real_opt,  # the returned plan is the optimum
                    "reached": gt.index(best.candidate) == real_opt,  # the best plan it scored is
                    "plan": m,
                    "heldout": heldout(m),
                    "rank": order[m],  # 0 = the exhaustive optimum among feasible plans
                    "fitness": float(gt.fitness[m]),
                    "evaluations": len(res.evaluations),
                    "optimum_first_asked": found[0] if found else None,  # evaluations until then
                    "fresh_scored": ex.scored,
                    "seconds": time.perf_counter() - t,
                }
            )
        out[name] = {"hits": sum(r["hit"] for r in runs), "reached": sum(r["reached"] for r in runs), "runs": runs}
    return out


def environment(tables: dict) -> dict:
    """What the numbers depend on besides the code: versions, the commit, the tables and their state."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "versions": package_versions(),
        "python": platform.python_version(),
        "commit": commit,
        "torch_threads": torch.get_num_threads(),
        "tables": tables,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--config", default=str(config_path()), help="experiment TOML (default: groundtruth.toml)")
    parser.add_argument("--searchers", nargs="*", default=["evolution", "hybrid"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-evaluations", type=int, default=300)
    parser.add_argument(
        "--params",
        type=json.loads,
        default={},
        metavar="JSON",
        help='extra parameters per searcher, e.g. \'{"evolution": {"offspring": 16}}\'',
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--out", default="bench-groundtruth.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cfg = load_config(args.config)
    prep = prepare(cfg, progress=False)
    report: dict = {
        "config": args.config,
        "max_evaluations": args.max_evaluations,
        "seeds": args.seeds,
        "params": args.params,
        "target": f"returned plan = exhaustive real optimum in >= {TARGET}/10 seeds on every qualifying instance",
        "problems": {},
    }
    tables, lines = {}, []
    for pname in args.problems:
        gt = PROBLEMS[pname](prep)
        tables[pname] = exhaustive(prep, gt, log)
        evaluator = prep.evaluator(gt.problem)  # after the table: it owns the model's state from here on
        set_proxy(gt)
        heldout = functools.cache(lambda m, gt=gt, ev=evaluator: float(ev.heldout(gt.candidate(m))))
        memo: dict = {}
        rows = []
        for budget in budgets_of(pname):
            feasible = [m for m in range(gt.size) if gt.problem.satisfies(gt.candidate(m), budget)]
            row = {"budget": budget.to_dict(), **solver_checks(gt, budget, feasible, args.max_evaluations)}
            ranked = sorted(feasible, key=lambda m: (gt.fitness[m], m))
            order = {m: r for r, m in enumerate(ranked)}
            row["second_best_gap"] = (
                float(gt.fitness[ranked[1]] / gt.fitness[ranked[0]] - 1) if len(ranked) > 1 else None
            )
            row["real_opt_heldout"] = heldout(row["real_opt"])
            row["search"] = search_runs(gt, budget, evaluator, args, row["real_opt"], order, heldout, memo)
            rows.append(row)
            line = format_row(pname, row)
            lines.append(line)
            log(line)
        report["problems"][pname] = {"plans": gt.size, "rows": rows}
        prep.adapter.restore()
    report["environment"] = environment(tables)
    report["targets"] = targets(report, args.seeds)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(header(args))
    print("\n".join(lines))
    t = report["targets"]
    print(
        f"qualifying instances: {t['qualifying']} of {t['instances']}; searcher targets met on them: "
        f"{t['search_met']}/{t['search_checked']}; solver checks: {t['solver_met']}/{t['solver_checked']}"
        + (f"; missed: {', '.join(t['failed'])}" if t["failed"] else "")
    )
    return 0


def targets(report: dict, seeds: int) -> dict:
    """The target on qualifying instances (searchers) and on every instance (solvers)."""
    search, solver, failed, qualifying, instances = [], [], [], 0, 0
    for pname, rep in report["problems"].items():
        for row in rep["rows"]:
            instances += 1
            where = f"{pname} {row['budget']}"
            for n, s in row["solvers"].items():
                solver.append(s["equals_exhaustive_proxy"])
                if not s["equals_exhaustive_proxy"]:
                    failed.append(f"{where} {n}")
            if not row["qualifies"]:
                continue
            qualifying += 1
            for n, s in row["search"].items():
                ok = s["hits"] >= TARGET * seeds / 10
                search.append(ok)
                if not ok:
                    failed.append(f"{where} {n} {s['hits']}/{seeds}")
    return {
        "instances": instances,
        "qualifying": qualifying,
        "search_checked": len(search),
        "search_met": sum(search),
        "solver_checked": len(solver),
        "solver_met": sum(solver),
        "failed": failed,
    }


def header(args) -> str:
    names = "".join(f"  {n:<37}" for n in args.searchers)
    legend = (
        "plans: feasible plans; q: the instance qualifies (proxy optimum != real optimum and plans > cap), "
        "'-': trivial, not counted;\ngap2: second-best real fitness over the best; dp/ilp: equal to the "
        "exhaustive proxy optimum (dp: one constraint only);\nsearchers: seeds whose RETURNED plan is the "
        "exhaustive real optimum / seeds, sc: seeds where it was the best plan scored, r: worst rank "
        "returned (0 = optimum),\ne: most evaluations used, f: median evaluations until the optimum was "
        "first asked, h: mean held-out of the returned plans over the optimum's"
    )
    return (
        f"{legend}\n{'problem':<7}{'budget':>28}{'plans':>7}{'q':>3}{'real opt':>10}{'gap2':>8}{'proxy=real':>11}"
        f"{'dp':>4}{'ilp':>5}{names}"
    )


def _searcher_cell(runs: list[dict], opt_heldout: float) -> str:
    hits = sum(r["hit"] for r in runs)
    reached = sum(r["reached"] for r in runs)
    held = round(statistics.fmean(r["heldout"] for r in runs) / opt_heldout - 1, 4) + 0.0  # no "-0.0%"
    worst = max(r["rank"] for r in runs)
    used = max(r["evaluations"] for r in runs)
    found = [r["optimum_first_asked"] for r in runs if r["optimum_first_asked"] is not None]
    first = f"{statistics.median(found):.0f}" if found else "-"
    return f"{hits:>5}/{len(runs)} sc{reached:<2} r{worst:<3} e{used:<3} f{first:<3} h{100 * held:+.1f}%"


def format_row(pname: str, row: dict) -> str:
    budget = ",".join(f"{m}={v:g}" for m, v in row["budget"].items())
    ok = {n: "ok" if s["equals_exhaustive_proxy"] else "NO" for n, s in row["solvers"].items()}
    dp_names = [n for n in ok if n != "ilp"]
    dp = "-" if not dp_names else "ok" if all(ok[n] == "ok" for n in dp_names) else "NO"
    hits = "".join(_searcher_cell(s["runs"], row["real_opt_heldout"]) for s in row["search"].values())
    gap = f"{100 * row['second_best_gap']:.2f}%" if row["second_best_gap"] is not None else "-"
    return (
        f"{pname:<7}{budget:>28}{row['feasible']:>7}{'q' if row['qualifies'] else '-':>3}"
        f"{row['real_opt_fitness']:>10.4f}{gap:>8}{str(row['proxy_opt_is_real_opt']):>11}{dp:>4}{ok['ilp']:>5}{hits}"
    )


if __name__ == "__main__":
    sys.exit(main())
