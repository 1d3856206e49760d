"""Exports: llm-compressor recipes, GPTQModel configs, packed checkpoints that match the searched model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from smallrun import small_run_toml
from stored import stored_reference

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.apply import compress_
from layerbudget.experiments.cli import main
from layerbudget.experiments.export import (
    export_checkpoint,
    export_gptqmodel,
    export_llmcompressor,
    gptqmodel_config,
    llmcompressor_recipe,
    unit_regex,
)
from layerbudget.experiments.packed_checkpoint import load_compressed
from layerbudget.kernels.modules import QuantLinear, Sparse24QuantLinear, SparseLinear
from layerbudget.plan import Plan

SMALL = small_run_toml("export")
# one option per tie group, in turn; every kernel format and both dense fallbacks appear
CYCLE = ["rtn-b4-g128", "rtn-b2-g64", "magnitude-2:4", "magnitude-2:4+rtn-b4-g64", "rtn-b5-g128", "magnitude-0.5"]
DROPPED = ("encoder.layer.4.attn", "encoder.layer.5.mlp")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(run directory, prepared state) of the small experiment; the database is cached for the session."""
    from layerbudget.experiments.config import load_config
    from layerbudget.experiments.prepare import prepare
    from layerbudget.experiments.runner import run_experiment

    root = tmp_path_factory.mktemp("export")
    (root / "small.toml").write_text(SMALL)
    cfg = load_config(root / "small.toml")
    run_experiment(cfg, out=root / "run", progress=False, log=lambda m: None)
    return root / "run", prepare(cfg, progress=False)


def mixed_plan(adapter, dropped=DROPPED) -> Plan:
    units = {}
    for i, group in enumerate(adapter.groups):
        for u in group.units:
            units[u.name] = CYCLE[i % len(CYCLE)]
    for sb in adapter.subblocks:
        if sb.name in dropped:
            units.update(dict.fromkeys(sb.units, "drop"))
    model = {"id": adapter.model_id, "weight_hash": adapter.weight_hash(), "family": adapter.spec.name}
    return Plan(model=model, units=units, dropped=tuple(dropped), searcher="manual", budget={"avg_bits": 6.0})


def llama_plan(**changes: str) -> Plan:
    """A plan for a 2-block Llama (no model needed: exports that only write configs read names)."""
    leaves = {"self_attn.q_proj": "rtn-b4-g128", "self_attn.k_proj": "rtn-b4-g128", "self_attn.v_proj": "rtn-b4-g128",
              "self_attn.o_proj": "gptq-b8-g128", "mlp.gate_proj": "gptq-b2-g64", "mlp.up_proj": "gptq-b2-g64",
              "mlp.down_proj": "rtn-b4-g128"}
    units = {f"model.layers.{b}.{p}": o for b in range(2) for p, o in leaves.items()}
    units.update(changes)
    return Plan(model={"id": "tiny-llama", "weight_hash": "0" * 64, "family": "llama"}, units=units)


