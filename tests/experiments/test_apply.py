"""`compress_`, `layerbudget apply` (reproduce a plan's fitness), plans for other models, shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from smallrun import small_run_toml

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.apply import check_plan, compress_, reproduce
from layerbudget.experiments.cli import main
from layerbudget.experiments.config import config_from_dict, load_config
from layerbudget.plan import Plan
from layerbudget.search.registry import known_searchers
from layerbudget.storage import package_dir

SMALL = small_run_toml("apply")
EXPERIMENTS = package_dir("layerbudget.experiments")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from layerbudget.experiments.runner import run_experiment

    root = tmp_path_factory.mktemp("apply")
    (root / "small.toml").write_text(SMALL)
    run_experiment(load_config(root / "small.toml"), out=root / "run", progress=False, log=lambda m: None)
    return root / "run"


def edited(plan: Plan, **fields) -> Plan:
    return dataclasses.replace(plan, **fields)


# ----- apply: reproduce a plan --------------------------------------------------------------------
def test_apply_reproduces_the_plans_fitness(run_dir, capsys):
    assert main(["apply", str(run_dir / "plan.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    plan = Plan.load(run_dir / "plan.json")
    assert f"plan {plan.measured['fitness']:.6g}" in out and "(held-out)" in out and "reproduced: relative difference" in out


def test_reproduce_every_plan_of_the_run(run_dir):
    """compress_ + full forward passes give the evaluator's numbers for every searcher and budget."""
    for path in sorted((run_dir / "plans").glob("*.json")):
        plan = Plan.load(path)
        cfg = config_from_dict(plan.provenance["config"])
        got = reproduce(plan, cfg)
        assert got.same_calibration
        assert got.rel_diff(plan.measured["fitness"]) <= 1e-4, path.name
        assert got.heldout == pytest.approx(plan.measured["heldout"], rel=1e-4), path.name


def test_apply_reports_a_fitness_mismatch(run_dir, tmp_path, capsys):
    plan = Plan.load(run_dir / "plan.json")
    bad = edited(plan, measured={**plan.measured, "fitness": plan.measured["fitness"] * 1.01})
    bad.save(tmp_path / "plan.json")
    assert main(["apply", str(tmp_path), "--quiet"]) == 1  # a directory holding plan.json works too
    captured = capsys.readouterr()
    assert "reproduced" in captured.out
    err = captured.err.strip()
    assert err.startswith("error: reproduced fitness differs") and "\n" not in err


