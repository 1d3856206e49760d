"""Every searcher shipped with layerbudget, by name (importing this module registers them all), and
the reading of each searcher's parameters into its typed record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from layerbudget.errors import LayerbudgetError, Record, read_record
from layerbudget.problem import Budget, Problem
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


def known_searchers() -> list[str]:
    """The names of every registered searcher, sorted."""
    return sorted(registered_searchers())


def searcher_class(name: str) -> type[Searcher]:
    """The searcher registered as ``name``; an unknown name lists the known ones."""
    try:
        return registered_searchers()[name]
    except KeyError:
        raise LayerbudgetError(f"unknown searcher {name!r}; known: {', '.join(known_searchers())}") from None


def read_params(name: str, data: Mapping[str, Any], where: str | None = None) -> Record:
    """The parameters record of searcher ``name`` from plain data (e.g. ``[search.params.<name>]``).

    ``where`` names the table in errors (default: the searcher's name): an unknown key or a value
    of the wrong type or range is a one-line :class:`LayerbudgetError` naming ``where.key``.
    """
    return read_record(searcher_class(name).Params, data, where or name, what="parameter")


def make_searcher(
    name: str,
    problem: Problem,
    budget: Budget,
    *,
    seed: int = 0,
    params: Record | Mapping[str, Any] | None = None,
    **values: Any,
) -> Searcher:
    """A new searcher ``name`` for ``problem`` under ``budget``.

    Its parameters are ``params`` (a record of the searcher's ``Params`` type, or plain data read
    with :func:`read_params`), or the keyword ``values``.
    """
    cls = searcher_class(name)
    if params is None or isinstance(params, Mapping):
        params = read_params(name, {**(params or {}), **values})
    elif values:
        raise TypeError("make_searcher takes a parameters record or keyword values, not both")
    return cls(problem, budget, seed=seed, params=params)
