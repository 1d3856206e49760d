"""Ground-truth benchmark on MiniLM: exhaustive optima of two 12-slot problems vs dp, ilp, evolution, hybrid.

Two problems small enough to enumerate (2^12 = 4096 plans each), built on the default experiment's
model, data and database:

- ``depth``: the 12 attention/MLP sub-blocks of MiniLM's 6 blocks, each kept or dropped (unit slots
  are dense-only); budgets ``dropped >= k`` for k = 1..11.
- ``quant``: the 12 MLP unit slots (intermediate and output dense of each block) with two options,
  ``rtn-b2-g64`` or ``rtn-b4-g64``, attention left dense (outside the problem); budgets
  ``avg_bits <= b`` over the MLP weights (metadata included): b = 2.5 + m/6 lets m of the 12 slots
  have 4 bits (default 2.75, 3.0, ..., 4.0: m <= 1, 3, 4, 6, 7, 9). Two-bit RTN is where MiniLM's
  distortion stops being additive (layer errors compound) and 4-bit RTN is near lossless; every
  MLP slot costs the same, so the budget only says how many slots are rescued and which ones is
  the whole problem. The two levels are the widest gap in the default option set, so the
  allocation matters most.

Every plan's real fitness (the evaluator's score on the standard calibration windows) is computed
once, depth-first over blocks (:class:`PrefixScorer`, checked against :meth:`Evaluator.score`), and
cached in ``<cache>/groundtruth/``; the additive proxy is the one-at-a-time fitness delta of each
slot read off the same table (depth: from the dense model; quant: from all slots at 4 bits).
Checks per (problem, budget):

- ``dp`` and ``ilp`` (and, for depth, ``solve_depth_dp``) reach the exhaustive proxy optimum;
- ``evolution`` and ``hybrid`` (their defaults, ``max_evaluations=300``: every request counts,
  fresh-window ones included) reach the exhaustive real-fitness optimum in at least 9 of 10 seeds:
  it is the best plan the search scored on the calibration windows. The evolution returns that
  plan; the hybrid returns the best of its near-tied finalists on a fresh validation batch, so the
  table also gives how often the returned plan is the optimum and how the returned plans' held-out
  measure compares with the optimum's (a returned plan that differs should be better held out).

Requests on the standard windows are looked up in the table; requests on fresh windows are really
evaluated. Prints a table and writes JSON::

    python benchmarks/bench_groundtruth.py [--problems depth quant] [--seeds 10]
        [--searchers evolution hybrid] [--depth-k 1 2 ...] [--quant-bits 3.0 3.5 ...]
        [--params '{"evolution": {...}}'] [--threads 1] [--out bench-groundtruth.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.executor import Executor
from layerbudget.evaluators.loop import run_search
from layerbudget.experiments.config import load_config
from layerbudget.experiments.prepare import Prepared, prepare
from layerbudget.model import BlockInputs
from layerbudget.options import DENSE, DROP
from layerbudget.problem import KEEP, Budget, Candidate, EvalRequest, Evaluation, Problem, Slot
from layerbudget.search.dp import solve_depth_dp, solve_dp
from layerbudget.search.ilp import solve_ilp
from layerbudget.search.registry import make_searcher
from layerbudget.storage import atomic_write_text, content_hash

TABLE_VERSION = 1
QUANT_OPTIONS = ("rtn-b2-g64", "rtn-b4-g64")  # (low, high)
TARGET = 9  # hits out of 10 seeds


# ----- problems ---------------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """A 12-free-slot problem, how a bit mask maps to a candidate, and the fitness of every mask."""

    name: str
    problem: Problem
    free: list[int]  # slot index of mask bit j
    base: Candidate  # the fixed part (free slots at option 0)
    fitness: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [2^n] by mask

    def candidate(self, mask: int) -> Candidate:
        cand = list(self.base)
        for j, i in enumerate(self.free):
            cand[i] = (mask >> j) & 1
        return self.problem.canonical(cand)

    def mask(self, cand: Candidate) -> int:
        return sum(1 << j for j, i in enumerate(self.free) if cand[i] == 1)


def depth_problem(prep: Prepared) -> GroundTruth:
    """One keep/drop slot per attention/MLP sub-block, its unit slots dense-only."""
    adapter, slots = prep.adapter, []
    groups: dict[str, list] = {}
    for g in adapter.groups:
        groups.setdefault(g.subblock, []).append(g)
    for sb in adapter.subblocks:
        units = tuple((u, adapter.unit(u).shape) for u in sb.units)
        slots.append(Slot(sb.name, (KEEP, DROP), units, sb.block, is_subblock=True))
        for g in groups.get(sb.name, []):
            slots.append(
                Slot(g.name, (DENSE,), tuple((u.name, u.shape) for u in g.units), g.block, subblock=sb.name)
            )
    problem = Problem(slots, other_numel=adapter.non_unit_numel())
    free = [i for i, s in enumerate(problem.slots) if s.is_subblock]
    return GroundTruth("depth", problem, free, problem.canonical([0] * len(slots)))


def quant_problem(prep: Prepared, options: tuple[str, str] = QUANT_OPTIONS) -> GroundTruth:
    """The MLP unit slots with two options each; everything else stays dense (outside the problem)."""
    adapter, db = prep.adapter, prep.database
    mlp = {sb.name for sb in adapter.subblocks if sb.kind == "mlp"}
    slots = []
    for g in adapter.groups:
        if g.subblock not in mlp:
            continue
        missing = [o for o in options if not all(o in db.unit_options(u.name) for u in g.units)]
        if missing:
            raise SystemExit(
                f"the database lacks {missing} for {g.name}; add them to the experiment's options"
            )
        slots.append(Slot(g.name, options, tuple((u.name, u.shape) for u in g.units), g.block))
    problem = Problem(slots, other_numel=adapter.non_unit_numel())
    return GroundTruth("quant", problem, list(range(len(slots))), problem.canonical([0] * len(slots)))


# ----- exhaustive table -------------------------------------------------------------------------
class PrefixScorer:
    """Scores all 2^n plans depth-first over blocks, reusing the hidden states of each block prefix.

    A plan's output depends on block ``b`` only through the choices of blocks ``<= b``, so the search
    tree over blocks runs each (prefix, block) once: about 4.5x fewer block forwards than scoring the
    4096 plans one by one. The numbers are the evaluator's (same batches, same fitness sums); the
    benchmark checks a few of them against :meth:`Evaluator.score`.
    """

    def __init__(self, prep: Prepared, gt: GroundTruth):
        self.adapter, self.gt, self.fitness = prep.adapter, gt, prep.fitness
        self.evaluator = make_evaluator(prep, gt)  # a fresh one leaves the model dense
        self.batches = []  # (block inputs, fitness reference) per calibration batch, from the dense model
        for chunk in torch.split(prep.tokens.calib, self.evaluator.batch_size):
            out, inputs = self.adapter.capture(chunk)
            self.batches.append((inputs, self.fitness.reference(out)))
        blocks = [gt.problem.slots[i].block for i in gt.free]
        self.bits = [[j for j, b in enumerate(blocks) if b == blk] for blk in range(self.adapter.num_blocks)]
        self.state = 0

    @torch.inference_mode()
    def run(self, fit: np.ndarray, log) -> None:
        hidden = [inputs.hidden[0] for inputs, _ in self.batches]
        self.t0, self.done = time.perf_counter(), 0
        self._dfs(0, 0, hidden, fit, log)

    def _dfs(self, blk: int, prefix: int, hidden: list[torch.Tensor], fit: np.ndarray, log) -> None:
        nb = self.adapter.num_blocks
        if blk == nb:
            num = den = 0.0
            for h, (_, ref) in zip(hidden, self.batches):
                out = self.adapter.forward_from(nb, BlockInputs(hidden=[*([None] * nb), h]))  # the tail only
                n, d = self.fitness.partial(out, ref)
                num, den = num + n, den + d
            fit[prefix] = num / den if den > 0 else math.nan
            self.done += 1
            if self.done % 512 == 0:
                log(
                    f"{self.gt.name}: {self.done}/{len(fit)} plans scored ({time.perf_counter() - self.t0:.0f} s)"
                )
            return
        bits = self.bits[blk]
        later = sum(1 << j for b in range(blk + 1, nb) for j in self.bits[b])
        for combo in range(1 << len(bits)):
            mask = prefix | sum(((combo >> t) & 1) << j for t, j in enumerate(bits))
            self.state = mask | (self.state & later)  # blocks after blk keep their weights (fewer swaps)
            self.evaluator.stitch(self.gt.candidate(self.state))
            nxt = []
            for h, (inputs, _) in zip(hidden, self.batches):
                args, kwargs = inputs.calls[blk]
                out = self.adapter.blocks[blk](h, *args, **kwargs)
                nxt.append(out[0] if isinstance(out, tuple) else out)
            self._dfs(blk + 1, mask, nxt, fit, log)


def table_key(prep: Prepared, gt: GroundTruth) -> str:
    return content_hash(
        {
            "version": TABLE_VERSION,
            "db": prep.database.key,
            "calib": prep.calib_hash,
            "fitness": prep.fitness.name,
            "seq_len": prep.tokens.seq_len,
            "data_seed": prep.cfg.seed,
            "slots": [[s.name, list(s.options), s.is_subblock, s.subblock] for s in gt.problem.slots],
            "free": gt.free,
        }
    )


def make_evaluator(prep: Prepared, gt: GroundTruth) -> Evaluator:
    """A fresh evaluator of ``gt``'s problem (it restores the shared model to dense first)."""
    return prep.evaluator(gt.problem)


