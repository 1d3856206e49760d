"""Prepare an experiment's shared state from its config: model, tokens, database, problem, evaluator.

The runner calls :func:`prepare` once. Evaluation workers do not: they build their evaluator from
:meth:`Prepared.scorer_spec` (:mod:`layerbudget.evaluators.scorer`), the same way the driver builds
its own, which is what makes inline and distributed scoring give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from layerbudget.data import TokenSets
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.executor import Executor
from layerbudget.evaluators.fitness import Fitness, make_fitness
from layerbudget.evaluators.scorer import ScorerSpec, load_model_and_text
from layerbudget.experiments.config import ExperimentConfig
from layerbudget.model import ModelAdapter
from layerbudget.options import DENSE, parse_options
from layerbudget.problem import Budget, EvalRequest, Problem
from layerbudget.profiles.database import Database, calib_digest, load_or_build_database, open_cached_database
from layerbudget.profiles.latency import load_or_build_latency, slot_latency_ns
from layerbudget.profiles.option_fit import check_budget_fit, check_budgets_early
from layerbudget.profiles.profile import Profile, build_problem, load_or_build_profile


@dataclass
class Prepared:
    """Everything a search needs besides the searcher: built once per experiment."""

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

    def scorer_spec(self, problem: Problem | None = None) -> ScorerSpec:
        """The picklable spec an evaluation worker builds this experiment's evaluator from."""
        return ScorerSpec(
            model=self.cfg.model,
            text=self.cfg.text(),
            database=str(Path(self.database.root).expanduser().resolve()),
            fitness=self.fitness.name,
            batch_size=self.cfg.data.batch_size,
            problem=self.problem if problem is None else problem,
        )

    def evaluator(self, problem: Problem | None = None, **engine: Any) -> Evaluator:
        """An evaluator of ``problem`` (default: this one) on this model, data and fitness; ``engine``
        passes further :class:`Evaluator` options (e.g. ``max_traces``)."""
        return self.scorer_spec(problem).evaluator(self.adapter, self.tokens, self.database, **engine)

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


def prepare(cfg: ExperimentConfig, *, progress: bool = True, build: bool = True) -> Prepared:
    """Load the model and data, build (or reuse) the database, and set up the search problem.

    ``build=False``: the database must already be in the cache, and no latency table is made.
    """
    adapter, tokens = load_model_and_text(cfg.model, cfg.text())
    fitness = make_fitness(cfg.search.fitness, adapter.task)
    names = list(cfg.options.names) if DENSE in cfg.options.names else [DENSE, *cfg.options.names]
    options = parse_options(names)
    cache_dir = cfg.cache_dir()
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
        database, reused = open_cached_database(adapter, options, cache_dir, calib=tokens.db_calib, inputs=inputs), True
    problem = build_problem(adapter, database, names)
    latency = None
    if cfg.latency.target and build:
        latency, _ = load_or_build_latency(problem, cfg.latency.target, cfg.latency.tokens, cache_dir)
        problem.set_latency(slot_latency_ns(problem, latency))
    for budget in cfg.budget:
        known = tuple(c for c in budget.constraints if c.metric in problem.coef)
        if build or len(known) == len(budget.constraints):
            check_budget_fit(problem, budget, adapter, names)
        elif known:
            check_budget_fit(problem, Budget(known), adapter, names)
    calib_hash = str(calib_digest(tokens.calib))
    return Prepared(cfg, adapter, tokens, fitness, database, problem, names, calib_hash, cache_dir, reused, latency)
