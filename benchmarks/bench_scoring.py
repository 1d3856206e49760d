"""Benchmark of candidate scoring: engine vs naive re-evaluation, Ray actors vs inline, shared memory.

Usage::

    python benchmarks/bench_scoring.py [--out bench-scoring.json] [--candidates 64]
        [--generations 2] [--offspring N] [--seq-len 32] [--windows 4] [--repeats 3] [--ray-repeats 7]
        [--no-ray]

``--no-ray`` measures only (a).

On the embedded MiniLM with a small config it measures, in one run:

a) the evaluation engine (stitching + restart from cached block inputs) against a naive full
   re-evaluation (restore and swap every weight, full forward on the same tokens, dense reference
   cached per window set in the same way) on two request sequences: the requests of a real run of
   the ``evolution`` searcher (EvoPress quantization preset at 3.5 bits: 128 offspring that differ
   from the parent in a few slots, staged selection on fresh windows, the parent re-scored at every
   stage; the first ``--generations`` generations, recorded once by running the search with the
   engine) and the *one-at-a-time profile* sequence (one slot compressed, dense elsewhere, as the
   sensitivity profile scores them). The searcher's proxy is the one-at-a-time fitness, as the
   profile gives it in a real run. The engine is also run without its trace cache (``max_traces=0``:
   every candidate restarts from the dense block inputs), which must give bit-identical scores;
   every engine score must match the naive one to 1e-4 and the recording run exactly. Every timed
   pass starts from empty caches (fresh window sets and traces). Goal: at least 2x on the
   evolution sequence. One more pass of each splits its time by request size (windows per request),
   which shows where the evolution's time goes (its final stages score many windows). Beside the
   times it reports the block compute (blocks run x windows) of the engine and the least that any
   restart at block boundaries could run on the same sequence, the trie of the candidates' block
   keys per window set (:func:`prefix_bound`): the compute speedup attainable by reusing prefixes.
   It times the parts that are not block compute (the dense references of the window sets, which
   every scorer builds; the naive scorer's restoring and swapping of every weight; the engine's
   stitching) and from them a ceiling for restarts at block boundaries: the engine's time with
   free stitching and its block time scaled to the bound's block compute.
b) candidates/s of :class:`~layerbudget.evaluators.ray_executor.RayExecutor` with 2 actors vs 1 actor on
   one batch of a *quantization walk* (every block compressed, each candidate 1-3 slots away from
   the previous one) on the calibration set, every pass from empty trace caches (goal: at least
   1.7x);
c) the per-candidate overhead of the Ray executor with 1 actor vs the inline executor (goal: at
   most 10 %);
d) memory: bytes the Ray executor puts in the object store (scorer spec, shipped database) vs each
   actor's resident memory.

Each timing is the best of ``--repeats`` passes after one warm-up pass (decoded weights cached), so
other load on a shared machine inflates the numbers less; the load average is reported beside them.
For (b) and (c) the ratio of the median passes is reported as well.
Torch runs on one thread in the driver and in every actor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scoring_engine import evolution_requests, measure_engine, pass_times, profile_walk, quantization_walk

from layerbudget.evaluators.executor import Executor, InlineExecutor
from layerbudget.evaluators.ray_worker import memory
from layerbudget.evaluators.scorer import identity
from layerbudget.experiments.config import ExperimentConfig, config_from_dict
from layerbudget.experiments.prepare import Prepared, prepare
from layerbudget.problem import Candidate, EvalRequest
from layerbudget.storage import atomic_write_text

BENCH_OPTIONS = ("rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "rtn-b8-g128")


def bench_config(
    cache_dir: str | Path, *, seq_len: int = 32, windows: int = 4, options: Sequence[str] = BENCH_OPTIONS
) -> ExperimentConfig:
    return config_from_dict(
        {
            "name": "bench-scoring",
            "data": {"seq_len": seq_len, "calib_windows": windows, "heldout_windows": 2, "batch_size": 8},
            "options": {"names": list(options)},
            "budget": {"avg_bits": 3.5},
            "search": {"searchers": ["evolution"]},
            "output": {"cache_dir": str(cache_dir)},
        }
    )


def measure_ray(
    prep: Prepared, cands: list[Candidate], repeats: int, workers: Sequence[int] = (1, 2)
) -> dict[str, Any]:
    """(b), (c), (d): inline vs Ray with 1 and 2 actors on one batch of requests; memory of each."""
    import ray

    from layerbudget.evaluators.ray_executor import RayExecutor

    owns = not ray.is_initialized()
    if owns:  # executors of every size stay alive together, so ask for enough (logical) CPUs
        ray.init(
            num_cpus=max(os.cpu_count() or 1, sum(workers)), include_dashboard=False, logging_level="ERROR"
        )
    requests = [EvalRequest(c) for c in cands]
    expect = identity(prep.evaluator())
    reference = [e.fitness for e in InlineExecutor(prep.evaluator()).evaluate(requests)]
    executors: dict[str, Executor] = {"inline": InlineExecutor(prep.evaluator())}
    out: dict[str, Any] = {"cluster_cpus": ray.cluster_resources().get("CPU", 0.0)}
    try:
        for n in workers:
            t = time.perf_counter()
            ex = RayExecutor(prep.scorer_spec(), num_workers=n, threads_per_worker=1, expect=expect, ship_database=True)
            out[f"start_{n}_actors_s"] = time.perf_counter() - t
            if [e.fitness for e in ex.evaluate(requests)] != reference:
                raise RuntimeError(f"Ray with {n} actors scored differently from inline")
            executors[f"ray{n}"] = ex
        times = pass_times(  # every pass from empty caches: repeated passes must not find their own traces
            {k: (lambda ex=ex: ex.evaluate(requests)) for k, ex in executors.items()},
            repeats,
            setup={k: ex.clear_caches for k, ex in executors.items()},
        )
        t = {k: min(v) for k, v in times.items()}
        median = {k: float(np.median(v)) for k, v in times.items()}
        for k, seconds in t.items():
            out[k] = {
                "seconds": seconds,
                "median_seconds": median[k],
                "pass_seconds": times[k],
                "candidates_per_s": len(requests) / seconds,
                "ms_per_candidate": 1e3 * seconds / len(requests),
            }
        for n in workers:  # one more pass: how much of the wall time the actors spent scoring
            ex = executors[f"ray{n}"]
            ex.clear_caches()
            busy = sum(i["busy_s"] for i in ex.worker_info())
            t0 = time.perf_counter()
            ex.evaluate(requests)
            wall = time.perf_counter() - t0
            busy = sum(i["busy_s"] for i in ex.worker_info()) - busy
            out[f"ray{n}"].update(
                {
                    "check_pass_s": wall,
                    "actor_busy_s": busy,
                    "outside_scoring_ms_per_candidate": 1e3 * (wall - busy / n) / len(requests),
                }
            )
        if "ray1" in t:
            out["overhead_ray1_vs_inline"] = t["ray1"] / t["inline"] - 1.0
            out["overhead_ray1_vs_inline_median"] = median["ray1"] / median["inline"] - 1.0
        if "ray1" in t and "ray2" in t:
            out["speedup_ray2_vs_ray1"] = t["ray1"] / t["ray2"]
            out["speedup_ray2_vs_ray1_median"] = median["ray1"] / median["ray2"]
        last = executors.get(f"ray{workers[-1]}")
        if isinstance(last, RayExecutor):
            out["memory"] = {
                "object_store_bytes": last.shared_bytes(),
                "actors": [
                    {"node": i["node_id"][:12], "pid": i["pid"], **i["memory"]} for i in last.worker_info()
                ],
                "driver": memory(),
            }
    finally:
        for ex in executors.values():
            ex.close()
        if owns:
            ray.shutdown()
    return out


# ----- report --------------------------------------------------------------------------------------
def _mb(x: float) -> str:
    return f"{x / 2**20:8.1f} MiB"


def report(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_start']} -> {result['machine']['load_end']}"
    ]
    lines.append(
        f"{'(a) sequence':<24}{'engine ms':>10}{'restart ms':>11}{'naive ms':>10}{'speedup':>9}"
        f"{'restart':>9}{'blocks':>8}   goal >= 2x (evolution)"
    )
    for name, r in result["engine"].items():
        nan = float("nan")
        lines.append(
            f"    {name:<20}{r['engine_ms']:>10.2f}{r.get('dense_restart_ms', nan):>11.2f}{r['naive_ms']:>10.2f}"
            f"{r['speedup']:>8.2f}x{r.get('speedup_dense_restart', nan):>8.2f}x{r['blocks_per_request']:>8.2f}"
        )
    for name, r in result["engine"].items():
        if len(r.get("seconds_per_windows", {})) > 1:
            parts = [
                f"{w} windows {v['engine']:.2f} s vs {v['naive']:.2f} s ({v['speedup']:.2f}x)"
                for w, v in r["seconds_per_windows"].items()
            ]
            lines.append(f"    {name} by request size (one pass): " + "; ".join(parts))
    for name, r in result["engine"].items():
        if "compute_speedup_bound" in r:
            lines.append(
                f"    {name} block compute (blocks x windows): engine {r['compute_speedup']:.2f}x less than naive;"
                f" any block-granular restart at best {r['compute_speedup_bound']:.2f}x"
                f" ({r['blocks_per_request_bound']:.2f} blocks per request)"
            )
            lines.append(
                f"    {name} ms per request: dense references of the window sets {r['references_ms']:.2f},"
                f" naive restore and swap {r['naive_stitching_ms']:.2f}, engine stitching"
                f" {r['engine_stitching_ms']:.2f}; at the bound with free stitching the engine would be"
                f" {r['speedup_ceiling']:.2f}x faster than naive"
            )
    lines.append(
        "    (restart: the engine without traces, every request restarts from the dense block inputs;"
        " blocks: blocks run per request and batch by the engine)"
    )
    ray_r = result.get("ray")
    if ray_r:
        lines.append(f"{'(b,c) executor':<24}{'cand/s':>10}{'ms/cand':>10}{'  ms/cand outside scoring':>26}")
        for k in ("inline", "ray1", "ray2"):
            if k in ray_r:
                r = ray_r[k]
                extra = (
                    f"{r['outside_scoring_ms_per_candidate']:>26.2f}"
                    if "outside_scoring_ms_per_candidate" in r
                    else ""
                )
                lines.append(
                    f"    {k:<20}{r['candidates_per_s']:>10.2f}{r['ms_per_candidate']:>10.1f}{extra}"
                )
        if "speedup_ray2_vs_ray1" in ray_r:
            lines.append(
                f"(b) 2 actors vs 1 actor : {ray_r['speedup_ray2_vs_ray1']:.2f}x (medians"
                f" {ray_r['speedup_ray2_vs_ray1_median']:.2f}x)   goal >= 1.7x"
            )
        if "overhead_ray1_vs_inline" in ray_r:
            lines.append(
                f"(c) Ray 1 actor vs inline: {100 * ray_r['overhead_ray1_vs_inline']:+.1f} % (medians"
                f" {100 * ray_r['overhead_ray1_vs_inline_median']:+.1f} %)   goal <= 10 %"
            )
        mem = ray_r.get("memory")
        if mem:
            for k, v in mem["object_store_bytes"].items():
                lines.append(f"(d) object store, {k:<10}: {_mb(v)} (once per cluster)")
            for a in mem["actors"]:
                lines.append(
                    f"(d) actor pid {a['pid']:<8}: rss {_mb(a['rss'])}  anon {_mb(a.get('rss_anon', 0))}  "
                    f"file {_mb(a.get('rss_file', 0))}  shmem {_mb(a.get('rss_shmem', 0))}"
                )
            lines.append(f"(d) driver            : rss {_mb(mem['driver']['rss'])}")
    return "\n".join(lines)


def run(
    cache_dir: str | Path,
    *,
    candidates: int = 64,
    generations: int = 2,
    offspring: int | None = None,
    seq_len: int = 32,
    windows: int = 4,
    repeats: int = 3,
    ray_repeats: int = 7,
    use_ray: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    torch.set_num_threads(1)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    cfg = bench_config(cache_dir, seq_len=seq_len, windows=windows)
    prep = prepare(cfg, progress=False)
    naive_prep = prepare(cfg, progress=False, build=False)
    restart_prep = prepare(cfg, progress=False, build=False)
    rng = np.random.default_rng(seed)
    evo, evo_fitness = evolution_requests(prep, generations, offspring=offspring, seed=seed)
    sequences = {
        "evolution search": evo,
        "profile (one-at-a-time)": [EvalRequest(c) for c in profile_walk(prep.problem, candidates, rng)],
    }
    result: dict[str, Any] = {
        "config": {
            "seq_len": seq_len,
            "calib_windows": windows,
            "batch_size": cfg.data.batch_size,
            "options": list(cfg.options.names),
            "budget": str(cfg.budget[0]),
            "candidates": candidates,
            "generations": generations,
            "offspring": offspring,
            "repeats": repeats,
            "ray_repeats": ray_repeats,
            "torch_threads": 1,
        },
        "engine": measure_engine(
            prep,
            naive_prep,
            sequences,
            repeats,
            restart_prep=restart_prep,
            expected={"evolution search": evo_fitness},
        ),
    }
    del naive_prep, restart_prep
    if use_ray:
        result["ray"] = measure_ray(prep, quantization_walk(prep.problem, candidates, rng), ray_repeats)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_start": [round(x, 2) for x in load_start] if load_start else None,
        "load_end": [round(x, 2) for x in os.getloadavg()] if load_start else None,
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-scoring.json", help="where to write the JSON results")
    parser.add_argument(
        "--candidates", type=int, default=64, help="candidates of the profile sequence (and per Ray batch)"
    )
    parser.add_argument(
        "--generations",
        type=int,
        default=2,
        help="evolution generations recorded for (a) (each: offspring + stages)",
    )
    parser.add_argument(
        "--offspring", type=int, default=None, help="evolution offspring (default: the preset's)"
    )
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--windows", type=int, default=4, help="calibration windows scored per candidate")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement of (a) (best is kept)")
    parser.add_argument(
        "--ray-repeats", type=int, default=7, help="timed passes per executor in (b) and (c) (best and median kept)"
    )
    parser.add_argument("--cache-dir", default=None, help="database cache (default: a temporary directory)")
    parser.add_argument(
        "--no-ray", action="store_true", help="only measure (a), the engine against naive scoring"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            args.cache_dir or tmp,
            candidates=args.candidates,
            generations=args.generations,
            offspring=args.offspring,
            seq_len=args.seq_len,
            windows=args.windows,
            repeats=args.repeats,
            ray_repeats=args.ray_repeats,
            use_ray=not args.no_ray,
        )
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