def exhaustive(prep: Prepared, gt: GroundTruth, log) -> float:
    """Fill ``gt.fitness`` from the cache, or score all 2^n plans; returns seconds spent scoring."""
    n = len(gt.free)
    path = prep.cache_dir / "groundtruth" / f"{gt.name}-{table_key(prep, gt)[:24]}.json"
    rng = np.random.default_rng(0)
    probe = [0, (1 << n) - 1, *rng.integers(1 << n, size=6).tolist()]  # checked with Evaluator.score
    if path.exists():
        fit = np.asarray(json.loads(path.read_text())["fitness"], dtype=np.float64)
        if len(fit) == 1 << n and _agrees(prep, gt, fit, probe[:3]):
            gt.fitness = fit
            log(f"{gt.name}: exhaustive table reused ({path})")
            return 0.0
        log(f"{gt.name}: cached table {path} disagrees with the evaluator; scoring again")
    fit = np.full(1 << n, np.nan)
    t = time.perf_counter()
    PrefixScorer(prep, gt).run(fit, log)
    seconds = time.perf_counter() - t
    if not _agrees(prep, gt, fit, probe):
        raise SystemExit(
            f"{gt.name}: the prefix scorer disagrees with Evaluator.score; the table is not saved"
        )
    atomic_write_text(path, json.dumps({"key": table_key(prep, gt), "problem": gt.name, "fitness": fit.tolist()}) + "\n")
    gt.fitness = fit
    return seconds