@pytest.mark.parametrize("what", ["weight hash", "unit names"])
def test_apply_plan_for_a_different_model(what, run_dir, tmp_path, capsys):
    plan = Plan.load(run_dir / "plan.json")
    if what == "weight hash":
        bad = edited(plan, model={**plan.model, "weight_hash": "f" * 64})
    else:
        bad = edited(plan, units={u.replace("encoder.layer", "model.layers"): o for u, o in plan.units.items()})
    bad.save(tmp_path / "plan.json")
    assert main(["apply", str(tmp_path / "plan.json"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the plan is for a different model") and "\n" not in err, err


def test_apply_to_another_model_directory(run_dir, minilm, tmp_path, capsys):
    """MODEL replaces the plan's model: fine-tuned weights (same names and shapes) are refused too."""
    model_dir = tmp_path / "tuned"
    state = {k: v.clone() for k, v in minilm.model.state_dict().items()}
    try:
        with torch.no_grad():
            minilm.model.encoder.layer[0].attention.self.query.weight.mul_(1.01)
        minilm.model.save_pretrained(model_dir)
        minilm.tokenizer.save_pretrained(model_dir)
    finally:
        minilm.model.load_state_dict(state)
    assert main(["apply", str(run_dir / "plan.json"), str(model_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the plan is for a different model: its weight hash" in err and "\n" not in err


def test_apply_bad_inputs(run_dir, tmp_path, capsys):
    assert main(["apply", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    plan = Plan.load(run_dir / "plan.json")
    edited(plan, provenance={}).save(tmp_path / "bare.json")
    assert main(["apply", str(tmp_path / "bare.json")]) == 2
    assert "pass --config" in capsys.readouterr().err
    assert main(["apply", str(run_dir / "plan.json"), "--tolerance", "-1"]) == 2
    assert "--tolerance" in capsys.readouterr().err


# ----- compress_ ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(run_dir):
    from layerbudget.experiments.prepare import prepare

    return prepare(config_from_dict(Plan.load(run_dir / "plan.json").provenance["config"]), progress=False)


def _plan(adapter, option: str, **overrides: str) -> Plan:
    units = {u.name: option for u in adapter.units}
    units.update(overrides)
    return Plan(model={"id": adapter.model_id, "weight_hash": adapter.weight_hash(), "family": adapter.spec.name},
                units=units)


def test_compress_without_database_equals_database_weights(prepared):
    adapter, db = prepared.adapter, prepared.database
    unit = adapter.units[5].name
    for option in ("rtn-b2-g64", "magnitude-2:4+rtn-b4-g64", "magnitude-0.5"):
        try:
            compress_(adapter, _plan(adapter, option))
            w = adapter.model.get_submodule(unit).weight.detach().clone()
        finally:
            adapter.restore()
        assert torch.equal(w, db.weight(unit, option)), option


def test_compress_then_restore_is_the_dense_model(prepared):
    adapter = prepared.adapter
    ids = prepared.tokens.calib[:2]
    dense = adapter.forward(ids)
    plan = _plan(adapter, "rtn-b2-g64", **{u: "drop" for u in adapter.subblocks[0].units})
    plan = edited(plan, dropped=(adapter.subblocks[0].name,))
    compressed = compress_(adapter, plan, prepared.database).forward(ids)
    adapter.restore()
    assert (compressed - dense).abs().max() > 1e-3
    torch.testing.assert_close(adapter.forward(ids), dense, rtol=0, atol=0)


def test_compress_on_a_plain_hf_model(make_tiny):
    adapter = make_tiny("llama")
    model = adapter.model
    plan = _plan(adapter, "rtn-b4-g32")
    out = compress_(model, plan)  # an nn.Module: the family comes from config.model_type
    assert out.model is model and out.spec.name == "llama"


@pytest.mark.parametrize(
    "change, message",
    [
        ("gptq", "needs calibration statistics"),
        ("tie", "tied units"),
        ("drop without sub-block", "but its sub-block is kept"),
        ("unknown sub-block", "not a droppable sub-block"),
        ("option does not apply", "does not apply"),
    ],
)
def test_compress_refuses_bad_plans(change, message, prepared):
    adapter = prepared.adapter
    q, k = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"
    plan = _plan(adapter, "rtn-b4-g128")
    if change == "gptq":
        plan = _plan(adapter, "gptq-b4-g128")
    elif change == "tie":
        plan = _plan(adapter, "rtn-b4-g128", **{k: "rtn-b2-g64"})
    elif change == "drop without sub-block":
        plan = _plan(adapter, "rtn-b4-g128", **{q: "drop"})
    elif change == "unknown sub-block":
        plan = edited(plan, dropped=("encoder.layer.9.mlp",))
    else:
        plan = _plan(adapter, "rtn-b4-g100")
    with pytest.raises(LayerbudgetError, match=message):
        compress_(adapter, plan)
    torch.testing.assert_close(adapter.dense_weight(q), adapter.model.get_submodule(q).weight)


def test_check_plan_refuses_a_database_of_another_model(prepared, make_tiny):
    tiny = make_tiny("bert")
    plan = _plan(tiny, "rtn-b4-g32")
    check_plan(tiny, plan)
    with pytest.raises(LayerbudgetError, match="built for another model"):
        check_plan(tiny, plan, prepared.database)


# ----- configs ------------------------------------------------------------------------------------
SHIPPED = sorted(p.name for p in EXPERIMENTS.glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name):
    cfg = load_config(EXPERIMENTS / name)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_searcher_parameters_are_accepted(name):
    """Every searcher of every shipped config accepts its parameters (on a small synthetic problem)."""
    from layerbudget.problem import Problem, Slot
    from layerbudget.search.registry import make_searcher

    cfg = load_config(EXPERIMENTS / name)
    options = tuple(o for o in ("dense", *cfg.options.names) if o != "drop")
    depth = "drop" in cfg.options.names
    slots = []
    for i in range(6):
        sub = f"b{i}" if depth else None
        if depth:
            slots.append(Slot(sub, ("keep", "drop"), ((f"u{i}", (256, 1024)),), block=i, is_subblock=True))
        slots.append(Slot(f"u{i}", options, ((f"u{i}", (256, 1024)),), block=i, subblock=sub))
    problem = Problem(slots)
    if depth:
        problem.set_feature("block_influence", {f"b{i}": 0.1 * (i + 1) for i in range(6)})
    problem.set_feature("outlier_ratio", {f"u{i}": 0.01 * (i + 1) for i in range(6)})
    for searcher in cfg.search.searchers:
        for budget in cfg.budget:
            make_searcher(searcher, problem, budget, seed=0, **dict(cfg.search.params.get(searcher, {})))


def test_compare_configs_run_every_searcher():
    configs = [load_config(EXPERIMENTS / n) for n in ("compare.toml", "compare_depth.toml", "compare_sparsity.toml")]
    covered = {s for cfg in configs for s in cfg.search.searchers}
    missing = sorted(set(known_searchers()) - covered)
    assert not missing, f"add {missing} to one of experiments/compare*.toml"
    assert all(len(cfg.budget) >= 3 for cfg in configs)


def test_minilm_joint_and_llama_configs_cover_their_options():
    joint = load_config(EXPERIMENTS / "minilm_joint.toml")
    names = " ".join(joint.options.names)
    for part in ("rtn-b", "gptq-b", "magnitude-0.", "wanda-", "2:4", "drop"):
        assert part in names, part
    assert all(set(b.to_dict()) == {"avg_bits"} for b in joint.budget) and len(joint.budget) >= 2
    llama = load_config(EXPERIMENTS / "llama_gpu.toml")
    assert llama.model.device == "cuda" and llama.search.fitness == "kl"
    assert "model.id" in (EXPERIMENTS / "llama_gpu.toml").read_text().split("[model]")[0]  # documented up front


@pytest.mark.parametrize(
    "budgets, message",
    [
        ([4.0, 3.0, 3.5], "must be sorted"),
        ([3.0, 4.0, 3.0], "twice"),
        ([3.0, 3.0], "twice"),
    ],
    ids=["unsorted", "duplicate", "repeated"],
)
def test_budget_sweep_must_be_sorted_without_duplicates(budgets, message, tmp_path, capsys):
    with pytest.raises(LayerbudgetError, match=message):
        config_from_dict({"budget": [{"avg_bits": b} for b in budgets]})
    text = SMALL.replace("[[budget]]\navg_bits = 4.0\n[[budget]]\navg_bits = 6.0\n",
                         "".join(f"[[budget]]\navg_bits = {b}\n" for b in budgets))
    (tmp_path / "sweep.toml").write_text(text)
    assert main(["run", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "run").exists()
