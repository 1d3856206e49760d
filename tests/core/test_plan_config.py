"""Plan JSON round trip and validation; config loading, defaults and validation."""

from __future__ import annotations

import json
import math

import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.config import config_from_dict, load_config
from layerbudget.plan import PLAN_SCHEMA, Plan


def make_plan(**over) -> Plan:
    kw = dict(
        model={"id": "m", "weight_hash": "ab" * 32, "family": "bert"},
        units={"a.q": "rtn-b4-g128", "a.k": "rtn-b4-g128", "b.up": "drop"},
        dropped=("b.mlp",),
        searcher="ilp",
        budget={"avg_bits": 3.5},
        predicted={"avg_bits": 3.25, "proxy": 0.1},
        measured={"fitness": 0.2, "heldout": math.nan},
        provenance={"seed": 3, "config": {"x": [1, 2]}},
    )
    kw.update(over)
    return Plan(**kw)


def test_plan_round_trip(tmp_path):
    plan = make_plan()
    plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["schema"] == PLAN_SCHEMA and data["version"] == 1
    assert data["measured"]["heldout"] is None  # NaN is written as null, never as invalid JSON
    back = Plan.load(tmp_path / "plan.json")
    assert back.units == plan.units and back.dropped == plan.dropped and back.provenance == plan.provenance
    assert math.isnan(back.measured["heldout"]) and back.measured["fitness"] == 0.2
    assert plan.compressed_units == {"a.q": "rtn-b4-g128", "a.k": "rtn-b4-g128"}


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(schema="other"), "not a layerbudget plan"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d["units"].update({"x": "rtn-b9-g1"}), "supported bits"),
        (lambda d: d.update(units={}), "at least one unit"),
        (lambda d: d["measured"].update(fitness="low"), "must be a number"),
        (lambda d: d["model"].pop("weight_hash"), "weight_hash"),
    ],
)
def test_plan_validation(tmp_path, edit, message):
    data = make_plan().to_dict()
    edit(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(LayerbudgetError, match=message):
        Plan.load(tmp_path / "p.json")


def test_plan_load_errors(tmp_path):
    with pytest.raises(LayerbudgetError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayerbudgetError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")


def test_config_round_trip_and_sections():
    cfg = config_from_dict(
        {
            "name": "x",
            "seed": 7,
            "data": {"seq_len": 64},
            "budget": [{"avg_bits": 3.0, "bytes": 2e7}, {"avg_bits": 2.5, "bytes": 1e7}],
            "search": {"searchers": ["ilp"], "params": {"ilp": {"time_limit": 5}}},
        }
    )
    assert cfg.data.seq_len == 64 and cfg.data.calib_windows == 16
    assert [b.to_dict() for b in cfg.budget] == [{"avg_bits": 3.0, "bytes": 2e7}, {"avg_bits": 2.5, "bytes": 1e7}]
    assert config_from_dict(cfg.to_dict()) == cfg
    assert load_config() == config_from_dict(load_config().to_dict())


@pytest.mark.parametrize(
    "data,message",
    [
        ({"bogus": 1}, "unknown config key(s) bogus"),
        ({"data": {"seq_len": "x"}}, "data.seq_len must be an integer, but got 'x'"),
        ({"data": {"seq_len": True}}, "data.seq_len must be an integer, but got True"),
        ({"search": {"params": {"hybrid": {"generatoins": 3}}}}, "unknown parameter(s) search.params.hybrid.generatoins"),
        ({"search": {"params": {"evolution": {"stages": [[1, "x"]]}}}}, "search.params.evolution.stages must be"),
        ({"search": {"params": {"ilp": {"solver": "gurobi"}}}}, "search.params.ilp.solver must be one of 'cbc', 'highs'"),
        ({"data": {"seq_len": 0}}, "data.seq_len must be a positive integer"),
        ({"data": {"heldout_fraction": 1.5}}, "heldout_fraction"),
        ({"data": 3}, "section [data] must be a table"),
        ({"options": {"names": ["rtn-b4-g128", 3]}}, "options.names must be a list of strings"),
        ({"options": {"names": []}}, "at least one option"),
        ({"search": {"searchers": ["x"]}}, "unknown searcher 'x'"),
        ({"search": {"fitness": "mse"}}, "unknown fitness 'mse'"),
        ({"seed": -1}, "non-negative"),
        ({"budget": []}, "one or more tables"),
        ({"budget": [{"avg_bits": "low"}]}, "finite number"),
        ({"model": {"dtype": "int8"}}, "model.dtype"),
        ({"budget": [{"avg_bits": 3.0}, {"avg_bits": 3.0}]}, "lists a budget twice"),
        ({"budget": [{"avg_bits": 3.0}, {"avg_bits": 4.0}, {"avg_bits": 3.5}]}, "must be sorted"),
        ({"budget": [{"avg_bits": 3.0}, {"bytes": 4.0}]}, "same metrics"),
    ],
)
def test_config_errors(data, message):
    with pytest.raises(LayerbudgetError) as exc:
        config_from_dict(data)
    assert message in str(exc.value)


def test_bad_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("name = [")
    with pytest.raises(LayerbudgetError, match="not valid TOML"):
        load_config(p)