# ----- packed checkpoint --------------------------------------------------------------------------
def test_checkpoint_matches_compressed_model(setup, tmp_path):
    _, prep = setup
    adapter, db = prep.adapter, prep.database
    plan = mixed_plan(adapter)
    exported = export_checkpoint(plan, adapter, db, tmp_path / "ckpt")
    ids = prep.tokens.calib
    dense = adapter.forward(ids)  # export_checkpoint restored the dense model
    model = load_compressed(tmp_path / "ckpt")
    with torch.inference_mode():
        out = model(input_ids=ids).last_hidden_state
    ref = stored_reference(adapter, plan, db).forward(ids)  # the searched weights, the rest at fp16
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - dense).abs().max() > 1e-2

    layer = model.encoder.layer
    assert isinstance(layer[0].attention.self.query, QuantLinear) and layer[0].attention.self.query.bits == 4
    assert isinstance(layer[0].attention.output.dense, QuantLinear) and layer[0].attention.output.dense.bits == 2
    assert isinstance(layer[0].intermediate, torch.nn.Module) and isinstance(layer[0].intermediate.dense, SparseLinear)
    assert isinstance(layer[0].output.dense, Sparse24QuantLinear)
    assert type(layer[1].attention.self.query) is torch.nn.Linear  # 5-bit: decoded to a dense weight
    assert type(layer[4].attention.output).__name__ == "ResidualPassthrough"  # dropped attention

    manifest = json.loads((tmp_path / "ckpt" / "layerbudget_checkpoint.json").read_text())
    formats = {e["option"]: e["format"] for e in manifest["units"].values()}
    assert formats == {"rtn-b4-g128": "lowbit", "rtn-b2-g64": "lowbit", "magnitude-2:4": "sparse24",
                       "magnitude-2:4+rtn-b4-g64": "sparse24_quant", "rtn-b5-g128": "variant",
                       "magnitude-0.5": "variant", "drop": "drop"}
    notes = " ".join(manifest["notes"])
    assert "5-bit" in notes and "unstructured sparsity" in notes and any("encoding" in n for n in exported.notes)
    with safe_open(str(tmp_path / "ckpt" / "layerbudget.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("embeddings.word_embeddings.weight").dtype == torch.float16  # as the plan counts it
        assert f.get_tensor("encoder.layer.0.attention.self.query.bias").dtype == torch.float16
    q = "encoder.layer.0.attention.self.query"
    assert {f"{q}.packed", f"{q}.scales", f"{q}.zeros", f"{q}.bias"} <= keys and f"{q}.weight" not in keys
    assert not any(k.startswith("encoder.layer.4.attention.output.") for k in keys)
    assert Plan.load(tmp_path / "ckpt" / "layerbudget_plan.json") == plan
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]["quant_method"] == "layerbudget"


def test_checkpoint_refuses_to_replace_a_foreign_directory(setup, tmp_path):
    _, prep = setup
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(LayerbudgetError, match="not a layerbudget checkpoint"):
        export_checkpoint(mixed_plan(prep.adapter), prep.adapter, prep.database, out)
    assert (out / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
def test_checkpoint_round_trip_on_causal_families(kind, make_tiny, tmp_path):
    """Packed Linear modules replace Linear and GPT-2 Conv1D alike; options without calibration need no database."""
    adapter = make_tiny(kind)
    options = ["rtn-b4-g32", "magnitude-2:4", "rtn-b3-g32", "magnitude-2:4+rtn-b8-g32", "rtn-b6-g32"]
    units = {u.name: options[i % len(options)] for i, g in enumerate(adapter.groups) for u in g.units}
    sb = adapter.subblocks[-1]
    units.update(dict.fromkeys(sb.units, "drop"))
    plan = Plan(model={"id": kind, "weight_hash": adapter.weight_hash(), "family": adapter.spec.name},
                units=units, dropped=(sb.name,))
    export_checkpoint(plan, adapter, None, tmp_path / "ckpt")
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = stored_reference(adapter, plan, None).forward(ids)
    with torch.inference_mode():
        out = load_compressed(tmp_path / "ckpt")(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoint_on_gpu_matches_compressed_model(tmp_path):
    """fp16 on CUDA: packed units run the Triton kernels (small M) and match the fake-quantized model."""
    from layerbudget.kernels.ops import choose_path, triton_available
    from layerbudget.model import load_model

    adapter = load_model(dtype="float16")
    plan = mixed_plan(adapter, dropped=("encoder.layer.5.mlp",))
    units = {u: ("rtn-b4-g128" if o == "rtn-b5-g128" else o) for u, o in plan.units.items()}  # no database needed
    plan = Plan(plan.model, units, dropped=plan.dropped)
    export_checkpoint(plan, adapter, None, tmp_path / "ckpt")
    model = load_compressed(tmp_path / "ckpt", device="cuda")
    ids = torch.randint(1000, 20000, (2, 32), generator=torch.Generator().manual_seed(0))
    if triton_available():
        assert choose_path(torch.zeros(64, 384, dtype=torch.float16, device="cuda"), "lowbit") == "triton"
    with torch.inference_mode():
        out = model(input_ids=ids.cuda()).last_hidden_state.float()
        adapter.model.cuda()
        ref = compress_(adapter, plan).forward(ids).float()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_checkpoint_needs_database_for_calibrated_options(setup, tmp_path):
    _, prep = setup
    plan = mixed_plan(prep.adapter, dropped=())
    units = {u: ("gptq-b4-g128" if o != "drop" else o) for u, o in plan.units.items()}
    with pytest.raises(LayerbudgetError, match="needs calibration statistics"):
        export_checkpoint(Plan(plan.model, units), prep.adapter, None, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


# ----- llm-compressor -----------------------------------------------------------------------------
def _units_of(targets: list[str], names: list[str]) -> list[str]:
    """Unit names each ``re:`` target matches (every target must match exactly one)."""
    out = []
    for t in targets:
        assert t.startswith("re:"), t
        hits = [n for n in names if re.match(t[3:], n)]
        assert len(hits) == 1, (t, hits)
        out.append(hits[0])
    return out


def test_llmcompressor_recipe_groups_units_by_scheme(setup, tmp_path):
    _, prep = setup
    plan = mixed_plan(prep.adapter)
    names = list(plan.units)
    exported = export_llmcompressor(plan, tmp_path / "recipe.yaml", model=prep.adapter, allow_drop=True)
    text = exported.path.read_text()
    assert text.startswith("# layerbudget plan for sentence-transformers/all-MiniLM-L6-v2")
    assert "encoder.layer.4.attn, encoder.layer.5.mlp" in text.split("sparsity_stage")[0]
    recipe = yaml.safe_load(text)
    assert recipe == llmcompressor_recipe(plan, allow_drop=True)[0]

    quant = recipe["quantization_stage"]["rtn_modifiers"]["QuantizationModifier"]
    seen = {}
    for group in quant["config_groups"].values():
        w = group["weights"]
        assert w["type"] == "int" and w["symmetric"] is False and w["strategy"] == "group"
        for unit in _units_of(group["targets"], names):
            seen[unit] = (w["num_bits"], w["group_size"])
    expected = {u: (4, 128) if o == "rtn-b4-g128" else (2, 64) if o == "rtn-b2-g64" else (5, 128) if o == "rtn-b5-g128"
                else (4, 64) for u, o in plan.units.items() if "rtn" in o}
    assert seen == expected
    assert quant["ignore"][0] == "lm_head"
    assert set(_units_of(quant["ignore"][1:], names)) == {u for u, o in plan.units.items() if o in ("dense", "drop")}

    stage = recipe["sparsity_stage"]
    two4 = stage["sparsegpt_2of4_modifiers"]["SparseGPTModifier"]
    assert two4["mask_structure"] == "2:4"  # a string, not the YAML 1.1 sexagesimal 124
    assert two4["sparsity"] == [0.5] * len(two4["targets"])
    targets = _units_of(two4["targets"], names)
    assert targets == [u for u in names if "2:4" in plan.units[u]]  # model order: sparsities pair with targets
    unstructured = stage["sparsegpt_unstructured_modifiers"]["SparseGPTModifier"]
    assert unstructured["mask_structure"] == "0:0" and set(unstructured["sparsity"]) == {0.5}
    assert any("SparseGPTModifier" in n for n in exported.notes)


def test_llmcompressor_sparsity_list_follows_model_order():
    plan = llama_plan(**{"model.layers.1.mlp.down_proj": "sparsegpt-0.7", "model.layers.0.mlp.down_proj": "sparsegpt-0.3",
                         "model.layers.0.self_attn.o_proj": "wanda-0.5"})
    units = dict(plan.units)
    shuffled = Plan(plan.model, dict(reversed(list(units.items()))))  # plan order need not be model order
    recipe, _ = llmcompressor_recipe(shuffled)
    mod = recipe["sparsity_stage"]["sparsegpt_unstructured_modifiers"]["SparseGPTModifier"]
    assert mod["sparsity"] == [0.3, 0.7]
    assert _units_of(mod["targets"], list(units)) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert "WandaPruningModifier" in recipe["sparsity_stage"]["wanda_unstructured_modifiers"]
    gptq = recipe["quantization_stage"]["gptq_modifiers"]["GPTQModifier"]["config_groups"]
    assert {g["weights"]["num_bits"] for g in gptq.values()} == {8, 2}


def test_llmcompressor_refuses_drops_without_allow_drop(setup, tmp_path):
    _, prep = setup
    with pytest.raises(LayerbudgetError, match="--allow-drop"):
        export_llmcompressor(mixed_plan(prep.adapter), tmp_path / "r.yaml", model=prep.adapter)
    assert not (tmp_path / "r.yaml").exists()


def test_llmcompressor_real_parser_accepts_recipe(setup, tmp_path):
    """Only where llm-compressor is installed (it pins its own transformers; see the export notes)."""
    pytest.importorskip("llmcompressor")
    from llmcompressor.recipe import Recipe

    _, prep = setup
    path = export_llmcompressor(mixed_plan(prep.adapter), tmp_path / "recipe.yaml", model=prep.adapter,
                                allow_drop=True).path
    names = [type(m).__name__ for m in Recipe.create_instance(str(path)).modifiers]
    assert names == ["SparseGPTModifier", "SparseGPTModifier", "QuantizationModifier"]


# ----- GPTQModel ----------------------------------------------------------------------------------
def test_gptqmodel_config_defaults_and_dynamic_rules(make_tiny, tmp_path):
    tiny = make_tiny("llama")  # hidden 32: groups of 32 fit, 128/64 would not; the rules are what is tested
    plan = llama_plan(**{"model.layers.1.mlp.gate_proj": "dense", "model.layers.1.mlp.up_proj": "dense",
                         "model.layers.0.mlp.down_proj": "gptq-b3-gch"})
    plan = Plan({**plan.model, "weight_hash": tiny.weight_hash()},
                {u: o.replace("-g128", "-g32").replace("-g64", "-g16") for u, o in plan.units.items()})
    path = export_gptqmodel(plan, tmp_path, model=tiny).path
    assert path == tmp_path / "quantize_config.json"
    cfg = json.loads(path.read_text())
    assert (cfg["bits"], cfg["group_size"], cfg["sym"], cfg["quant_method"]) == (4, 32, False, "gptq")
    assert cfg["act_group_aware"] is False  # GPTQModel's default (True) refuses per-channel modules

    def rule(name: str) -> tuple[str, dict] | None:  # first match wins, as in GPTQModel and vLLM
        for key, value in cfg["dynamic"].items():
            if re.match(key.removeprefix("-:").removeprefix("+:"), name):
                return key, value
        return None

    assert rule("model.layers.0.self_attn.q_proj") is None  # the default scheme
    assert rule("model.layers.0.self_attn.o_proj")[1] == {"bits": 8, "group_size": 32}
    for name in ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.gate_up_proj"):
        assert rule(name)[1] == {"bits": 2, "group_size": 16}, name  # HF names and vLLM's fused name
    assert rule("model.layers.0.mlp.down_proj")[1] == {"bits": 3, "group_size": -1}
    key, value = rule("model.layers.1.mlp.gate_up_proj")
    assert key.startswith("-:") and value == {}
    assert rule("model.layers.10.mlp.gate_proj") is None  # anchored: layer 1 does not match layer 10


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model.layers.0.self_attn.o_proj": "magnitude-2:4"}, "prunes with magnitude-2:4"),
        ({"model.layers.0.self_attn.o_proj": "rtn-b5-g128"}, "runs 2/3/4/8 bits"),
        ({"model.layers.0.self_attn.o_proj": "gptq-b6-g64"}, "6-bit"),
    ],
    ids=["sparse", "5-bit", "6-bit"],
)
def test_gptqmodel_refuses_what_vllm_gptq_cannot_run(change, message):
    with pytest.raises(LayerbudgetError, match=message):
        gptqmodel_config(llama_plan(**change))


# ----- validation shared by every export ----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["llmcompressor", "gptqmodel", "checkpoint"])
def test_every_export_refuses_broken_tie_groups(fmt, setup, tmp_path):
    _, prep = setup
    plan = mixed_plan(prep.adapter, dropped=())
    units = dict(plan.units)
    units["encoder.layer.0.attention.self.key"] = "rtn-b2-g64"  # query/value stay rtn-b4-g128
    broken = Plan(plan.model, units)
    export = {
        "llmcompressor": lambda: export_llmcompressor(broken, tmp_path / "r.yaml", model=prep.adapter),
        "gptqmodel": lambda: export_gptqmodel(broken, tmp_path, model=prep.adapter),
        "checkpoint": lambda: export_checkpoint(broken, prep.adapter, prep.database, tmp_path / "ckpt"),
    }[fmt]
    with pytest.raises(LayerbudgetError, match="tied units must share one option"):
        export()
    assert list(tmp_path.iterdir()) == []


def test_unit_regex_is_anchored_and_escaped():
    assert unit_regex(["a.b.c"]) == r"^a\.b\.c$"
    rx = unit_regex(["m.l.0.q_proj", "m.l.0.k_proj", "m.l.0.v_proj"], fused=True)
    assert rx == r"^m\.l\.0\.(?:q_proj|k_proj|v_proj|qkv_proj)$"
    assert not re.match(rx, "m.l.0.q_proj_extra") and not re.match(rx, "mXl.0.q_proj")


# ----- CLI ----------------------------------------------------------------------------------------
def test_cli_export_writes_default_paths(setup, tmp_path, capsys):
    run, prep = setup
    plan_file = tmp_path / "quant-only.json"
    units = {u: "rtn-b4-g128" for u in Plan.load(run / "plan.json").units}
    Plan(mixed_plan(prep.adapter).model, units).save(plan_file)
    assert main(["export", str(run), "--format", "gptqmodel", "--plan", str(plan_file)]) == 0
    assert json.loads((run / "export" / "quantize_config.json").read_text())["dynamic"] == {}
    assert main(["export", str(run), "--format", "llmcompressor", "--plan", "ilp-b1", "--allow-drop"]) == 0
    assert yaml.safe_load((run / "export" / "recipe.yaml").read_text())
    out = capsys.readouterr().out
    assert f"wrote {run / 'export' / 'recipe.yaml'}" in out


def test_cli_export_checkpoint_of_a_run(setup, tmp_path, capsys):
    run, prep = setup
    out = tmp_path / "ckpt"
    assert main(["export", str(run), "--format", "checkpoint", "--out", str(out), "--quiet"]) == 0
    assert "units by storage format" in capsys.readouterr().err
    model = load_compressed(out)
    assert Plan.load(out / "layerbudget_plan.json") == Plan.load(run / "plan.json")
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=prep.tokens.calib[:1]).last_hidden_state).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
        (["--format", "gptqmodel", "--plan", "nope.json"], "plan 'nope.json' not found"),
    ],
    ids=["unknown format", "missing plan"],
)
def test_cli_export_bad_arguments(args, message, setup, capsys):
    run, _ = setup
    assert main(["export", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_cli_lists_every_export_format():
    from layerbudget.experiments.cli import EXPORT_FORMATS
    from layerbudget.experiments.export import FORMATS, PLAN_EXPORTERS

    assert EXPORT_FORMATS == FORMATS and set(PLAN_EXPORTERS) | {"checkpoint", "compressed-tensors"} == set(FORMATS)


def test_cli_export_run_dir_without_plan(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--format", "llmcompressor"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no finished plan.json" in err and "\n" not in err


def test_cli_export_with_drops_needs_allow_drop(setup, tmp_path, capsys):
    run, prep = setup
    plan_file = tmp_path / "dropping.json"
    mixed_plan(prep.adapter).save(plan_file)
    args = ["export", str(run), "--format", "llmcompressor", "--plan", str(plan_file), "--out", str(tmp_path / "r.yaml")]
    assert main(args) == 2
    assert "--allow-drop" in capsys.readouterr().err
    assert main([*args, "--allow-drop"]) == 0
    assert "cannot drop sub-blocks" in capsys.readouterr().err
    assert Path(tmp_path / "r.yaml").is_file()
