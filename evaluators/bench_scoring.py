"""Benchmark of candidate scoring: engine vs naive re-evaluation, Ray actors vs inline, shared memory.

Usage::

    python -m layerbudget.evaluators.bench_scoring [--out bench-scoring.json] [--candidates 64]
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
b) candidates/s of :class:`~layerbudget.search.ray_executor.RayExecutor` with 2 actors vs 1 actor on
   one batch of a *quantization walk* (every block compressed, each candidate 1-3 slots away from
   the previous one) on the calibration set, every pass from empty trace caches (goal: at least
   1.7x);
c) the per-candidate overhead of the Ray executor with 1 actor vs the inline executor (goal: at
   most 10 %);
d) memory: bytes the Ray executor puts in the object store (config, shipped database) vs each
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
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerbudget.config import ExperimentConfig, config_from_dict
from layerbudget.evaluators.engine import Evaluator
from layerbudget.prepare import Prepared, prepare
from layerbudget.profiles.cache import atomic_write_text
from layerbudget.profiles.options import DENSE, DROP
from layerbudget.search.base import EvalRequest
from layerbudget.search.executor import Executor, InlineExecutor
from layerbudget.search.loop import run_search
from layerbudget.search.problem import KEEP, Candidate, Problem
from layerbudget.search.registry import make_searcher

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


# ----- candidate sequences -------------------------------------------------------------------------
def quantization_walk(
    problem: Problem, n: int, rng: np.random.Generator, start: str = "rtn-b3-g64"
) -> list[Candidate]:
    """``n`` candidates, each with 1-3 unit slots of the previous one set to another non-dense option."""
    units = [i for i, s in enumerate(problem.slots) if not s.is_subblock]
    cur = list(problem.uniform(start) or problem.uniform(DENSE))
    out = []
    for _ in range(n):
        for i in rng.choice(units, size=int(rng.integers(1, 4)), replace=False):
            opts = [
                j for j, o in enumerate(problem.slots[i].options) if o not in (DENSE, DROP) and j != cur[i]
            ]
            cur[i] = int(rng.choice(opts))
        out.append(problem.canonical(cur))
    return out


def profile_walk(problem: Problem, n: int, rng: np.random.Generator) -> list[Candidate]:
    """``n`` one-at-a-time candidates (one unit slot compressed, dense elsewhere) in profile order.

    The profile scores every (slot, option) slot by slot; ``n`` of them are taken evenly spread over
    that order, so every block is represented and consecutive candidates differ in at most 2 slots.
    """
    base = problem.uniform(DENSE)
    jobs = []
    for i, s in enumerate(problem.slots):
        if not s.is_subblock:
            jobs += [
                (i, j) for j in rng.permutation([j for j, o in enumerate(s.options) if o != DENSE]).tolist()
            ]
    out = []
    for k in np.linspace(0, len(jobs) - 1, num=min(n, len(jobs))).round().astype(int):
        i, j = jobs[k]
        cand = list(base)
        cand[i] = j
        out.append(problem.canonical(cand))
    return out


def one_at_a_time_proxy(problem: Problem, scorer: Evaluator) -> dict[tuple[str, str], float]:
    """Fitness on the calibration set of every (slot, option) alone, dense elsewhere (the profile's proxy)."""
    base = problem.uniform(DENSE)
    if base is None:
        raise ValueError("the one-at-a-time proxy needs 'dense' in every slot")
    out = {}
    for i, s in enumerate(problem.slots):
        for j, o in enumerate(s.options):
            if o not in (DENSE, KEEP):
                cand = list(base)
                cand[i] = j
                out[(s.name, o)] = scorer.score(problem.canonical(cand))
    return out


def evolution_requests(
    prep: Prepared, generations: int, *, offspring: int | None = None, seed: int = 0
) -> tuple[list[EvalRequest], list[float]]:
    """The requests (and fitnesses) of a real ``evolution`` run on the bench problem, in order.

    The problem's proxy is set to the one-at-a-time fitness first (a real run takes it from the
    sensitivity profile); the searcher runs its preset for the first budget, cut to ``generations``.
    """
    evaluator = prep.evaluator()
    prep.problem.set_proxy(one_at_a_time_proxy(prep.problem, evaluator))
    params: dict[str, Any] = {"generations": generations}
    if offspring is not None:
        params["offspring"] = offspring
    searcher = make_searcher("evolution", prep.problem, prep.cfg.budget[0], seed=seed, **params)
    outcome = run_search(searcher, InlineExecutor(evaluator))
    return [e.request for e in outcome.evaluations], [e.fitness for e in outcome.evaluations]


# ----- naive scoring -------------------------------------------------------------------------------
class NaiveScorer:
    """Restore the dense model, swap every unit's weight, run the whole model: no stitching, no restart.

    Uses its own model replica (``prep``) and caches the dense reference of the calibration windows
    and of the last ``max_fresh_sets`` fresh window sets (drawn exactly as the engine draws them), as
    any evaluator would; decoded weights come from the same kind of cached database.
    """

    def __init__(self, prep: Prepared, max_fresh_sets: int = 4):
        self.prep = prep
        self.max_fresh_sets = max_fresh_sets
        self.calib = self._reference(prep.tokens.calib)
        self.fresh: OrderedDict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def _reference(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.prep.adapter.restore()
        batches = torch.split(ids, self.prep.cfg.data.batch_size)
        return [(b, self.prep.fitness.reference(self.prep.adapter.forward(b))) for b in batches]

    def _windows(self, windows: int | None, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if windows is None:
            return self.calib
        key = (windows, batch)
        if key not in self.fresh:
            rng = np.random.default_rng([self.prep.cfg.seed, batch, windows])
            self.fresh[key] = self._reference(self.prep.tokens.fresh_calib(windows, rng))
            while len(self.fresh) > self.max_fresh_sets:
                self.fresh.popitem(last=False)
        else:
            self.fresh.move_to_end(key)
        return self.fresh[key]

    def clear_caches(self) -> None:
        self.fresh.clear()

    def window_set(self, windows: int | None, batch: int) -> None:
        """Make sure the dense reference of a window set is cached (built now if it is not)."""
        self._windows(windows, batch)

    def stitch(self, candidate: Candidate) -> None:
        """Restore the dense model, then swap in every unit's weight and drop the candidate's sub-blocks."""
        ad, db = self.prep.adapter, self.prep.database
        ad.restore()
        units, dropped = self.prep.problem.assignment(candidate)
        for sb in dropped:
            ad.drop(sb)
        for unit, option in units.items():
            if option not in (DENSE, DROP):
                ad.set_weight(unit, db.weight(unit, option))

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        batches = self._windows(windows, batch)
        self.stitch(candidate)
        ad = self.prep.adapter
        num = den = 0.0
        for ids, ref in batches:
            n, d = self.prep.fitness.partial(ad.forward(ids), ref)
            num, den = num + n, den + d
        return num / den if den > 0 else float("nan")


# ----- timing --------------------------------------------------------------------------------------
def pass_times(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: bool = True,
    setup: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` passes of each run, after one warm-up pass; runs interleave.

    ``setup[name]``, when given, runs untimed before every pass of ``name``.
    """
    if warmup:
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            if setup and name in setup:
                setup[name]()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def best_time(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: bool = True,
    setup: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Seconds of the fastest of ``repeats`` passes of each run (see :func:`pass_times`)."""
    return {name: min(t) for name, t in pass_times(runs, repeats, warmup=warmup, setup=setup).items()}


def _replay(
    scorer: Evaluator | NaiveScorer,
    requests: list[EvalRequest],
    spent: Counter[str] | None = None,
    blocks: list[int] | None = None,
) -> list[float]:
    """Score ``requests`` in order, starting from empty caches (fresh window sets, traces).

    With ``spent``, the seconds of each request are added under its window count (the dense
    references of a fresh window set count towards the request that first uses it). With
    ``blocks`` (an engine only), the blocks run for each request are appended to it.
    """
    scorer.clear_caches()
    out = []
    for r in requests:
        if blocks is not None:
            before = scorer.blocks_run
        t = time.perf_counter()
        out.append(scorer.score(r.candidate, r.windows, r.batch))
        if spent is not None:
            spent[_windows_key(r)] += time.perf_counter() - t
        if blocks is not None:
            blocks.append(scorer.blocks_run - before)
    return out


def prefix_bound(evaluator: Evaluator, requests: Sequence[EvalRequest]) -> list[int]:
    """Per request, the fewest blocks any block-granular restart can run (an unlimited trace cache).

    A request can restart no later than the first block where it disagrees with the dense model and
    with every request scored before it on the same window set (the only block inputs computed so
    far), and runs at least the last block. Summed over a window set this is the size of the trie of
    its candidates' block keys, whatever the order.
    """
    nb = evaluator.adapter.num_blocks
    known: dict[tuple, list[tuple]] = {}
    out = []
    for r in requests:
        key = evaluator.block_key(r.candidate)
        seen = known.setdefault((r.windows, r.batch), [evaluator.dense_key])
        out.append(nb - min(max(Evaluator.agree(key, k) for k in seen), nb - 1))
        seen.append(key)
    return out


def _window_blocks(blocks: Sequence[int], requests: Sequence[EvalRequest], calib_windows: int) -> int:
    """Block-window products: compute of running ``blocks[i]`` blocks on request ``i``'s windows."""
    return sum(b * (calib_windows if r.windows is None else r.windows) for b, r in zip(blocks, requests))


def _windows_key(r: EvalRequest) -> str:
    return "calib" if r.windows is None else str(r.windows)


def measure_engine(
    prep: Prepared,
    naive_prep: Prepared,
    sequences: dict[str, Sequence[EvalRequest | Candidate]],
    repeats: int,
    *,
    restart_prep: Prepared | None = None,
    expected: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """(a): seconds per request of the engine, of naive scoring and (with ``restart_prep``) of the
    engine without traces; a bare candidate in ``sequences`` is a request on the calibration set.

    Each model replica serves one scorer. The first pass of every sequence is the check (and the
    warm-up): the engine must equal the engine without traces (and ``expected``) exactly, and the
    naive scores to 1e-4 relative.
    """
    scorers: dict[str, Evaluator | NaiveScorer] = {"engine": prep.evaluator()}
    if restart_prep is not None:
        scorers["dense_restart"] = restart_prep.evaluator(max_traces=0)
    scorers["naive"] = NaiveScorer(naive_prep)
    engines = {k: sc for k, sc in scorers.items() if isinstance(sc, Evaluator)}
    out: dict[str, Any] = {}
    for name, seq in sequences.items():
        requests = [r if isinstance(r, EvalRequest) else EvalRequest(r) for r in seq]
        per_request: dict[str, list[int]] = {k: [] for k in engines}
        engines["engine"].trace_bytes_peak = 0
        got = {k: _replay(sc, requests, blocks=per_request.get(k)) for k, sc in scorers.items()}
        blocks = {k: sum(b) / len(requests) for k, b in per_request.items()}
        bound = prefix_bound(engines["engine"], requests)
        nb, calib_windows = prep.adapter.num_blocks, len(prep.tokens.calib)
        full = _window_blocks([nb] * len(requests), requests, calib_windows)
        if "dense_restart" in got and got["engine"] != got["dense_restart"]:
            raise RuntimeError(f"engine scores on {name} differ from the dense-restart engine's")
        if expected and name in expected and got["engine"] != expected[name]:
            raise RuntimeError(f"engine scores on {name} differ from those of the recording run")
        err = max(abs(g - w) / max(abs(w), 1e-12) for g, w in zip(got["engine"], got["naive"]))
        if err > 1e-4:
            raise RuntimeError(f"engine and naive scores disagree on {name}: max relative error {err:.3g}")
        t = best_time(
            {k: (lambda sc=sc, rq=requests: _replay(sc, rq)) for k, sc in scorers.items()},
            repeats,
            warmup=False,
        )
        row: dict[str, Any] = {
            "candidates": len(requests),
            "requests_per_windows": dict(Counter(_windows_key(r) for r in requests)),
            "engine_ms": 1e3 * t["engine"] / len(requests),
            "naive_ms": 1e3 * t["naive"] / len(requests),
            "speedup": t["naive"] / t["engine"],
            "blocks_per_request": blocks["engine"],
            "blocks_per_request_bound": sum(bound) / len(requests),
            "compute_speedup": full / _window_blocks(per_request["engine"], requests, calib_windows),
            "compute_speedup_bound": full / _window_blocks(bound, requests, calib_windows),
            "trace_bytes_peak": engines["engine"].trace_bytes_peak,
            "max_rel_diff": err,
        }
        by: dict[str, Counter[str]] = {k: Counter() for k in ("engine", "naive")}
        stitched = engines["engine"].stitch_seconds
        for k, spent in by.items():  # one more pass of each, timed per request size
            _replay(scorers[k], requests, spent)
        stitched = engines["engine"].stitch_seconds - stitched  # the engine's stitching in that pass
        row["seconds_per_windows"] = {
            w: {
                "engine": by["engine"][w],
                "naive": by["naive"][w],
                "speedup": by["naive"][w] / by["engine"][w],
            }
            for w in by["engine"]
        }
        # where the time goes besides blocks: the dense references of the window sets (every scorer
        # builds them), restoring and swapping weights (naive) and stitching (engine)
        naive, engine = scorers["naive"], engines["engine"]
        parts = best_time(
            {
                "references": lambda sc=engine, rq=requests: [sc.window_set(r.windows, r.batch) for r in rq],
                "naive_stitching": lambda sc=naive, rq=requests: [sc.stitch(r.candidate) for r in rq],
            },
            repeats,
            warmup=False,
            setup={"references": engine.clear_caches},
        )
        row["references_ms"] = 1e3 * parts["references"] / len(requests)
        row["naive_stitching_ms"] = 1e3 * parts["naive_stitching"] / len(requests)
        row["engine_stitching_ms"] = 1e3 * stitched / len(requests)
        # the engine's block time at the bound's block compute, with stitching free
        blocks_s = t["engine"] - parts["references"] - stitched
        at_bound = blocks_s * row["compute_speedup"] / row["compute_speedup_bound"]
        row["speedup_ceiling"] = t["naive"] / (parts["references"] + at_bound)
        if "dense_restart" in t:
            row["dense_restart_ms"] = 1e3 * t["dense_restart"] / len(requests)
            row["speedup_dense_restart"] = t["naive"] / t["dense_restart"]
            row["blocks_per_request_dense_restart"] = blocks["dense_restart"]
        out[name] = row
    for p in (naive_prep, restart_prep):
        if p is not None:
            p.adapter.restore()
    return out


def measure_ray(
    prep: Prepared, cands: list[Candidate], repeats: int, workers: Sequence[int] = (1, 2)
) -> dict[str, Any]:
    """(b), (c), (d): inline vs Ray with 1 and 2 actors on one batch of requests; memory of each."""
    import ray

    from layerbudget.search.ray_executor import RayExecutor

    owns = not ray.is_initialized()
    if owns:  # executors of every size stay alive together, so ask for enough (logical) CPUs
        ray.init(
            num_cpus=max(os.cpu_count() or 1, sum(workers)), include_dashboard=False, logging_level="ERROR"
        )
    requests = [EvalRequest(c) for c in cands]
    reference = [e.fitness for e in InlineExecutor(prep.evaluator()).evaluate(requests)]
    executors: dict[str, Executor] = {"inline": InlineExecutor(prep.evaluator())}
    out: dict[str, Any] = {"cluster_cpus": ray.cluster_resources().get("CPU", 0.0)}
    try:
        for n in workers:
            t = time.perf_counter()
            ex = RayExecutor(prep.cfg, num_workers=n, threads_per_worker=1, prepared=prep, ship_database=True)
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
                "driver": _driver_memory(),
            }
    finally:
        for ex in executors.values():
            ex.close()
        if owns:
            ray.shutdown()
    return out


def _driver_memory() -> dict[str, int]:
    from layerbudget.search.ray_executor import _memory

    return _memory()


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
