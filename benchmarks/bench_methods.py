"""Benchmark of the compression methods on MiniLM: GPTQ vs RTN, SparseGPT vs Wanda vs magnitude.

Builds one database with every option (timed, size on disk reported), then scores each option
applied uniformly to all units on the held-out windows. Usage::

    python benchmarks/bench_methods.py [--out bench-methods.json] [--inputs compressed]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from layerbudget.experiments.config import load_config
from layerbudget.experiments.prepare import prepare

QUANT = [f"{m}-b{b}-g64" for b in (2, 3, 4) for m in ("rtn", "gptq")]
SPARSE = [f"{m}-{s}" for s in ("0.5", "0.7") for m in ("magnitude", "wanda", "sparsegpt")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-methods.json")
    parser.add_argument("--inputs", choices=("dense", "compressed"), default="dense",
                        help="calibration inputs of GPTQ/SparseGPT/Wanda (options.calibration_inputs)")
    args = parser.parse_args()
    base = load_config()
    with tempfile.TemporaryDirectory() as cache:
        cfg = dataclasses.replace(
            base,
            options=dataclasses.replace(base.options, names=("dense", *QUANT, *SPARSE), calibration_inputs=args.inputs),
            output=dataclasses.replace(base.output, cache_dir=cache),
        )
        t = time.perf_counter()
        prep = prepare(cfg, progress=False)
        build_s = time.perf_counter() - t
        size = prep.database.size_bytes()
        evaluator = prep.evaluator()
        rows = []
        for option in (*QUANT, *SPARSE):
            cand = prep.problem.uniform(option)
            rows.append({"option": option, "fitness": evaluator.score(cand), "heldout": evaluator.heldout(cand)})
    report = {"inputs": args.inputs, "database_build_s": build_s, "database_bytes": size, "options": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"database: {len(QUANT) + len(SPARSE)} options x 36 units ({args.inputs} inputs), built in {build_s:.1f} s "
          f"(model load and calibration included), {size / 2**20:.1f} MiB on disk")
    table = [f"{'option':<16}{'fitness':>10}{'held-out':>10}"]
    table += [f"{r['option']:<16}{r['fitness']:>10.4f}{r['heldout']:>10.4f}" for r in rows]
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
