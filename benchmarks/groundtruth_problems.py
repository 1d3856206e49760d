"""The ground-truth benchmark's enumerable MiniLM problems and their exhaustive real-fitness tables.

A :class:`GroundTruth` is a problem whose free slots are few enough to score every plan: a plan is a
mixed-radix index (digit ``j`` = the option of free slot ``j``), the table holds every plan's
fitness on the evaluator's standard calibration windows, scored depth-first over blocks
(:class:`PrefixScorer`, checked against :meth:`Evaluator.score`) and cached by a key of everything
it depends on. The additive proxy of a problem is read off its own table: one-at-a-time deltas
from a reference plan.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerbudget.evaluators.engine import Evaluator
from layerbudget.experiments.prepare import Prepared
from layerbudget.model import BlockInputs
from layerbudget.options import DENSE, DROP
from layerbudget.problem import KEEP, Candidate, Problem, Slot
from layerbudget.storage import atomic_write_text, content_hash

TABLE_VERSION = 2
QUANT_OPTIONS = ("rtn-b2-g64", "rtn-b4-g64")  # (low, high)
MIXED_OPTIONS = ("rtn-b4-g64", "rtn-b2-g64", "magnitude-2:4+rtn-b4-g64")  # reference option first
MIXED_BLOCKS = (2, 3, 4, 5)  # the mixed problem's MLP slots; earlier blocks stay dense


@dataclass
class GroundTruth:
    """An enumerable problem: free slots, their option counts, a fixed rest, and every plan's fitness."""

    name: str
    problem: Problem
    free: list[int]  # slot index of digit j
    base: Candidate  # the fixed part (free slots at option 0)
    reference: int = 0  # the plan the one-at-a-time proxy is measured from
    fitness: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [size] by plan index

    @property
    def radix(self) -> list[int]:
        return [len(self.problem.slots[i].options) for i in self.free]

    @property
    def size(self) -> int:
        return math.prod(self.radix)

    def digits(self, index: int) -> list[int]:
        out = []
        for r in self.radix:
            index, d = divmod(index, r)
            out.append(d)
        return out

    def candidate(self, index: int) -> Candidate:
        cand = list(self.base)
        for i, d in zip(self.free, self.digits(index)):
            cand[i] = d
        return self.problem.canonical(cand)

    def index(self, cand: Candidate) -> int:
        out, stride = 0, 1
        for i, r in zip(self.free, self.radix):
            out += max(cand[i], 0) * stride
            stride *= r
        return out

    def with_digit(self, index: int, j: int, d: int) -> int:
        digits = self.digits(index)
        digits[j] = d
        out, stride = 0, 1
        for x, r in zip(digits, self.radix):
            out, stride = out + x * stride, stride * r
        return out


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


def _mlp_problem(prep: Prepared, name: str, options: tuple[str, ...], blocks: tuple[int, ...]) -> GroundTruth:
    """The MLP unit slots of ``blocks`` with ``options`` each; every other unit stays dense (outside)."""
    adapter, db = prep.adapter, prep.database
    mlp = {sb.name for sb in adapter.subblocks if sb.kind == "mlp" and sb.block in blocks}
    slots = []
    for g in adapter.groups:
        if g.subblock not in mlp:
            continue
        missing = [o for o in options if not all(o in db.unit_options(u.name) for u in g.units)]
        if missing:
            raise SystemExit(f"the database lacks {missing} for {g.name}; add them to the experiment's options")
        slots.append(Slot(g.name, options, tuple((u.name, u.shape) for u in g.units), g.block))
    problem = Problem(slots, other_numel=adapter.non_unit_numel())
    return GroundTruth(name, problem, list(range(len(slots))), problem.canonical([0] * len(slots)))


def quant_problem(prep: Prepared) -> GroundTruth:
    """The 12 MLP slots at 2 or 4 bits; the proxy is measured from all slots at 4 bits."""
    gt = _mlp_problem(prep, "quant", QUANT_OPTIONS, tuple(range(prep.adapter.num_blocks)))
    gt.reference = gt.size - 1  # every digit 1: the high option
    return gt


def mixed_problem(prep: Prepared) -> GroundTruth:
    """The 8 MLP slots of blocks 2-5 with three options (4-bit, 2-bit, 2:4 + 4-bit) under bits and sparsity."""
    return _mlp_problem(prep, "mixed", MIXED_OPTIONS, MIXED_BLOCKS)


PROBLEMS = {"depth": depth_problem, "quant": quant_problem, "mixed": mixed_problem}


