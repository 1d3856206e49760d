"""Candidate evaluation engine: stitch a candidate into the model and score it against the dense model.

Stitching swaps only the units whose option differs from what the model currently holds (weights
come decoded from the database). The dense outputs and the dense inputs of every block are cached
per window set, so a candidate whose first compressed unit sits in block ``b`` is re-run only from
block ``b`` on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from layerbudget.data import TokenSets
from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.fitness import Fitness
from layerbudget.model import BlockInputs, ModelAdapter
from layerbudget.profiles.database import Database
from layerbudget.profiles.options import DENSE, DROP
from layerbudget.search.problem import Candidate, Problem


@dataclass
class _Batch:
    ids: torch.Tensor  # [B, S]
    ref: torch.Tensor  # fitness reference of the dense output
    inputs: BlockInputs  # dense inputs of every block


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
    ):
        if batch_size < 1:
            raise LayerbudgetError(f"batch_size must be at least 1, but got {batch_size}")
        self.adapter = adapter
        self.database = database
        self.problem = problem
        self.tokens = tokens
        self.fitness = fitness
        self.batch_size = batch_size
        self.data_seed = data_seed
        self.max_fresh_sets = max_fresh_sets
        adapter.restore()
        self._units: dict[str, str] = {u.name: DENSE for u in adapter.units}
        self._refs: dict[tuple, list[_Batch]] = {}
        self._fresh: OrderedDict[tuple, list[_Batch]] = OrderedDict()
        self.n_scored = 0
        self._refs[("calib",)] = self._reference(tokens.calib)
        self._refs[("heldout",)] = self._reference(tokens.heldout)

    # ----- references ----------------------------------------------------------------------------
    def _reference(self, ids: torch.Tensor) -> list[_Batch]:
        """Dense outputs and block inputs of ``ids`` (the model is restored to dense first)."""
        self._set_dense()
        batches = []
        for chunk in torch.split(ids, self.batch_size):
            out, inputs = self.adapter.capture(chunk)
            batches.append(_Batch(chunk, self.fitness.reference(out), inputs))
        return batches

    def _set_dense(self) -> None:
        if any(o != DENSE for o in self._units.values()) or self.adapter.dropped:
            self.adapter.restore()
            self._units = dict.fromkeys(self._units, DENSE)

    def _windows(self, windows: int | None, batch: int) -> list[_Batch]:
        if windows is None:
            return self._refs[("calib",)]
        key = ("fresh", windows, batch)
        if key not in self._fresh:
            rng = np.random.default_rng([self.data_seed, batch, windows])
            self._fresh[key] = self._reference(self.tokens.fresh_calib(windows, rng))
            while len(self._fresh) > self.max_fresh_sets:
                self._fresh.popitem(last=False)
        return self._fresh[key]

    # ----- stitching -----------------------------------------------------------------------------
    def stitch(self, candidate: Candidate) -> int:
        """Make the model hold ``candidate``; return the first block that differs from dense."""
        units, dropped = self.problem.assignment(candidate)
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
        return first

    # ----- scoring -------------------------------------------------------------------------------
    def _score(self, candidate: Candidate, batches: list[_Batch]) -> float:
        start = self.stitch(candidate)
        num = den = 0.0
        for b in batches:
            out = self.adapter.forward_from(start, b.inputs)
            n, d = self.fitness.partial(out, b.ref)
            num += n
            den += d
        self.n_scored += 1
        return num / den if den > 0 else float("nan")

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        """Fitness on the calibration set (``windows=None``) or on fresh windows of batch ``batch``."""
        return self._score(candidate, self._windows(windows, batch))

    def heldout(self, candidate: Candidate) -> float:
        """The same fitness on the held-out windows (never used for search decisions)."""
        return self._score(candidate, self._refs[("heldout",)])
