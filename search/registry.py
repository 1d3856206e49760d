"""Every searcher shipped with layerbudget, by name: importing this module registers them all."""

from __future__ import annotations

from typing import Any

from layerbudget.budget import Budget
from layerbudget.errors import LayerbudgetError
from layerbudget.search import (  # noqa: F401  (each module registers its searcher)
    dp,
    evolution,
    hybrid,
    ilp,
    optuna_search,
    owl,
    random_search,
    shortgpt,
    sleb,
    uniform,
)
from layerbudget.search.base import Searcher, registered_searchers
from layerbudget.search.problem import Problem


def known_searchers() -> list[str]:
    """The names of every registered searcher, sorted."""
    return sorted(registered_searchers())


def make_searcher(name: str, problem: Problem, budget: Budget, *, seed: int = 0, **params: Any) -> Searcher:
    """A new searcher ``name`` for ``problem`` under ``budget``; an unknown name lists the known ones."""
    try:
        cls = registered_searchers()[name]
    except KeyError:
        raise LayerbudgetError(f"unknown searcher {name!r}; known: {', '.join(known_searchers())}") from None
    return cls(problem, budget, seed=seed, **params)
