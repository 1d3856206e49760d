"""Prepare an experiment's shared state from its config: model, tokens, database, problem, evaluator.

The runner calls :func:`prepare` once; remote evaluation workers call :func:`prepare` with the same
config (``build=False``: the database must already exist in the cache) and get an identical
evaluator, which is what makes inline and distributed scoring give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from layerbudget.budget import Budget
from layerbudget.config import ExperimentConfig
from layerbudget.data import TokenSets, build_token_sets
from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.fitness import Fitness, make_fitness
from layerbudget.model import ModelAdapter, load_model
from layerbudget.profiles.cache import default_cache_dir
from layerbudget.profiles.database import (
    Database,
    calib_digest,
    database_key,
    load_or_build_database,
    open_database,
)
from layerbudget.profiles.latency import load_or_build_latency, slot_latency_ns
from layerbudget.profiles.option_fit import check_budget_fit, check_budgets_early
from layerbudget.profiles.options import DENSE, parse_options
from layerbudget.profiles.profile import Profile, build_problem, load_or_build_profile
from layerbudget.search.base import EvalRequest
from layerbudget.search.executor import Executor
from layerbudget.search.problem import Problem


@dataclass
class Prepared:
    """Everything a search needs besides the searcher: built once per experiment (or per worker)."""

    cfg: ExperimentConfig
    adapter: ModelAdapter
    tokens: TokenSets
    fitness: Fitness
    database: Database
    problem: Problem
    option_names: list[str]
    calib_hash: str
    cache_dir: Path
    database_reused: bool
    latency: pd.DataFrame | None = None  # the latency table of cfg.latency.target, when one is set

    def evaluator(self, problem: Problem | None = None, **engine: Any) -> Evaluator:
        """An evaluator of ``problem`` (default: this one) on this model, data and fitness; ``engine``
        passes further :class:`Evaluator` options (e.g. ``max_traces``)."""
        return Evaluator(
            self.adapter,
            self.database,
            self.problem if problem is None else problem,
            self.tokens,
            self.fitness,
            batch_size=self.cfg.data.batch_size,
            data_seed=self.cfg.seed,
            **engine,
        )


    def profile(
        self, evaluator: Evaluator | None = None, *, executor: Executor | None = None, progress: bool = True
    ) -> tuple[Profile, bool]:
        """The cached sensitivity profile of this problem; when missing it is measured with ``evaluator``,
        or in one batch on ``executor`` (e.g. its Ray actors) when one is given."""
        evaluator = evaluator or self.evaluator()
        key_parts = {"calib": self.calib_hash, "fitness": self.fitness.name, "seq_len": self.tokens.seq_len}
        many = None
        if executor is not None:
            many = lambda cands: [e.fitness for e in executor.evaluate([EvalRequest(c) for c in cands])]  # noqa: E731
        return load_or_build_profile(
            self.problem, self.database, self.adapter, evaluator.score, self.cache_dir, key_parts,
            progress=progress, score_many=many,
        )


def cache_dir_of(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.cache_dir).expanduser() if cfg.output.cache_dir else default_cache_dir()


def prepare(cfg: ExperimentConfig, *, progress: bool = True, build: bool = True) -> Prepared:
    """Load the model and data, build (or reuse) the database, and set up the search problem."""
    torch.manual_seed(cfg.seed)
    adapter = load_model(cfg.model.id, family=cfg.model.family, dtype=cfg.model.dtype, device=cfg.model.device)
    tokens = build_token_sets(
        adapter.tokenizer,
        cfg.data.source,
        seq_len=cfg.data.seq_len,
        calib_windows=cfg.data.calib_windows,
        heldout_windows=cfg.data.heldout_windows,
        heldout_fraction=cfg.data.heldout_fraction,
        seed=cfg.seed,
        max_positions=getattr(adapter.model.config, "max_position_embeddings", None),
        db_windows=cfg.options.calibration_windows,
    )
    fitness = make_fitness(cfg.search.fitness, adapter.task)
    names = list(cfg.options.names) if DENSE in cfg.options.names else [DENSE, *cfg.options.names]
    options = parse_options(names)
    calib_hash = calib_digest(tokens.calib)
    cache_dir = cache_dir_of(cfg)
    inputs = cfg.options.calibration_inputs
    if build:
        check_budgets_early(adapter, names, cfg.budget)  # before the database is built
        database, reused = load_or_build_database(
            adapter,
            options,
            cache_dir,
            calib=tokens.db_calib,
            batch_size=cfg.data.batch_size,
            inputs=inputs,
            progress=progress,
        )
    else:
        root = cache_dir / "db" / database_key(adapter, options, calib_digest(tokens.db_calib), inputs)[:32]
        if not root.exists():
            raise LayerbudgetError(f"database {root} does not exist; run the experiment once to build it")
        database, reused = open_database(root), True
    problem = build_problem(adapter, database, names)
    latency = None
    if cfg.latency.target and build:  # evaluation workers (build=False) only score; they need no costs
        latency, _ = load_or_build_latency(problem, cfg.latency.target, cfg.latency.tokens, cache_dir)
        problem.set_latency(slot_latency_ns(problem, latency))
    for budget in cfg.budget:
        known = tuple(c for c in budget.constraints if c.metric in problem.coef)
        if build or len(known) == len(budget.constraints):
            check_budget_fit(problem, budget, adapter, names)
        elif known:
            check_budget_fit(problem, Budget(known), adapter, names)
    return Prepared(cfg, adapter, tokens, fitness, database, problem, names, calib_hash, cache_dir, reused, latency)