def _agrees(prep: Prepared, gt: GroundTruth, fit: np.ndarray, masks: list[int]) -> bool:
    ev = make_evaluator(prep, gt)
    return all(math.isclose(ev.score(gt.candidate(m)), fit[m], rel_tol=1e-5, abs_tol=1e-9) for m in masks)


def set_proxy(gt: GroundTruth) -> None:
    """One-at-a-time deltas from the table: depth from the dense model, quant from all slots high."""
    p = gt.problem
    full = (1 << len(gt.free)) - 1
    ref = 0 if gt.name == "depth" else full
    proxy: dict[tuple[str, str], float] = {}
    for j, i in enumerate(gt.free):
        s = p.slots[i]
        moved = ref ^ (1 << j)
        delta = float(gt.fitness[moved] - gt.fitness[ref])
        if gt.name == "depth":
            proxy[(s.name, DROP)] = delta
        else:
            proxy[(s.name, s.options[0])] = delta  # the low option; the high option is the reference
            proxy[(s.name, s.options[1])] = 0.0
    p.set_proxy(proxy)


# ----- executor ---------------------------------------------------------------------------------
class MemoExecutor(Executor):
    """Standard-window requests come from the exhaustive table; fresh-window requests are scored."""

    def __init__(self, gt: GroundTruth, evaluator: Evaluator):
        self.gt, self.evaluator = gt, evaluator
        self.looked_up = self.scored = 0

    def evaluate(self, requests: list[EvalRequest]) -> list[Evaluation]:
        out = []
        for r in requests:
            if r.windows is None:
                self.looked_up += 1
                f = float(self.gt.fitness[self.gt.mask(r.candidate)])
            else:
                self.scored += 1
                f = float(self.evaluator.score(r.candidate, r.windows, r.batch))
            out.append(Evaluation(r, f))
        return out


# ----- checks -----------------------------------------------------------------------------------
def budgets_of(gt: GroundTruth, args) -> list[Budget]:
    if gt.name == "depth":
        return [Budget.from_dict({"dropped": k}) for k in args.depth_k]
    return [Budget.from_dict({"avg_bits": b}) for b in args.quant_bits]


