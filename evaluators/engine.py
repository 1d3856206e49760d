"""Candidate evaluation engine: stitch a candidate into the model and score it against the dense model.

Stitching swaps only the units whose option differs from what the model currently holds (weights
come decoded from the database); when another evaluator sharing the adapter changed the model (the
adapter's ``version`` moved), it restores the dense model first. The dense outputs and block inputs
of every window set are cached (calibration, held-out once it is first used, and an LRU of
``max_fresh_sets`` fresh batches).

Trace cache: scoring a candidate records the input of every block on every batch of its window set
(a *trace*). The traces of recently scored candidates are kept in one LRU bounded by
``max_traces`` candidates and ``max_trace_bytes`` bytes of activations the window sets do not hold
anyway. A new candidate runs only the blocks after the longest prefix of blocks it shares with a
cached trace of the same window set (a block agrees when its units hold the same options and its
sub-blocks the same drop states), so offspring that differ from their parent in a few slots restart
near their first change. The restart input is the identical tensor the same blocks produced from
the same dense input: scores are bit-identical to a restart from the dense inputs (``max_traces=0``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from layerbudget.data import TokenSets
from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.fitness import Fitness
from layerbudget.model import BlockInputs, ModelAdapter
from layerbudget.options import DENSE, DROP
from layerbudget.problem import Candidate, EvalRequest, Problem
from layerbudget.profiles.database import Database


@dataclass
class _Batch:
    ids: torch.Tensor  # [B, S]
    ref: torch.Tensor  # fitness reference of the dense output
    inputs: BlockInputs  # dense inputs of every block


@dataclass
class _Trace:
    """The block inputs one candidate produced on every batch of one window set."""

    key: tuple[tuple, ...]  # per block: what the candidate holds there (options, drop states)
    first: int  # blocks before it (and its input) are dense, shared with the window set
    hidden: list[list[torch.Tensor]]  # hidden[batch][block]: that block's input


DEFAULT_MAX_TRACES = 256
DEFAULT_MAX_TRACE_BYTES = 256 * 2**20


@dataclass
class EngineStats:
    """Counters of what an evaluator did, kept when one is passed to it (benchmarks, tests)."""

    scored: int = 0  # candidates scored
    blocks_run: int = 0  # blocks run per batch, summed over scored candidates
    stitch_seconds: float = 0.0  # time spent stitching candidates into the model
    reference_seconds: float = 0.0  # time spent on the dense references of window sets
    trace_bytes_peak: int = 0  # the most activation bytes the trace cache held


class Evaluator:
    """Scores candidates of a :class:`Problem` on calibration, fresh or held-out windows."""

    def __init__(
        self,
        adapter: ModelAdapter,
        database: Database,
        problem: Problem,
        tokens: TokenSets,
        fitness: Fitness,
        *,
        batch_size: int = 8,
        data_seed: int = 0,
        max_fresh_sets: int = 4,
        max_traces: int = DEFAULT_MAX_TRACES,
        max_trace_bytes: int | None = DEFAULT_MAX_TRACE_BYTES,
        stats: EngineStats | None = None,
    ):
        if batch_size < 1:
            raise LayerbudgetError(f"batch_size must be at least 1, but got {batch_size}")
        if max_traces < 0:
            raise LayerbudgetError(f"max_traces must be at least 0, but got {max_traces}")
        if max_trace_bytes is not None and max_trace_bytes < 0:
            raise LayerbudgetError(f"max_trace_bytes must be at least 0 (or None), but got {max_trace_bytes}")
        self.adapter = adapter
        self.database = database
        self.problem = problem
        self.tokens = tokens
        self.fitness = fitness
        self.batch_size = batch_size
        self.data_seed = data_seed
        self.max_fresh_sets = max_fresh_sets
        self.max_traces = max_traces
        self.max_trace_bytes = max_trace_bytes
        adapter.restore()
        self._units: dict[str, str] = {u.name: DENSE for u in adapter.units}
        self._version = adapter.version  # the adapter's version after this evaluator's last change
        self._refs: dict[tuple, list[_Batch]] = {}
        self._fresh: OrderedDict[tuple, list[_Batch]] = OrderedDict()
        # trace cache: (window set, candidate key) -> trace, least recently used first
        self._traces: OrderedDict[tuple, _Trace] = OrderedDict()
        self._storages: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, references]
        self.trace_bytes = 0  # distinct activation bytes the trace cache holds
        self.dense_key = self._block_key({}, [])  # what the dense model holds in every block
        self.stats = stats
        self._refs[("calib",)] = self._reference(tokens.calib)  # held-out references: on first use

    # ----- references ----------------------------------------------------------------------------
    def _reference(self, ids: torch.Tensor) -> list[_Batch]:
        """Dense outputs and block inputs of ``ids`` (the model is restored to dense first)."""
        t = time.perf_counter()
        self._set_dense()
        batches = []
        for chunk in torch.split(ids, self.batch_size):
            out, inputs = self.adapter.capture(chunk)
            batches.append(_Batch(chunk, self.fitness.reference(out), inputs))
        if self.stats is not None:
            self.stats.reference_seconds += time.perf_counter() - t
        return batches

    def _set_dense(self) -> None:
        changed = self.adapter.version != self._version  # by someone else
        if changed or any(o != DENSE for o in self._units.values()) or self.adapter.dropped:
            self.adapter.restore()
            self._units = dict.fromkeys(self._units, DENSE)
            self._version = self.adapter.version

    def _windows(self, windows: int | None, batch: int) -> tuple[tuple, list[_Batch]]:
        """The key and batches of a window set (fresh sets are built on first use, LRU-evicted)."""
        if windows is None:
            return ("calib",), self._refs[("calib",)]
        key = ("fresh", windows, batch)
        if key not in self._fresh:
            rng = np.random.default_rng([self.data_seed, batch, windows])
            self._fresh[key] = self._reference(self.tokens.fresh_calib(windows, rng))
            while len(self._fresh) > self.max_fresh_sets:
                gone, _ = self._fresh.popitem(last=False)
                for k in [k for k in self._traces if k[0] == gone]:
                    self._forget(k)
        else:
            self._fresh.move_to_end(key)
        return key, self._fresh[key]

    # ----- stitching -----------------------------------------------------------------------------
    def stitch(self, candidate: Candidate) -> int:
        """Make the model hold ``candidate``; return the first block that differs from dense."""
        return self._stitch(candidate)[0]

    def _stitch(self, candidate: Candidate) -> tuple[int, tuple[tuple, ...]]:
        """Stitch; return the first block that differs from dense and the candidate's block key."""
        units, dropped = self.problem.assignment(candidate)
        if self.adapter.version != self._version:  # someone else (another evaluator) changed the model
            self._set_dense()
        first = self.adapter.num_blocks - 1
        for sb in self.adapter.subblocks:
            if sb.name in dropped:
                self.adapter.drop(sb.name)
                first = min(first, sb.block)
            else:
                self.adapter.undrop(sb.name)
        for unit in self.adapter.units:
            want = units.get(unit.name, DENSE)
            if want == DROP:
                continue  # the sub-block is bypassed; its weights do not matter
            if want != DENSE:
                first = min(first, unit.block)
            if self._units[unit.name] == want:
                continue
            if want == DENSE:
                self.adapter.restore_weight(unit.name)
            else:
                self.adapter.set_weight(unit.name, self.database.weight(unit.name, want))
            self._units[unit.name] = want
        self._version = self.adapter.version
        return first, self._block_key(units, dropped)

    def block_key(self, candidate: Candidate) -> tuple[tuple, ...]:
        """What ``candidate`` holds in every block (see :meth:`_block_key`), without stitching it."""
        return self._block_key(*self.problem.assignment(candidate))

    def _block_key(self, units: dict[str, str], dropped: list[str]) -> tuple[tuple, ...]:
        """Per block: every unit's option (``drop`` inside a dropped sub-block) and the drop states.

        Two candidates compute the same function in block ``b`` iff their keys agree at ``b``.
        """
        gone = set(dropped)
        key: list[list] = [[] for _ in range(self.adapter.num_blocks)]
        for unit in self.adapter.units:
            key[unit.block].append(DROP if unit.subblock in gone else units.get(unit.name, DENSE))
        for sb in self.adapter.subblocks:
            key[sb.block].append(sb.name in gone)
        return tuple(tuple(k) for k in key)

    # ----- trace cache ---------------------------------------------------------------------------
    @staticmethod
    def agree(a: tuple[tuple, ...], b: tuple[tuple, ...]) -> int:
        """Number of leading blocks on which two block keys agree."""
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    def _best_trace(self, set_key: tuple, key: tuple[tuple, ...]) -> tuple[int, _Trace | None]:
        """The cached trace of ``set_key`` (None: dense) agreeing with ``key`` on the most blocks."""
        best, best_n = None, self.agree(key, self.dense_key)
        for (s, _), trace in reversed(self._traces.items()):  # most recent first wins ties
            if s == set_key:
                n = self.agree(key, trace.key)
                if n > best_n:
                    best, best_n = trace, n
        return best_n, best

    def _owned(self, trace: _Trace) -> list[torch.Tensor]:
        """The tensors of a trace that are not dense block inputs (inputs of blocks after ``first``)."""
        return [t for hidden in trace.hidden for t in hidden[trace.first + 1 :]]

    def _remember(self, set_key: tuple, trace: _Trace) -> None:
        self._traces[(set_key, trace.key)] = trace
        for t in self._owned(trace):
            entry = self._storages.setdefault(
                t.untyped_storage().data_ptr(), [t.untyped_storage().nbytes(), 0]
            )
            if entry[1] == 0:
                self.trace_bytes += entry[0]
            entry[1] += 1
        limit = self.max_trace_bytes
        while self._traces and (
            len(self._traces) > self.max_traces or (limit is not None and self.trace_bytes > limit)
        ):
            self._forget(next(iter(self._traces)))
        if self.stats is not None:
            self.stats.trace_bytes_peak = max(self.stats.trace_bytes_peak, self.trace_bytes)

    def _forget(self, k: tuple) -> None:
        trace = self._traces.pop(k)
        for t in self._owned(trace):
            ptr = t.untyped_storage().data_ptr()
            entry = self._storages[ptr]
            entry[1] -= 1
            if entry[1] == 0:
                self.trace_bytes -= entry[0]
                del self._storages[ptr]

    @property
    def cached_traces(self) -> int:
        """Number of traces in the cache (over all window sets)."""
        return len(self._traces)

    def clear_caches(self) -> None:
        """Drop every cached trace and fresh window set (calibration and held-out references stay)."""
        for k in list(self._traces):
            self._forget(k)
        self._fresh.clear()

    # ----- scoring -------------------------------------------------------------------------------
    def _score(self, candidate: Candidate, set_key: tuple, batches: list[_Batch]) -> float:
        t = time.perf_counter()
        first, key = self._stitch(candidate)
        stitched = time.perf_counter() - t
        nb = self.adapter.num_blocks
        agree, base = self._best_trace(set_key, key)
        start = min(agree, nb - 1)
        if base is not None:  # used: most recently used (all of it when it is the same candidate)
            self._traces.move_to_end((set_key, base.key))
        record = agree < nb and self.max_traces > 0 and self.max_trace_bytes != 0
        hidden = []
        num = den = 0.0
        for i, b in enumerate(batches):
            inputs = b.inputs if base is None else BlockInputs(base.hidden[i], b.inputs.calls)
            rec = list(inputs.hidden) if record else None
            out = self.adapter.forward_from(start, inputs, rec)
            hidden.append(rec)
            n, d = self.fitness.partial(out, b.ref)
            num += n
            den += d
        if record:
            self._remember(set_key, _Trace(key, first, hidden))
        if self.stats is not None:
            self.stats.scored += 1
            self.stats.blocks_run += nb - start
            self.stats.stitch_seconds += stitched
        return num / den if den > 0 else float("nan")

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        """Fitness on the calibration set (``windows=None``) or on fresh windows of batch ``batch``."""
        return self._score(candidate, *self._windows(windows, batch))

    def heldout(self, candidate: Candidate) -> float:
        """The same fitness on the held-out windows (never used for search decisions)."""
        if ("heldout",) not in self._refs:  # built on first use: evaluation workers never need them
            self._refs[("heldout",)] = self._reference(self.tokens.heldout)
        return self._score(candidate, ("heldout",), self._refs[("heldout",)])


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
