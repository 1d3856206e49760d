"""Options that do not fit some units are named, with how far they move a budget's achievable range."""

from __future__ import annotations

import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.options import parse_options
from layerbudget.problem import Budget
from layerbudget.profiles.database import load_or_build_database
from layerbudget.profiles.option_fit import (
    check_budget_fit,
    check_budgets_early,
    compact_names,
    find_misfits,
    fit_notes,
    shape_problem,
)
from layerbudget.profiles.profile import build_problem

G128 = ["dense", "rtn-b2-g128", "rtn-b3-g128", "rtn-b4-g128"]


@pytest.fixture(scope="module")
def k352(make_tiny):
    """A tiny Llama whose MLP down projections have K = 352 (no multiple of 64 or 128)."""
    return make_tiny("llama", hidden_size=128, intermediate_size=352, head_dim=32)


def test_compact_names_fold_block_indices():
    names = [f"model.layers.{i}.mlp.down_proj" for i in (0, 1, 2, 3, 6)] + ["model.layers.4.self_attn.o_proj", "lm_head"]
    assert compact_names(names) == "model.layers.{0-3,6}.mlp.down_proj, model.layers.4.self_attn.o_proj, lm_head"
    assert compact_names(["encoder.layer.0.output.dense", "encoder.layer.2.output.dense"]) == (
        "encoder.layer.{0,2}.output.dense"
    )


def test_misfits_name_the_options_units_reason_and_what_would_fit(k352):
    (misfit,) = find_misfits(k352, G128)
    assert misfit.options == ("rtn-b2-g128", "rtn-b3-g128", "rtn-b4-g128")
    assert misfit.units == ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj")
    assert str(misfit) == (
        "rtn-b2-g128, rtn-b3-g128, rtn-b4-g128 do not apply to model.layers.{0-1}.mlp.down_proj "
        "(group size 128 does not divide K=352; g32 or gch would fit)"
    )
    two_four = find_misfits(k352, ["dense", "magnitude-2:4", "rtn-b4-g32"])
    assert two_four == []  # 352 and 128 are multiples of 4 and of 32


def test_shape_problem_equals_the_databases_problem(k352, tmp_path):
    db, _ = load_or_build_database(k352, parse_options(G128), tmp_path, progress=False)
    from_db, from_shapes = build_problem(k352, db, G128), shape_problem(k352, G128)
    assert [s.options for s in from_db.slots] == [s.options for s in from_shapes.slots]
    assert from_db.metric_range("avg_bits") == from_shapes.metric_range("avg_bits")
    assert shape_problem(k352, G128, every=True).metric_range("avg_bits")[0] < from_db.metric_range("avg_bits")[0]


def test_notes_before_searching_say_how_the_range_moves(k352):
    lines = fit_notes(k352, G128, [Budget.from_dict({"avg_bits": 6.0})])
    assert len(lines) == 2 and lines[0].startswith("rtn-b2-g128, rtn-b3-g128, rtn-b4-g128 do not apply to")
    lo = shape_problem(k352, G128).metric_range("avg_bits")[0]
    assert lines[1].startswith(f"those units keep to the other options, so avg_bits ranges from {lo:.6g} to 16 "
                               "instead of from about 2.25")
    assert fit_notes(k352, ["dense", "rtn-b4-g32"], [Budget.from_dict({"avg_bits": 6.0})]) == []
    # a budget on a metric the misfits do not move gets the misfit lines only
    assert len(fit_notes(k352, G128, [Budget.from_dict({"dropped": 0})])) == 1


def test_infeasible_budget_error_says_which_options_were_lost_where(k352):
    problem = shape_problem(k352, G128)
    with pytest.raises(LayerbudgetError) as info:
        check_budget_fit(problem, Budget.from_dict({"avg_bits": 3.0}), k352, G128)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("budget avg_bits<=3 is infeasible: with these options avg_bits ranges from ")
    assert "do not apply to model.layers.{0-1}.mlp.down_proj (group size 128 does not divide K=352; g32 or gch" in message
    assert message.endswith("if they applied, avg_bits would range from about 2.25556 to 16")
    # without misfits the error is the problem's own
    names = ["dense", "rtn-b2-g32"]
    with pytest.raises(LayerbudgetError, match=r"avg_bits ranges from 3 to 16$"):
        check_budget_fit(shape_problem(k352, names), Budget.from_dict({"avg_bits": 2.0}), k352, names)


def test_budgets_are_checked_from_the_shapes_before_any_build(k352, make_tiny):
    check_budgets_early(k352, G128, [Budget.from_dict({"avg_bits": 8.0})])
    with pytest.raises(LayerbudgetError, match="is infeasible"):
        check_budgets_early(k352, G128, [Budget.from_dict({"avg_bits": 8.0}), Budget.from_dict({"avg_bits": 3.0})])
    post_ln = make_tiny("opt", do_layer_norm_before=False)  # dropping is not the identity: no sub-blocks
    with pytest.raises(LayerbudgetError, match="needs droppable sub-blocks"):
        check_budgets_early(post_ln, ["dense", "drop"], [Budget.from_dict({"dropped": 1})])
    # latency budgets need the latency table: they are left to the later check
    check_budgets_early(k352, G128, [Budget.from_dict({"latency_us": 0.001})])