class PrefixScorer:
    """Scores every plan depth-first over blocks, reusing the hidden states of each block prefix.

    A plan's output depends on block ``b`` only through the choices of blocks ``<= b``, so the search
    tree over blocks runs each (prefix, block) once. The numbers are the evaluator's (same batches,
    same fitness sums); :func:`exhaustive` checks some of them against :meth:`Evaluator.score`.
    """

    def __init__(self, prep: Prepared, gt: GroundTruth):
        self.adapter, self.gt, self.fitness = prep.adapter, gt, prep.fitness
        self.evaluator = prep.evaluator(gt.problem)  # a fresh one leaves the model dense
        self.batches = []  # (block inputs, fitness reference) per calibration batch, from the dense model
        for chunk in torch.split(prep.tokens.calib, self.evaluator.batch_size):
            out, inputs = self.adapter.capture(chunk)
            self.batches.append((inputs, self.fitness.reference(out)))
        blocks = [gt.problem.slots[i].block for i in gt.free]
        self.digits = [[j for j, b in enumerate(blocks) if b == blk] for blk in range(self.adapter.num_blocks)]
        self.stride = [math.prod(gt.radix[:j]) for j in range(len(gt.free))]
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
            if self.done % 1024 == 0:
                log(f"{self.gt.name}: {self.done}/{len(fit)} plans scored ({time.perf_counter() - self.t0:.0f} s)")
            return
        here = self.digits[blk]
        radix = [self.gt.radix[j] for j in here]
        for combo in range(math.prod(radix)):
            index = prefix
            for j, r in zip(here, radix):
                combo, d = divmod(combo, r)
                index += d * self.stride[j]
            later = self.state - self._prefix_part(self.state, blk)  # later blocks keep their weights (fewer swaps)
            self.state = index + later
            self.evaluator.stitch(self.gt.candidate(self.state))
            nxt = []
            for h, (inputs, _) in zip(hidden, self.batches):
                args, kwargs = inputs.calls[blk]
                out = self.adapter.blocks[blk](h, *args, **kwargs)
                nxt.append(out[0] if isinstance(out, tuple) else out)
            self._dfs(blk + 1, index, nxt, fit, log)

    def _prefix_part(self, index: int, blk: int) -> int:
        """The part of ``index`` made of the digits of blocks ``<= blk``."""
        return sum(d * self.stride[j] for j, d in enumerate(self.gt.digits(index)) if j in self._upto(blk))

    def _upto(self, blk: int) -> set[int]:
        return {j for b in range(blk + 1) for j in self.digits[b]}


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


def exhaustive(prep: Prepared, gt: GroundTruth, log) -> dict:
    """Fill ``gt.fitness`` from the cache, or score every plan; returns what the report records of the table:
    its key and path, whether it was rebuilt now, and the seconds spent scoring."""
    key = table_key(prep, gt)
    path = prep.cache_dir / "groundtruth" / f"{gt.name}-{key[:24]}.json"
    rng = np.random.default_rng(0)
    probe = [0, gt.size - 1, *rng.integers(gt.size, size=6).tolist()]  # checked with Evaluator.score
    info = {"key": key, "path": str(path), "plans": gt.size, "rebuilt": True, "seconds": 0.0}
    if path.exists():
        fit = np.asarray(json.loads(path.read_text())["fitness"], dtype=np.float64)
        if len(fit) == gt.size and _agrees(prep, gt, fit, probe[:3]):
            gt.fitness = fit
            log(f"{gt.name}: exhaustive table reused ({path})")
            return {**info, "rebuilt": False}
        log(f"{gt.name}: cached table {path} disagrees with the evaluator; scoring again")
    fit = np.full(gt.size, np.nan)
    t = time.perf_counter()
    PrefixScorer(prep, gt).run(fit, log)
    info["seconds"] = time.perf_counter() - t
    if not _agrees(prep, gt, fit, probe):
        raise SystemExit(f"{gt.name}: the prefix scorer disagrees with Evaluator.score; the table is not saved")
    atomic_write_text(path, json.dumps({"key": key, "problem": gt.name, "fitness": fit.tolist()}) + "\n")
    gt.fitness = fit
    return info


def _agrees(prep: Prepared, gt: GroundTruth, fit: np.ndarray, plans: list[int]) -> bool:
    ev: Evaluator = prep.evaluator(gt.problem)
    return all(math.isclose(ev.score(gt.candidate(m)), fit[m], rel_tol=1e-5, abs_tol=1e-9) for m in plans)


def set_proxy(gt: GroundTruth) -> None:
    """One-at-a-time deltas from the table: each free slot's option swapped into the reference plan."""
    proxy: dict[tuple[str, str], float] = {}
    ref = gt.reference
    ref_digits = gt.digits(ref)
    for j, i in enumerate(gt.free):
        s = gt.problem.slots[i]
        for d, option in enumerate(s.options):
            if option == KEEP:
                continue
            moved = gt.with_digit(ref, j, d)
            proxy[(s.name, option)] = 0.0 if d == ref_digits[j] else float(gt.fitness[moved] - gt.fitness[ref])
    gt.problem.set_proxy(proxy)


def config_path() -> Path:
    """The benchmark's own experiment: the default model and text with fewer, shorter windows."""
    return Path(__file__).with_name("groundtruth.toml")
