"""compressed-tensors export (through transformers and compressed-tensors' own code), every exporter's plan
check, and the project checkpoint as other loaders see it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from smallrun import small_run_toml
from stored import stored_reference

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.fitness import make_fitness
from layerbudget.experiments.apply import adapter_for, compress_
from layerbudget.experiments.cli import main
from layerbudget.experiments.export import export_compressed_tensors, llmcompressor_recipe
from layerbudget.experiments.export_ct import NAIVE_FORMAT, PACK_FORMAT, pack_codes
from layerbudget.experiments.packed_checkpoint import load_compressed
from layerbudget.options import parse_option
from layerbudget.plan import Plan

ct = pytest.importorskip("compressed_tensors")  # a dependency; the import names it for readers

SMALL = small_run_toml("export-ct")
CYCLE = ["rtn-b4-g128", "rtn-b2-g64", "magnitude-2:4", "magnitude-2:4+rtn-b4-g64", "rtn-b5-g128", "magnitude-0.5",
         "dense"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from layerbudget.experiments.config import load_config
    from layerbudget.experiments.prepare import prepare
    from layerbudget.experiments.runner import run_experiment

    root = tmp_path_factory.mktemp("export-ct")
    (root / "small.toml").write_text(SMALL)
    cfg = load_config(root / "small.toml")
    run_experiment(cfg, out=root / "run", progress=False, log=lambda m: None)
    return root / "run", prepare(cfg, progress=False)


def cycle_plan(adapter, options=CYCLE, dropped=()) -> Plan:
    units = {u.name: options[i % len(options)] for i, g in enumerate(adapter.groups) for u in g.units}
    for sb in adapter.subblocks:
        if sb.name in dropped:
            units.update(dict.fromkeys(sb.units, "drop"))
    model = {"id": adapter.model_id, "weight_hash": adapter.weight_hash(), "family": adapter.spec.name}
    return Plan(model=model, units=units, dropped=tuple(dropped))


def measure(forward, dense_forward, ids: torch.Tensor, fitness, batch: int = 4) -> float:
    num = den = 0.0
    for chunk in torch.split(ids, batch):
        n, d = fitness.partial(forward(chunk), fitness.reference(dense_forward(chunk)))
        num, den = num + n, den + d
    return num / den


# ----- the packed layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_codes_is_compressed_tensors_layout(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    gen = torch.Generator().manual_seed(bits)
    for cols in (32, 64, 96, 40, 7):  # whole words, straddling values, a padded tail
        codes = torch.randint(0, 1 << bits, (3, cols), generator=gen)
        signed = (codes - (1 << (bits - 1))).to(torch.int8)  # compressed-tensors' int8 codes
        assert torch.equal(pack_codes(codes, bits), pack_to_int32(signed, bits)), (bits, cols)
        along_rows = pack_codes(codes.t().contiguous(), bits).t().contiguous()  # zero points: packed along N
        assert torch.equal(along_rows, pack_to_int32(signed.t().contiguous().t(), bits, packed_dim=0))
        assert torch.equal(unpack_from_int32(pack_codes(codes, bits), bits, codes.shape), signed)


# ----- round trips ----------------------------------------------------------------------------------
def test_minilm_export_runs_in_transformers_with_the_plans_fitness(setup, tmp_path):
    """Every searched plan of the run without drops: the transformers model scores the plan's fitness."""
    from transformers import AutoModel

    run, prep = setup
    adapter, ids = prep.adapter, prep.tokens.calib
    checked = 0
    for path in sorted((run / "plans").glob("*.json")):
        plan = Plan.load(path)
        if plan.dropped or not plan.compressed_units:
            continue
        out = tmp_path / path.stem
        export_compressed_tensors(plan, adapter, prep.database, out, layout=NAIVE_FORMAT)
        model = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
        with torch.inference_mode():
            got = measure(lambda x, m=model: m(input_ids=x).last_hidden_state, adapter.forward, ids, prep.fitness)
        assert got == pytest.approx(plan.measured["fitness"], rel=1e-3), path.name
        checked += 1
    assert checked


