"""Every searcher declares one frozen, typed parameters record, read from plain data with one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from layerbudget.errors import LayerbudgetError, Record
from layerbudget.search.evolution import EvolutionParams
from layerbudget.search.registry import known_searchers, read_params, searcher_class


@pytest.mark.parametrize("name", known_searchers())
def test_every_searcher_declares_a_frozen_record_with_defaults(name):
    params = searcher_class(name).Params
    assert dataclasses.is_dataclass(params) and issubclass(params, Record)
    default = read_params(name, {})
    assert default == params()
    if dataclasses.fields(default):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(default, dataclasses.fields(default)[0].name, None)
    with pytest.raises(LayerbudgetError, match=rf"^unknown parameter\(s\) search.params.{name}.bogus; known: "):
        read_params(name, {"bogus": 1}, f"search.params.{name}")


def test_lists_become_tuples_and_integers_numbers():
    p = read_params("evolution", {"stages": [[2, 1], [1, 0]], "generations": 3})
    assert p.stages == ((2, 1), (1, 0)) and p.generations == 3
    assert read_params("ilp", {"time_limit": 30}).time_limit == 30.0
    assert read_params("owl", {"lambdas": [0, 0.1]}).lambdas == (0.0, 0.1)


def test_the_hybrid_nests_the_evolutions_parameters_given_beside_its_own():
    p = read_params("hybrid", {"generations": 3, "offspring": 4, "neighbours": [0.9], "max_evaluations": 50})
    assert p.neighbours == (0.9,) and p.max_evaluations == 50
    assert p.evolution == EvolutionParams(generations=3, offspring=4)  # the hybrid's own cap stays its own
    with pytest.raises(LayerbudgetError, match="hybrid.stages must be a non-empty list"):
        read_params("hybrid", {"stages": []})
    with pytest.raises(LayerbudgetError, match="sets the evolution's start itself"):
        read_params("hybrid", {"init": "random"})


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("evolution", {"offspring": True}, "evolution.offspring must be an integer, but got True"),
        ("evolution", {"prescreen": 0}, "evolution.prescreen must be a positive integer, but got 0"),
        ("hybrid", {"tolerance": float("nan")}, "hybrid.tolerance must be a non-negative number"),
        ("optuna", {"sampler": "cmaes"}, "optuna.sampler must be one of 'nsga2', 'tpe', but got 'cmaes'"),
        ("dp", {"pair": "0.1"}, "dp.pair must be a list of numbers"),
        ("owl", {"lambdas": [0.9]}, "owl.lambdas must be a non-empty list of numbers in [0, 0.5]"),
        ("random", {"n": 2.5}, "random.n must be an integer, but got 2.5"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key(name, data, message):
    with pytest.raises(LayerbudgetError) as exc:
        read_params(name, data)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_a_record_built_in_code_is_checked_too():
    with pytest.raises(LayerbudgetError, match="evolution.offspring must be a positive integer, but got 0"):
        EvolutionParams(offspring=0)
    assert EvolutionParams(stages=[(1, 2)]).stages == ((1, 2),)  # normalised like plain data