def solver_checks(gt: GroundTruth, budget: Budget, feasible: list[int]) -> dict:
    """Exhaustive proxy and real optima, and whether each solver reaches the proxy optimum."""
    p = gt.problem
    cands = [gt.candidate(m) for m in feasible]
    proxy = np.asarray([p.proxy_score(c) for c in cands])
    real = gt.fitness[feasible]
    best_proxy = float(proxy.min())
    real_opt = cands[int(np.argmin(real))]
    proxy_opt = cands[int(np.argmin(proxy))]
    row = {
        "feasible": len(feasible),
        "real_opt": gt.mask(real_opt),
        "real_opt_fitness": float(real.min()),
        "proxy_opt": gt.mask(proxy_opt),
        "proxy_opt_fitness": float(gt.fitness[gt.mask(proxy_opt)]),
        "proxy_opt_is_real_opt": proxy_opt == real_opt,
        "solvers": {},
    }
    solutions = {"dp": solve_dp(p, budget), "ilp": solve_ilp(p, budget)}
    if gt.name == "depth":
        scores = [float(p.proxy[i][1]) for i in gt.free]
        k = int(budget.to_dict()["dropped"])
        dropped = set(solve_depth_dp(scores, k))
        solutions["depth_dp"] = gt.candidate(sum(1 << j for j in dropped))
    tol = 1e-9 * max(1.0, abs(best_proxy))
    for name, c in solutions.items():
        row["solvers"][name] = {
            "mask": gt.mask(c),
            "proxy": p.proxy_score(c),
            "equals_exhaustive_proxy": bool(p.satisfies(c, budget) and p.proxy_score(c) <= best_proxy + tol),
            "fitness": float(gt.fitness[gt.mask(c)]),
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
) -> dict:
    out = {}
    for name in args.searchers:
        params = args.params.get(name, {})
        runs = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            ex = MemoExecutor(gt, evaluator)
            searcher = make_searcher(
                name, gt.problem, budget, seed=seed, max_evaluations=args.max_evaluations, **params
            )
            res = run_search(searcher, ex)
            m = gt.mask(res.result)
            # hybrid: the best plan on the calibration windows before its validation step picks the result
            reached = gt.mask(searcher.calibration_best()) if hasattr(searcher, "calibration_best") else m
            found = [k for k, e in enumerate(res.evaluations, 1) if gt.mask(e.candidate) == real_opt]
            runs.append(
                {
                    "seed": seed,
                    "hit": reached == real_opt,
                    "returned_hit": m == real_opt,
                    "mask": m,
                    "heldout": heldout(m),
                    "rank": order[m],  # 0 = the exhaustive optimum among feasible plans
                    "fitness": float(gt.fitness[m]),
                    "evaluations": len(res.evaluations),
                    "optimum_first_asked": found[0] if found else None,  # evaluations until then
                    "fresh_scored": ex.scored,
                    "seconds": time.perf_counter() - t,
                }
            )
        out[name] = {
            "hits": sum(r["hit"] for r in runs),
            "returned_hits": sum(r["returned_hit"] for r in runs),
            "runs": runs,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=("depth", "quant"), default=["depth", "quant"])
    parser.add_argument(
        "--depth-k", type=int, nargs="+", default=list(range(1, 12)), help="budgets dropped >= k"
    )
    parser.add_argument(
        "--quant-bits",
        type=float,
        nargs="+",
        default=[2.75, 3.0, 3.25, 3.5, 3.75, 4.0],
        help="budgets avg_bits <= b (b = 2.5 + m/6 allows m of the 12 slots at 4 bits)",
    )
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
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 is fastest on a busy 2-core machine)"
    )
    parser.add_argument("--out", default="bench-groundtruth.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cfg = load_config()
    prep = prepare(cfg, progress=False)
    report: dict = {
        "max_evaluations": args.max_evaluations,
        "seeds": args.seeds,
        "quant_options": list(QUANT_OPTIONS),
        "params": args.params,
        "problems": {},
    }
    lines = []
    for pname in args.problems:
        gt = depth_problem(prep) if pname == "depth" else quant_problem(prep)
        seconds = exhaustive(prep, gt, log)
        evaluator = make_evaluator(prep, gt)  # after the table: it owns the model's state from here on
        set_proxy(gt)
        heldout = functools.cache(lambda mask, gt=gt, ev=evaluator: float(ev.heldout(gt.candidate(mask))))
        rows = []
        for budget in budgets_of(gt, args):
            feasible = [m for m in range(1 << len(gt.free)) if gt.problem.satisfies(gt.candidate(m), budget)]
            row = {"budget": budget.to_dict(), **solver_checks(gt, budget, feasible)}
            ranked = sorted(feasible, key=lambda m: (gt.fitness[m], m))
            order = {m: r for r, m in enumerate(ranked)}
            row["second_best_gap"] = (
                float(gt.fitness[ranked[1]] / gt.fitness[ranked[0]] - 1) if len(ranked) > 1 else None
            )
            row["real_opt_heldout"] = heldout(row["real_opt"])
            row["search"] = search_runs(gt, budget, evaluator, args, row["real_opt"], order, heldout)
            rows.append(row)
            line = format_row(pname, row)
            lines.append(line)
            log(line)
        report["problems"][pname] = {"exhaustive_seconds": seconds, "plans": 1 << len(gt.free), "rows": rows}
        prep.adapter.restore()
    checks = [
        (pname, row["budget"], what, ok)
        for pname, rep in report["problems"].items()
        for row in rep["rows"]
        for what, ok in [(n, s["equals_exhaustive_proxy"]) for n, s in row["solvers"].items()]
        + [(n, s["hits"] >= TARGET * args.seeds / 10) for n, s in row["search"].items()]
    ]
    failed = [f"{p} {b} {w}" for p, b, w, ok in checks if not ok]
    report["targets"] = {"checked": len(checks), "failed": failed}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(header(args))
    print("\n".join(lines))
    print(
        f"targets: {len(checks) - len(failed)}/{len(checks)} met"
        + (f"; missed: {', '.join(failed)}" if failed else "")
    )
    return 0


def header(args) -> str:
    names = "".join(f"  {n:<35}" for n in args.searchers)
    legend = (
        "plans: feasible plans; gap2: second-best real fitness over the best; dp/ilp: equal to the exhaustive "
        "proxy optimum;\nsearchers: hits of the exhaustive real optimum / seeds (the best plan a search "
        "scored on the calibration windows), ret: how often it is also the returned plan (hybrid validates "
        "its finalists on fresh windows),\nr: worst rank returned (0 = optimum), e: most evaluations used, "
        "f: median evaluations until the optimum was first asked, h: mean held-out of the returned plans "
        "over the optimum's"
    )
    return (
        f"{legend}\n{'problem':<7}{'budget':>14}{'plans':>7}{'real opt':>10}{'gap2':>8}{'proxy=real':>11}"
        f"{'dp':>4}{'ilp':>5}{names}"
    )


def _searcher_cell(runs: list[dict], opt_heldout: float) -> str:
    hits = sum(r["hit"] for r in runs)
    returned = sum(r["returned_hit"] for r in runs)
    held = round(statistics.fmean(r["heldout"] for r in runs) / opt_heldout - 1, 4) + 0.0  # no "-0.0%"
    worst = max(r["rank"] for r in runs)
    used = max(r["evaluations"] for r in runs)
    found = [r["optimum_first_asked"] for r in runs if r["optimum_first_asked"] is not None]
    first = f"{statistics.median(found):.0f}" if found else "-"
    return f"{hits:>5}/{len(runs)} ret{returned:<2} r{worst:<2} e{used:<3} f{first:<3} h{100 * held:+.1f}%"


def format_row(pname: str, row: dict) -> str:
    ((metric, value),) = row["budget"].items()
    ok = {n: "ok" if s["equals_exhaustive_proxy"] else "NO" for n, s in row["solvers"].items()}
    dp = "ok" if all(ok[n] == "ok" for n in ok if n != "ilp") else "NO"  # dp (and depth_dp on depth)
    hits = "".join(_searcher_cell(s["runs"], row["real_opt_heldout"]) for s in row["search"].values())
    gap = f"{100 * row['second_best_gap']:.2f}%" if row["second_best_gap"] is not None else "-"
    return (
        f"{pname:<7}{f'{metric}={value:g}':>14}{row['feasible']:>7}{row['real_opt_fitness']:>10.4f}{gap:>8}"
        f"{str(row['proxy_opt_is_real_opt']):>11}{dp:>4}{ok['ilp']:>5}{hits}"
    )


if __name__ == "__main__":
    sys.exit(main())
