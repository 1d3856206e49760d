"""Part (a) of the scoring benchmark: candidate sequences, naive re-evaluation, and the engine against it."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from layerbudget.evaluators.engine import EngineStats, Evaluator, prefix_bound
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.experiments.prepare import Prepared
from layerbudget.options import DENSE, DROP
from layerbudget.problem import KEEP, Candidate, EvalRequest, Problem
from layerbudget.search.registry import make_searcher


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
            before = scorer.stats.blocks_run
        t = time.perf_counter()
        out.append(scorer.score(r.candidate, r.windows, r.batch))
        if spent is not None:
            spent[_windows_key(r)] += time.perf_counter() - t
        if blocks is not None:
            blocks.append(scorer.stats.blocks_run - before)
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
    scorers: dict[str, Evaluator | NaiveScorer] = {"engine": prep.evaluator(stats=EngineStats())}
    if restart_prep is not None:
        scorers["dense_restart"] = restart_prep.evaluator(max_traces=0, stats=EngineStats())
    scorers["naive"] = NaiveScorer(naive_prep)
    engines = {k: sc for k, sc in scorers.items() if isinstance(sc, Evaluator)}
    out: dict[str, Any] = {}
    for name, seq in sequences.items():
        requests = [r if isinstance(r, EvalRequest) else EvalRequest(r) for r in seq]
        per_request: dict[str, list[int]] = {k: [] for k in engines}
        stats = engines["engine"].stats
        stats.trace_bytes_peak = 0
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
            "trace_bytes_peak": stats.trace_bytes_peak,
            "max_rel_diff": err,
        }
        by: dict[str, Counter[str]] = {k: Counter() for k in ("engine", "naive")}
        stitched, references = stats.stitch_seconds, stats.reference_seconds
        for k, spent in by.items():  # one more pass of each, timed per request size
            _replay(scorers[k], requests, spent)
        stitched = stats.stitch_seconds - stitched  # the engine's stitching in that pass
        references = stats.reference_seconds - references  # and the dense references of its window sets
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
        naive = scorers["naive"]
        parts = best_time(
            {"naive_stitching": lambda sc=naive, rq=requests: [sc.stitch(r.candidate) for r in rq]},
            repeats,
            warmup=False,
        )
        row["references_ms"] = 1e3 * references / len(requests)
        row["naive_stitching_ms"] = 1e3 * parts["naive_stitching"] / len(requests)
        row["engine_stitching_ms"] = 1e3 * stitched / len(requests)
        # the engine's block time at the bound's block compute, with stitching free
        blocks_s = t["engine"] - references - stitched
        at_bound = blocks_s * row["compute_speedup"] / row["compute_speedup_bound"]
        row["speedup_ceiling"] = t["naive"] / (references + at_bound)
        if "dense_restart" in t:
            row["dense_restart_ms"] = 1e3 * t["dense_restart"] / len(requests)
            row["speedup_dense_restart"] = t["naive"] / t["dense_restart"]
            row["blocks_per_request_dense_restart"] = blocks["dense_restart"]
        out[name] = row
    for p in (naive_prep, restart_prep):
        if p is not None:
            p.adapter.restore()
    return out