def test_minilm_export_equals_the_searched_weights(setup, tmp_path):
    """Every kind of option (2/4/5-bit, 2:4, 2:4 + 4-bit, unstructured): outputs of the stored model."""
    from transformers import AutoModel

    _, prep = setup
    adapter, db, ids = prep.adapter, prep.database, prep.tokens.calib[:2]
    plan = cycle_plan(adapter)
    exported = export_compressed_tensors(plan, adapter, db, tmp_path / "ct", layout=NAIVE_FORMAT)
    model = AutoModel.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out, stored_reference(adapter, plan, db).forward(ids), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        planned = measure(lambda x: compress_(adapter, plan, db).forward(x), lambda x: adapter.restore() or
                          adapter.forward(x), ids, prep.fitness)
        adapter.restore()
        got = measure(lambda x: model(input_ids=x).last_hidden_state, adapter.forward, ids, prep.fitness)
    assert got == pytest.approx(planned, rel=1e-3)
    assert any("naive-quantized" in n for n in exported.notes)


def test_pack_quantized_tensors_decompress_to_the_searched_weights(setup, tmp_path):
    """compressed-tensors' own config parser and decompressor read back the searched variants exactly."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    _, prep = setup
    adapter, db = prep.adapter, prep.database
    plan = cycle_plan(adapter)
    exported = export_compressed_tensors(plan, adapter, db, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["dtype"] == "float16"
    qc = config["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["quantization_status"]) == ("compressed-tensors", PACK_FORMAT, "compressed")
    parsed = QuantizationConfig.model_validate(qc)
    tensors = load_file(str(tmp_path / "ct" / "model.safetensors"))
    seen = set()
    for scheme in parsed.config_groups.values():
        w = scheme.weights
        assert (w.type, w.symmetric, scheme.format) == ("int", False, PACK_FORMAT)
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        for target in scheme.targets:
            (unit,) = [u for u in plan.units if re.match(target.removeprefix("re:"), u)]
            assert re.match(target.removeprefix("re:"), f"bert.{unit}")  # a wrapped BertModel still matches
            opt = parse_option(plan.units[unit])
            assert (w.num_bits, w.group_size, w.strategy) == (opt.bits, opt.group_size,
                                                              "channel" if opt.group_size is None else "group")
            state = {k.removeprefix(unit + "."): v for k, v in tensors.items() if k.startswith(unit + ".")}
            state["weight_scale"] = state["weight_scale"].float()
            weight = compressor.decompress(state, scheme)["weight"]
            torch.testing.assert_close(weight, db.weight(unit, plan.units[unit]), rtol=0, atol=0)
            seen.add(unit)
    assert seen == {u for u, o in plan.units.items() if parse_option(o).bits is not None}
    ignored = {u for u in plan.units for t in qc["ignore"] if re.match(t.removeprefix("re:"), u)}
    assert ignored == set(plan.units) - seen
    two4 = {u for u in plan.units for t in qc["sparsity_config"]["targets"] if re.match(t.removeprefix("re:"), u)}
    assert two4 == {u for u, o in plan.units.items() if "2:4" in o}
    assert qc["sparsity_config"]["sparsity_structure"] == "2:4"
    assert any("naive-quantized writes a copy it runs" in n for n in exported.notes)


def test_tiny_llama_round_trip_with_a_dropped_sub_block(make_tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = make_tiny("llama")
    options = ["rtn-b4-g32", "rtn-b3-gch", "magnitude-2:4+rtn-b8-g16", "magnitude-0.5", "dense", "rtn-b6-g32"]
    plan = cycle_plan(adapter, options, dropped=("model.layers.1.attn",))
    with pytest.raises(LayerbudgetError, match="--allow-drop"):
        export_compressed_tensors(plan, adapter, None, tmp_path / "ct", layout=NAIVE_FORMAT)
    assert not (tmp_path / "ct").exists()
    exported = export_compressed_tensors(plan, adapter, None, tmp_path / "ct", layout=NAIVE_FORMAT, allow_drop=True)
    assert any("zero output projections" in n for n in exported.notes)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(logits, stored_reference(adapter, plan, None).forward(ids), rtol=1e-5, atol=1e-5)
    kl = make_fitness("kl", "causal")
    with torch.inference_mode():
        got = measure(lambda x: model(input_ids=x, use_cache=False).logits, adapter.forward, ids, kl)
        planned = measure(lambda x: compress_(adapter, plan).forward(x), lambda x: adapter.restore() or
                          adapter.forward(x), ids, kl)
    adapter.restore()
    assert got == pytest.approx(planned, rel=1e-3)


@pytest.mark.parametrize("case", ["bert drop", "gpt2", "foreign dir"])
def test_compressed_tensors_refusals(case, setup, make_tiny, tmp_path):
    _, prep = setup
    out = tmp_path / "ct"
    if case == "bert drop":
        adapter, db = prep.adapter, prep.database
        plan, match = cycle_plan(adapter, dropped=("encoder.layer.5.mlp",)), "post-LN"
    elif case == "gpt2":
        adapter, db = make_tiny("gpt2"), None
        plan, match = cycle_plan(adapter, ["rtn-b4-g32"]), "Conv1D"
    else:
        adapter, db = prep.adapter, prep.database
        plan, match = cycle_plan(adapter), "not a layerbudget compressed-tensors export"
        out.mkdir()
        (out / "keep.txt").write_text("x")
    with pytest.raises(LayerbudgetError, match=match):
        export_compressed_tensors(plan, adapter, db, out, allow_drop=True)
    assert not out.exists() or [p.name for p in out.iterdir()] == ["keep.txt"]


# ----- CLI: every format, and plans that do not fit the model ---------------------------------------
def test_cli_compressed_tensors_of_a_run(setup, tmp_path, capsys):
    run, prep = setup
    plan_file = tmp_path / "plan.json"
    plan = Plan.load(run / "plan.json")
    Plan(plan.model, {u: "rtn-b4-g128" for u in plan.units}, provenance=plan.provenance).save(plan_file)
    assert main(["export", str(run), "--format", "compressed-tensors", "--plan", str(plan_file), "--quiet"]) == 0
    out = run / "export" / "compressed-tensors"
    assert f"wrote {out}" in capsys.readouterr().out
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert list(qc["config_groups"]) == ["group_0"] and qc["ignore"] == []
    assert Plan.load(out / "layerbudget_plan.json").units == {u: "rtn-b4-g128" for u in plan.units}
    args = ["export", str(run), "--format", "gptqmodel", "--ct-format", "naive-quantized"]
    assert main(args) == 2
    assert "--ct-format applies to --format compressed-tensors only" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["llmcompressor", "gptqmodel", "checkpoint", "compressed-tensors"])
@pytest.mark.parametrize("what", ["unknown unit", "missing unit", "weight hash"])
def test_cli_every_export_refuses_a_plan_for_another_model(fmt, what, setup, tmp_path, capsys):
    run, prep = setup
    plan = Plan.load(run / "plan.json")
    units = {u: "rtn-b4-g128" for u in plan.units}
    model = dict(plan.model)
    if what == "unknown unit":
        units["encoder.layer.9.output.dense"] = units.pop("encoder.layer.0.output.dense")
    elif what == "missing unit":
        del units["encoder.layer.0.output.dense"]
    else:
        model["weight_hash"] = "f" * 64
    Plan(model, units, provenance=plan.provenance).save(tmp_path / "bad.json")
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", fmt, "--plan", str(tmp_path / "bad.json"), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the plan is for a different model") and "\n" not in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.json"]


# ----- llm-compressor recipes that real tools run ---------------------------------------------------
def test_llmcompressor_keeps_the_mask_of_pruned_gptq_units(setup):
    _, prep = setup
    plan = cycle_plan(prep.adapter, ["sparsegpt-2:4+gptq-b4-g128", "gptq-b4-g128", "dense"])
    recipe, notes = llmcompressor_recipe(plan)
    quant = recipe["quantization_stage"]
    gptq = {t for g in quant["gptq_modifiers"]["GPTQModifier"]["config_groups"].values() for t in g["targets"]}
    rtn = {t for g in quant["rtn_modifiers"]["QuantizationModifier"]["config_groups"].values() for t in g["targets"]}
    pruned = set(recipe["sparsity_stage"]["sparsegpt_2of4_modifiers"]["SparseGPTModifier"]["targets"])
    assert pruned == rtn and not pruned & gptq and gptq
    assert any("refill" in n for n in notes)


def test_llmcompressor_targets_match_a_wrapped_bert(setup):
    """oneshot loads a BERT directory as BertLMHeadModel, whose modules are named bert.encoder.layer…"""
    _, prep = setup
    plan = cycle_plan(prep.adapter, ["gptq-b4-g128", "sparsegpt-0.5"])
    recipe, _ = llmcompressor_recipe(plan)
    group = recipe["quantization_stage"]["gptq_modifiers"]["GPTQModifier"]["config_groups"]["group_0"]
    wrapped = [f"bert.{u}" for u in plan.units]
    for target in group["targets"]:
        assert len([n for n in wrapped if re.match(target.removeprefix("re:"), n)]) == 1, target


# ----- the project checkpoint as other loaders see it -----------------------------------------------
def test_checkpoint_bytes_plain_transformers_apply_and_adapter(setup, tmp_path, capsys):
    from transformers import AutoModel

    run, prep = setup
    adapter = prep.adapter
    out = tmp_path / "ckpt"
    assert main(["export", str(run), "--format", "checkpoint", "--out", str(out), "--quiet"]) == 0
    plan = Plan.load(run / "plan.json")
    capsys.readouterr()

    unit_bits = sum(parse_option(o).cost_bits(adapter.unit(u).shape) for u, o in plan.units.items() if o != "dense")
    unit_bits += sum(16 * adapter.unit(u).numel for u, o in plan.units.items() if o == "dense")
    predicted = unit_bits / 8 + 2 * adapter.non_unit_numel()
    size = (out / "layerbudget.safetensors").stat().st_size
    assert abs(size - predicted) / predicted < 0.01, (size, predicted)

    with pytest.raises(OSError):  # no weights file transformers knows: never random weights
        AutoModel.from_pretrained(out)

    assert main(["apply", str(out), "--quiet"]) == 0  # the checkpoint's own plan
    assert "reproduced: relative difference" in capsys.readouterr().out

    model = load_compressed(out)
    loaded = adapter_for(model)
    assert {u.name for u in loaded.units} <= set(plan.units)
    ids = prep.tokens.calib[:2]
    with torch.inference_mode():
        torch.testing.assert_close(loaded.forward(ids), model(input_ids=ids).last_hidden_state)
    packed = [u.name for u in loaded.units if type(model.get_submodule(u.name)).__name__ != "Linear"]
    if packed:
        with pytest.raises(LayerbudgetError, match="packed"):
            loaded.set_weight(packed[0], torch.zeros(loaded.unit(packed[0]).shape))


def test_checkpoint_stores_unstructured_sparsity_compressed(setup, tmp_path):
    from layerbudget.experiments.export import export_checkpoint

    _, prep = setup
    adapter = prep.adapter
    plan = cycle_plan(adapter, ["magnitude-0.5", "rtn-b5-g128", "magnitude-2:4+rtn-b4-g64"])
    export_checkpoint(plan, adapter, prep.database, tmp_path / "ckpt")
    units = sum(parse_option(o).cost_bits(adapter.unit(u).shape) for u, o in plan.units.items()) / 8
    predicted = units + 2 * adapter.non_unit_numel()
    size = (tmp_path / "ckpt" / "layerbudget.safetensors").stat().st_size
    assert abs(size - predicted) / predicted < 0.01, (size, predicted)
    ids = prep.tokens.calib[:2]
    with torch.inference_mode():
        out = load_compressed(tmp_path / "ckpt")(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out, stored_reference(adapter, plan, prep.database).forward(ids), rtol=1e-5, atol=1e-5)
