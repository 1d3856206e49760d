"""Benchmark of the embedded default: wall time of a first and a second (cached) run, ILP vs uniform.

Runs ``layerbudget run`` as a newcomer would (a fresh process each time, default executor: Ray)
with an empty cache, then again with the cache filled, then once more cached with ``--executor
inline`` as the in-process baseline, and then compares the searchers at 3.5 and 3.0 average bits on the
same profile. Usage::

    python benchmarks/bench_default.py [--out bench-default.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layerbudget.experiments.config import load_config
from layerbudget.experiments.runner import run_experiment
from layerbudget.problem import Budget


def timed_cli_run(cache: Path, out: Path, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("LAYERBUDGET_EXECUTOR", "RAY_ADDRESS")}
    env["LAYERBUDGET_CACHE"] = str(cache)
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "layerbudget.experiments.cli", "run", "--quiet", "--out", str(out), *extra]
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-default.json", help="where to write the JSON results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, runs = Path(tmp) / "cache", Path(tmp) / "runs"
        first = timed_cli_run(cache, runs / "first")
        second = timed_cli_run(cache, runs / "second")
        inline = timed_cli_run(cache, runs / "inline", "--executor", "inline")
        cfg = load_config()
        cfg = dataclasses.replace(
            cfg,
            budget=(Budget.from_dict({"avg_bits": 3.5}), Budget.from_dict({"avg_bits": 3.0})),
            output=dataclasses.replace(cfg.output, cache_dir=str(cache)),
        )
        result = run_experiment(cfg, out=runs / "compare", progress=False, log=lambda m: None)
    rows = [{k: r[k] for k in ("budget", "searcher", "avg_bits", "fitness", "heldout", "evaluations")} for r in result.rows]
    report = {"first_run_s": first, "second_run_s": second, "second_run_inline_s": inline,
              "cpu_count": os.cpu_count(), "searchers": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"default run, empty cache : {first:7.1f} s   (goal < 300 s)")
    print(f"default run, cached      : {second:7.1f} s   (goal < 90 s)")
    print(f"  the same, --executor inline: {inline:7.1f} s (Ray / inline = {second / inline:.2f})")
    print(f"{'budget':<16}{'searcher':<10}{'avg_bits':>9}{'fitness':>10}{'heldout':>10}")
    for r in rows:
        print(f"{r['budget']:<16}{r['searcher']:<10}{r['avg_bits']:>9.3f}{r['fitness']:>10.4f}{r['heldout']:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
