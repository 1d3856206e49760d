"""What an evaluator is built from: a small picklable spec, the same in the driver and in every worker.

:func:`load_model_and_text` is the one way the model and the token windows are made, so an
evaluator built from a :class:`ScorerSpec` in a Ray actor scores every request exactly as the
driver's own evaluator does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerbudget.data import TextSpec, TokenSets
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.fitness import make_fitness
from layerbudget.model import ModelAdapter, ModelSpec
from layerbudget.problem import Problem
from layerbudget.profiles.database import Database, calib_digest, open_database


def load_model_and_text(model: ModelSpec, text: TextSpec) -> tuple[ModelAdapter, TokenSets]:
    """The model and its token windows (torch seeded with the text's seed first)."""
    torch.manual_seed(text.seed)
    adapter = model.load()
    tokens = text.build(adapter.tokenizer, getattr(adapter.model.config, "max_position_embeddings", None))
    return adapter, tokens


def identity(evaluator: Evaluator) -> dict[str, str]:
    """What two evaluators must share to give the same numbers: calibration tokens, database, weights."""
    return {
        "calib_sha256": str(calib_digest(evaluator.tokens.calib)),
        "database_key": evaluator.database.key,
        "weight_hash": evaluator.adapter.weight_hash(),
    }


@dataclass(frozen=True)
class ScorerSpec:
    """Everything a worker needs to build the driver's evaluator (a few kB when pickled).

    ``database``: the directory of the built database; ``fitness``: a fitness name (not "auto");
    ``problem``: the search problem whose candidates are scored.
    """

    model: ModelSpec
    text: TextSpec
    database: str
    fitness: str
    batch_size: int
    problem: Problem

    def evaluator(self, adapter: ModelAdapter, tokens: TokenSets, database: Database, **engine: Any) -> Evaluator:
        """The evaluator of this spec on an already loaded model, token windows and database;
        ``engine``: further :class:`Evaluator` options (e.g. ``max_traces``)."""
        return Evaluator(
            adapter,
            database,
            self.problem,
            tokens,
            make_fitness(self.fitness, adapter.task),
            batch_size=self.batch_size,
            data_seed=self.text.seed,
            **engine,
        )

    def build(self) -> Evaluator:
        """Load the model, cut the text and open the database, then build the evaluator."""
        adapter, tokens = load_model_and_text(self.model, self.text)
        return self.evaluator(adapter, tokens, open_database(Path(self.database)))
