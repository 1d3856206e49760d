"""How many held-out windows a run needs: standard errors against window counts, and what they cost.

Re-measures every plan of a finished run directory (``plans/*.json``) on every held-out window of
its calibration text and on ``--other-windows`` windows of each other text (default: the run's
``data.eval_sources``, else ``docstrings``), window by window, then reports for each text:

- the per-window spread of each plan's measure (``s₁``: the standard error of a single window,
  so ``SE(W) = s₁ / √W``) and of the paired difference of every pair of plans at the same budget;
- the gaps between those plans on all windows, and the windows needed for a paired SE of a
  quarter of the gap;
- seconds per window (a dense reference and every plan, this machine, torch threads as given).

Usage::

    python benchmarks/heldout_windows.py RUN_DIR [--other-windows 512] [--out benchmarks/results/heldout-windows.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from layerbudget.data import build_eval_sets, build_token_sets
from layerbudget.evaluators.measure import measure_plans
from layerbudget.evaluators.uncertainty import paired_difference, windows_for
from layerbudget.experiments.config import config_from_dict
from layerbudget.experiments.prepare import prepare
from layerbudget.plan import Plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--other", nargs="*", help="other texts (default: the run's data.eval_sources or docstrings)")
    parser.add_argument("--other-windows", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plans = {p.stem: Plan.load(p) for p in sorted((args.run_dir / "plans").glob("*.json"))}
    if not plans:
        print(f"error: {args.run_dir} has no plans/*.json", file=sys.stderr)
        return 2
    cfg = config_from_dict(next(iter(plans.values())).provenance["config"])
    others = args.other if args.other is not None else (list(cfg.data.eval_sources) or ["docstrings"])
    prep = prepare(cfg, progress=False, build=False)
    n_held = _heldout_pool_size(prep.adapter.tokenizer, cfg)
    held = build_token_sets(  # every held-out window of the calibration text
        prep.adapter.tokenizer, cfg.data.source, seq_len=cfg.data.seq_len, calib_windows=cfg.data.calib_windows,
        heldout_windows=n_held, heldout_fraction=cfg.data.heldout_fraction, seed=cfg.seed,
    ).heldout
    sets = {"heldout": held}
    for es in build_eval_sets(prep.adapter.tokenizer, others, seq_len=cfg.data.seq_len, windows=args.other_windows,
                              seed=cfg.seed):
        sets[es.label] = es.ids
    evaluator = prep.evaluator()
    cands = {name: prep.problem.from_assignment(p.units, p.dropped) for name, p in plans.items()}
    report: dict = {"run_dir": str(args.run_dir), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(), "sets": {}}
    for label, ids in sets.items():
        t = time.perf_counter()
        scores = dict(zip(cands, measure_plans(evaluator, list(cands.values()), ids)))
        seconds = time.perf_counter() - t
        entry: dict = {"windows": len(ids), "seconds": seconds,
                       "seconds_per_window_and_forward": seconds / (len(ids) * (len(set(cands.values())) + 1)),
                       "plans": {}, "pairs": []}
        for name, s in scores.items():
            entry["plans"][name] = {"value": s.value, "se": s.se, "se_one_window": s.se * math.sqrt(s.windows),
                                    "relative_se_one_window": s.se * math.sqrt(s.windows) / s.value}
        by_budget: dict[str, list[str]] = {}
        for name in scores:
            by_budget.setdefault(name.rsplit("-b", 1)[-1], []).append(name)
        for names in by_budget.values():
            for a, b in itertools.combinations(names, 2):
                d = paired_difference(scores[b], scores[a])
                one = d.se * math.sqrt(scores[a].windows)
                entry["pairs"].append({
                    "a": a, "b": b, "difference": d.value, "relative": d.value / scores[a].value, "se": d.se,
                    "se_one_window": one, "relative_se_one_window": one / scores[a].value,
                    "windows_for_quarter_gap": windows_for(one, abs(d.value) / 4) if d.value else None,
                })
        report["sets"][label] = entry
        print(f"{label}: {len(ids)} windows, {seconds:.1f} s "
              f"({entry['seconds_per_window_and_forward'] * 1e3:.1f} ms per window and forward)")
        for name, p in entry["plans"].items():
            print(f"  {name:<14} {p['value']:.4f} ± {p['se']:.4f}   one window: ±{p['relative_se_one_window']:.1%}")
        for p in entry["pairs"]:
            print(f"  {p['b']} - {p['a']}: {p['difference']:+.4f} ({p['relative']:+.1%}) ± {p['se']:.4f}; one window "
                  f"±{p['relative_se_one_window']:.1%}; windows for SE = gap/4: {p['windows_for_quarter_gap']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _heldout_pool_size(tokenizer: object, cfg) -> int:
    """Number of held-out windows the calibration text gives (the bound on data.heldout_windows)."""
    from layerbudget.data import _special_affixes, _windows, load_documents

    docs, _ = load_documents(cfg.data.source)
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False, verbose=False)["input_ids"]  # type: ignore[operator]
    cut = int(round(len(ids) * (1.0 - cfg.data.heldout_fraction)))
    return len(_windows(ids[cut:], cfg.data.seq_len, _special_affixes(tokenizer)))


if __name__ == "__main__":
    sys.exit(main())
