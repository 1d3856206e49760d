"""Does the hybrid's gain over the ILP survive a text the search never saw?

For every seed (the experiment seed: it draws the calibration, fresh and held-out windows and seeds
the search), the default experiment (all-MiniLM-L6-v2, RTN levels, calibrated on ``pydoc``) is
prepared in this process; at every budget the ILP and, once per variant, the hybrid search, and
every plan is measured window by window on the calibration text's held-out windows and on windows
of another text (``--other``, default ``docstrings``) that no search sees. A plan's gain over the
ILP is ``1 − hybrid / ilp`` with its paired standard error over windows; the table gives, per
budget and variant, the mean gain over seeds ± its standard error over seeds on either text, and
the ratio ``gain on the other text / gain on the calibration text`` (the target: at least 0.5).

Variants are hybrid parameters laid over the default config's (``--variant NAME=JSON``, e.g.
``--variant anchored='{"anchor": 0.05}'``); without one, the hybrid runs with the defaults. Each
finished seed is appended to the JSON file at once, so runs can be split and resumed (``--seeds``,
``--first-seed``).

Usage::

    python benchmarks/transfer.py --budgets 3.5 3.0 2.5 --seeds 5 --out benchmarks/results/transfer.json
    python benchmarks/transfer.py --table benchmarks/results/transfer.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from layerbudget.data import HELDOUT, build_eval_sets
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.evaluators.measure import measure_plans
from layerbudget.evaluators.uncertainty import relative_difference
from layerbudget.experiments.config import load_config
from layerbudget.experiments.prepare import prepare
from layerbudget.problem import Budget
from layerbudget.search.registry import make_searcher
from layerbudget.storage import atomic_write_text

VARIANTS: dict[str, dict] = {"hybrid": {}}  # the default config's hybrid


def run_seed(seed: int, budgets: list[float], variants: dict[str, dict], source: str, other: str, windows: int,
             cache_dir: str) -> list[dict]:
    base = load_config()
    cfg = dataclasses.replace(
        base,
        seed=seed,
        data=dataclasses.replace(base.data, source=source, heldout_windows=windows, eval_sources=()),
        output=dataclasses.replace(base.output, cache_dir=cache_dir),
    )
    t0 = time.perf_counter()
    prep = prepare(cfg, progress=False)
    evaluator = prep.evaluator()
    profile, _ = prep.profile(evaluator, progress=False)
    profile.apply(prep.problem)
    sets = {HELDOUT: prep.tokens.heldout}
    for es in build_eval_sets(prep.adapter.tokenizer, [other], seq_len=cfg.data.seq_len, windows=windows, seed=seed):
        sets[es.label] = es.ids
    prepared_s = time.perf_counter() - t0
    hybrid_defaults = dict(base.search.params.get("hybrid", {}))
    plans: dict[tuple[float, str], object] = {}  # (budget, name) -> candidate
    info: dict[tuple[float, str], dict] = {}
    for bits in budgets:
        budget = Budget.from_dict({"avg_bits": bits})
        ilp = run_search(make_searcher("ilp", prep.problem, budget, seed=seed), InlineExecutor(evaluator)).result
        plans[bits, "ilp"] = ilp
        for name, params in variants.items():
            t = time.perf_counter()
            searcher = make_searcher("hybrid", prep.problem, budget, seed=seed, **{**hybrid_defaults, **params})
            outcome = run_search(searcher, InlineExecutor(evaluator))
            plans[bits, name] = outcome.result
            plans[bits, name + ":start"] = searcher.start  # the seed plan the evolution started from
            info[bits, name] = {"evaluations": len(outcome.evaluations), "seconds": time.perf_counter() - t,
                                "fitness": evaluator.score(outcome.result)}
    t = time.perf_counter()
    keys = list(plans)
    measured = {label: dict(zip(keys, measure_plans(evaluator, [plans[k] for k in keys], ids)))
                for label, ids in sets.items()}  # every plan on the same windows, one dense pass per set
    measure_s = time.perf_counter() - t
    rows = []
    for (bits, name), extra in info.items():
        row = {"seed": seed, "source": source, "budget": bits, "variant": name, "params": variants[name], **extra,
               "measure_seconds": measure_s, "prepare_seconds": prepared_s}
        for label, scores in measured.items():
            ilp = scores[bits, "ilp"]
            rel = relative_difference(scores[bits, name], ilp)  # hybrid / ilp − 1: minus the gain
            start = relative_difference(scores[bits, name + ":start"], ilp)
            row[label] = {"ilp": ilp.value, "ilp_se": ilp.se, "hybrid": scores[bits, name].value,
                          "hybrid_se": scores[bits, name].se, "gain": -rel.value, "gain_se": rel.se,
                          "start_gain": -start.value, "windows": ilp.windows}
        rows.append(row)
    return rows


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.mean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def table(rows: list[dict]) -> str:
    """Per budget and variant: mean gain over seeds ± SE over seeds, on the calibration text and the other text."""
    lines = [
        f"{'calibrated on':<14}{'budget':>6}  {'variant':<10}{'seeds':>6}  {'gain, calibration text':>24}  "
        f"{'gain, other text':>28}  {'ratio':>6}  {'keeps half':>10}  {'evals':>6}"
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        other = next(k for k in r if k.startswith(HELDOUT + ":"))
        groups.setdefault((r.get("source", "pydoc"), other, r["budget"], r["variant"]), []).append(r)
    for (source, other, bits, name), sel in sorted(groups.items(), key=lambda kv: (kv[0][:2], -kv[0][2], kv[0][3])):
        gc, sc = _mean_se([r[HELDOUT]["gain"] for r in sel])
        go, so = _mean_se([r[other]["gain"] for r in sel])
        ratio = go / gc if gc > 0 else math.nan
        keeps = "yes" if gc > 0 and go >= 0.5 * gc else "no"
        evals = statistics.mean(r["evaluations"] for r in sel)
        lines.append(
            f"{source:<14}{bits:>6}  {name:<10}{len(sel):>6}  {f'{gc:+.2%} ± {sc:.2%}':>24}  "
            f"{f'{go:+.2%} ± {so:.2%} ({other[len(HELDOUT) + 1:]})':>28}  {ratio:>6.2f}  {keeps:>10}  {evals:>6.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.5, 3.0, 2.5])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="hybrid parameters over the default config's (default: the defaults alone)")
    parser.add_argument("--source", default="pydoc", help="the calibration text (default: the default config's)")
    parser.add_argument("--other", default="docstrings", help="the text no search sees")
    parser.add_argument("--windows", type=int, default=200, help="held-out windows of either text")
    parser.add_argument("--cache-dir", default="", help="layerbudget cache (default: $LAYERBUDGET_CACHE or ~/.cache)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-transfer.json"))
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of these result files and exit")
    args = parser.parse_args()
    if args.table:
        rows = [r for f in args.table for r in json.loads(f.read_text())["rows"]]
        print(table(rows))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = dict(VARIANTS) if not args.variant else {}
    for spec in args.variant:
        name, _, params = spec.partition("=")
        variants[name] = json.loads(params or "{}")
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    data.setdefault("machine", {"cpu_count": os.cpu_count(), "torch": torch.__version__})
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t = time.perf_counter()
        rows = run_seed(seed, args.budgets, variants, args.source, args.other, args.windows, args.cache_dir)
        data["rows"].extend(rows)
        atomic_write_text(args.out, json.dumps(data, indent=2) + "\n")
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(table(data["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
