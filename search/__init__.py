"""Searchers that pick one option per unit under a budget, and the executors that score candidates."""

from layerbudget.search import dp as _dp  # noqa: F401  (registers "dp")
from layerbudget.search import evolution as _evolution  # noqa: F401  (registers "evolution")
from layerbudget.search import hybrid as _hybrid  # noqa: F401  (registers "hybrid")
from layerbudget.search import ilp as _ilp  # noqa: F401  (registers "ilp")
from layerbudget.search import optuna_search as _optuna  # noqa: F401  (registers "optuna")
from layerbudget.search import owl as _owl  # noqa: F401  (registers "owl")
from layerbudget.search import random_search as _random_search  # noqa: F401  (registers "random")
from layerbudget.search import shortgpt as _shortgpt  # noqa: F401  (registers "shortgpt")
from layerbudget.search import sleb as _sleb  # noqa: F401  (registers "sleb")
from layerbudget.search import uniform as _uniform  # noqa: F401  (registers "uniform")
from layerbudget.search.base import (
    EvalRequest,
    Evaluation,
    Searcher,
    known_searchers,
    make_searcher,
    register_searcher,
)
from layerbudget.search.executor import Executor, InlineExecutor
from layerbudget.search.loop import SearchOutcome, run_search
from layerbudget.search.problem import Candidate, Problem, Slot

__all__ = [
    "Candidate",
    "EvalRequest",
    "Evaluation",
    "Executor",
    "InlineExecutor",
    "Problem",
    "SearchOutcome",
    "Searcher",
    "Slot",
    "known_searchers",
    "make_searcher",
    "register_searcher",
    "run_search",
]
