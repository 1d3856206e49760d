"""Export a plan to deployment formats: llm-compressor recipes, GPTQModel configs, packed checkpoints.

Every exporter validates the plan first: tied units (q/k/v, gate/up) must share one option, since
vLLM runs them as one fused layer and refuses mixed schemes. Each returns an :class:`Exported`
(the written path and notes the user should read); files are written atomically.

- :func:`export_llmcompressor`: a recipe YAML (``GPTQModifier``/``QuantizationModifier`` with one
  config group per (bits, group size); ``SparseGPTModifier``/``WandaPruningModifier`` with one
  sparsity per target); llm-compressor re-runs the methods on its own calibration data.
- :func:`export_gptqmodel`: ``quantize_config.json`` for GPTQModel (``dynamic`` per-module rules).
- :func:`export_checkpoint`: the packed checkpoint of :mod:`layerbudget.experiments.packed_checkpoint`
  (exact weights).
- :func:`export_compressed_tensors`: the searched weights as a compressed-tensors model directory
  (:mod:`layerbudget.experiments.export_ct`) that transformers and vLLM load.

Every file-writing exporter first checks the plan against the model it is for
(:func:`~layerbudget.experiments.export_check.check_export`: unit names, shapes, weight hash, ties)
and writes nothing when it does not fit.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.apply import check_ties, plan_family, tie_groups
from layerbudget.experiments.export_check import check_export, load_plan_model
from layerbudget.experiments.export_ct import PACK_FORMAT, save_compressed_tensors, unit_target
from layerbudget.experiments.packed_checkpoint import save_compressed
from layerbudget.model import ModelAdapter
from layerbudget.options import DENSE, DROP, Option, parse_option
from layerbudget.plan import Plan
from layerbudget.profiles.database import Database
from layerbudget.storage import atomic_write_text

FORMATS = ("llmcompressor", "gptqmodel", "checkpoint", "compressed-tensors")
GPTQ_BITS = (2, 3, 4, 8)  # what vLLM's GPTQ path runs
# vLLM fuses these Hugging Face projections into one layer; GPTQModel's dynamic rules are matched
# against module names in GPTQModel (HF names) and in vLLM (fused names), so rules name both.
FUSED_NAMES = {frozenset({"q_proj", "k_proj", "v_proj"}): "qkv_proj", frozenset({"gate_proj", "up_proj"}): "gate_up_proj"}


@dataclass(frozen=True)
class Exported:
    """What an exporter wrote and what the user should know about it."""

    path: Path
    notes: tuple[str, ...] = ()


def _check_drops(plan: Plan, fmt: str, allow_drop: bool) -> list[str]:
    if not plan.dropped:
        return []
    names = ", ".join(plan.dropped)
    if not allow_drop:
        raise LayerbudgetError(
            f"the plan drops {len(plan.dropped)} sub-block(s) ({names}), which {fmt} cannot express; "
            "pass --allow-drop to export the rest and remove them yourself, or use --format checkpoint"
        )
    return [f"{fmt} cannot drop sub-blocks; remove these yourself (their units are left unquantized): {names}"]


def _header(plan: Plan) -> list[str]:
    budget = ", ".join(f"{k}={v:g}" for k, v in plan.budget.items()) or "none"
    measured = ", ".join(f"{k}={v:.4g}" for k, v in plan.measured.items())
    return [
        f"layerbudget plan for {plan.model['id']} (weights sha256 {plan.model['weight_hash'][:16]})",
        f"searcher: {plan.searcher or '?'}; budget: {budget}; measured: {measured or 'n/a'}",
    ]


def unit_regex(names: list[str], *, fused: bool = False) -> str:
    """An anchored regex matching exactly ``names`` (siblings under one parent share an alternation).

    With ``fused``, a tie group whose leaves vLLM fuses (``q_proj|k_proj|v_proj``) also matches the
    fused module (``qkv_proj``).
    """
    parents = {n.rpartition(".")[0] for n in names}
    if len(parents) != 1 or "" in parents:
        return "^(?:" + "|".join(re.escape(n) for n in names) + ")$" if len(names) > 1 else f"^{re.escape(names[0])}$"
    leaves = [n.rpartition(".")[2] for n in names]
    if fused and frozenset(leaves) in FUSED_NAMES:
        leaves.append(FUSED_NAMES[frozenset(leaves)])
    if len(leaves) == 1:
        return f"^{re.escape(names[0])}$"
    return f"^{re.escape(parents.pop())}\\.(?:{'|'.join(re.escape(leaf) for leaf in leaves)})$"


def model_order(plan: Plan) -> list[str]:
    """The plan's units in module registration order (block index, then the family's unit order)."""
    spec = plan_family(plan)
    rank = {path: i for i, (path, _) in enumerate(spec.units)}
    prefix = spec.blocks + "."

    def key(unit: str) -> tuple[int, int, str]:
        block, _, path = unit[len(prefix):].partition(".")
        if not unit.startswith(prefix) or not block.isdigit():
            return (1 << 30, 0, unit)
        return (int(block), rank.get(path, len(rank)), unit)

    return sorted(plan.units, key=key)


def _decisions(plan: Plan) -> list[tuple[str, ...]]:
    """Units grouped into one entry per tie group (in plan order), other units alone."""
    grouped = {u: g for g in tie_groups(plan) for u in g}
    out: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for unit in plan.units:
        if unit in seen:
            continue
        group = grouped.get(unit, (unit,))
        seen.update(group)
        out.append(group)
    return out


# ----- llm-compressor ------------------------------------------------------------------------------
def _weights_args(opt: Option) -> dict:
    args: dict[str, object] = {"num_bits": opt.bits, "type": "int", "symmetric": False}
    if opt.group_size is None:
        args["strategy"] = "channel"
    else:
        args.update(strategy="group", group_size=opt.group_size)
    return args


def _pruner(opt: Option) -> str:
    return "WandaPruningModifier" if opt.sparse == "wanda" else "SparseGPTModifier"


def llmcompressor_recipe(plan: Plan, *, allow_drop: bool = False) -> tuple[dict, list[str]]:
    """The llm-compressor recipe of ``plan`` as plain data, and notes for the user."""
    check_ties(plan)
    notes = _check_drops(plan, "llm-compressor", allow_drop)
    options = {u: parse_option(o) for u, o in plan.units.items() if o not in (DENSE, DROP)}
    if not options:
        raise LayerbudgetError("the plan compresses no unit; there is nothing to export")
    target = {u: unit_target(u) for u in plan.units}  # also under a wrapper's prefix (bert. of BertLMHeadModel)
    untouched = [target[u] for u, o in plan.units.items() if o in (DENSE, DROP)]

    # sparsity: one modifier per (pruner, mask structure), one sparsity per target in model order
    # (llm-compressor pairs the list with the targets' modules as the model lists them)
    pruning: dict[tuple[str, str], dict] = {}
    for unit in model_order(plan):
        opt = options.get(unit)
        if opt is None or opt.sparse is None:
            continue
        structure = "2:4" if opt.pattern == "2:4" else "0:0"
        mod = pruning.setdefault((_pruner(opt), structure), {"sparsity": [], "mask_structure": structure, "targets": []})
        mod["sparsity"].append(float(opt.sparsity))  # type: ignore[arg-type]
        mod["targets"].append(target[unit])
    if any(o.sparse == "magnitude" for o in options.values()):
        notes.append("magnitude-pruned units are exported to SparseGPTModifier (llm-compressor has no one-shot "
                     "magnitude pruner); its masks differ from the searched ones")

    # quantization: GPTQ and RTN (QuantizationModifier) each with one config group per (bits, group size)
    # llm-compressor's GPTQ refills pruned weights; round-to-nearest maps a zero to its zero point and back
    # to exactly 0, so pruned + quantized units are quantized by QuantizationModifier and keep their mask
    quant: dict[str, dict[tuple[int, int | None], list[str]]] = {}
    kept_masks = []
    for unit, opt in options.items():
        if opt.bits is None:
            continue
        gptq = opt.quant == "gptq" and opt.sparse is None
        if opt.quant == "gptq" and opt.sparse is not None:
            kept_masks.append(unit)
        modifier = "GPTQModifier" if gptq else "QuantizationModifier"
        quant.setdefault(modifier, {}).setdefault((opt.bits, opt.group_size), []).append(unit)
    if kept_masks:
        notes.append(f"{len(kept_masks)} pruned + GPTQ unit(s) are quantized by round-to-nearest (QuantizationModifier) "
                     "after pruning: llm-compressor's GPTQModifier would refill the pruned weights and lose the mask")

    recipe: dict[str, dict] = {}
    if pruning:
        stage: dict[str, dict] = {}
        for (modifier, structure), args in pruning.items():
            group = f"{'wanda' if modifier.startswith('Wanda') else 'sparsegpt'}_{'2of4' if structure == '2:4' else 'unstructured'}"
            stage[f"{group}_modifiers"] = {modifier: {**args, "ignore": ["re:.*lm_head"]}}
        recipe["sparsity_stage"] = stage
    if quant:
        stage = {}
        for modifier, groups in quant.items():
            config_groups = {}
            for i, units in enumerate(groups.values()):
                opt = options[units[0]]
                config_groups[f"group_{i}"] = {"targets": [target[u] for u in units], "weights": _weights_args(opt)}
            name = "gptq" if modifier == "GPTQModifier" else "rtn"
            stage[f"{name}_modifiers"] = {modifier: {"ignore": ["lm_head", *untouched], "config_groups": config_groups}}
        recipe["quantization_stage"] = stage
    notes.append("llm-compressor re-calibrates everything on its own data: it recomputes scales and zero points, re-runs "
                 "GPTQ/SparseGPT/Wanda and picks new masks, so its model is close to, not the one the search scored "
                 "(--format compressed-tensors writes that one)")
    notes.append("targets match the unit names also under a leading prefix, e.g. bert. when llm-compressor loads a BERT "
                 "directory as BertLMHeadModel")
    return recipe, notes


def to_yaml(data: object) -> str:
    """YAML of plain data: block style, except one-line lists of numbers and tables of scalars."""
    import yaml  # a dependency of transformers

    class Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flow = bool(value) and all(isinstance(v, (int, float)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    def represent_dict(dumper: yaml.SafeDumper, value: dict) -> yaml.Node:
        flow = bool(value) and all(isinstance(v, (int, float, str, bool)) for v in value.values())
        return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=flow)

    Dumper.add_representer(list, represent_list)
    Dumper.add_representer(dict, represent_dict)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=1000)


def export_llmcompressor(
    plan: Plan, out: str | Path, *, model: str | Path | ModelAdapter | None = None, allow_drop: bool = False
) -> Exported:
    """Write the llm-compressor recipe YAML of ``plan`` to ``out`` after checking the plan against ``model``
    (an adapter, a model directory or hub id; default: the model of the plan's experiment config)."""
    check_export(plan, load_plan_model(plan, model))
    recipe, notes = llmcompressor_recipe(plan, allow_drop=allow_drop)
    comments = [*_header(plan), *(f"note: {n}" for n in notes)]
    if plan.dropped:
        comments.append("dropped sub-blocks (not expressible in llm-compressor): " + ", ".join(plan.dropped))
    body = to_yaml(recipe)
    text = "".join(f"# {c}\n" for c in comments) + body
    path = Path(out)
    atomic_write_text(path, text)
    return Exported(path, tuple(notes))


# ----- GPTQModel ----------------------------------------------------------------------------------
def gptqmodel_config(plan: Plan, *, allow_drop: bool = False) -> tuple[dict, list[str]]:
    """GPTQModel's ``quantize_config.json`` of ``plan`` as plain data, and notes for the user."""
    check_ties(plan)
    notes = _check_drops(plan, "GPTQModel", allow_drop)
    options = {u: parse_option(o) for u, o in plan.units.items() if o not in (DENSE, DROP)}
    sparse = sorted({o.name for o in options.values() if o.sparse is not None})
    if sparse:
        raise LayerbudgetError(
            f"GPTQModel quantizes only, but the plan prunes with {', '.join(sparse)}; "
            "use --format llmcompressor or --format checkpoint"
        )
    odd = sorted({o.bits for o in options.values() if o.bits not in GPTQ_BITS})  # type: ignore[type-var]
    if odd:
        raise LayerbudgetError(
            f"vLLM's GPTQ path runs {'/'.join(map(str, GPTQ_BITS))} bits, but the plan uses {'/'.join(map(str, odd))}-bit "
            "options; search without them or use --format checkpoint"
        )
    if not options:
        raise LayerbudgetError("the plan quantizes no unit; there is nothing to export")
    scheme = Counter((o.bits, o.group_size) for o in options.values())
    (bits, group), _ = scheme.most_common(1)[0]
    dynamic: dict[str, dict] = {}
    for group_units in _decisions(plan):
        option = plan.units[group_units[0]]
        regex = unit_regex(list(group_units), fused=True)
        if option in (DENSE, DROP):
            dynamic[f"-:{regex}"] = {}
        else:
            opt = options[group_units[0]]
            if (opt.bits, opt.group_size) != (bits, group):
                dynamic[regex] = {"bits": opt.bits, "group_size": -1 if opt.group_size is None else opt.group_size}
    if any(o.quant == "rtn" for o in options.values()):
        notes.append("GPTQModel runs GPTQ for every quantized module, also those the plan quantizes with RTN")
    notes.append("GPTQModel re-calibrates: it runs GPTQ on its own data with symmetric-or-asymmetric scales of its own, "
                 "so its model is close to, not the one the search scored (--format compressed-tensors writes that one)")
    per_channel = any(o.group_size is None for o in options.values())
    if per_channel:
        notes.append("act_group_aware is off: GPTQModel's group-aware reordering needs groups, and the plan has "
                     "per-channel units")
    config = {
        "bits": bits,
        "group_size": -1 if group is None else group,
        "desc_act": False,
        "sym": False,
        "lm_head": False,
        "true_sequential": True,
        **({"act_group_aware": False} if per_channel else {}),
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "dynamic": dynamic,
        "meta": {"quantizer": [f"layerbudget:{_version()}"]},
    }
    return config, notes


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("layerbudget")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def export_gptqmodel(
    plan: Plan, out: str | Path, *, model: str | Path | ModelAdapter | None = None, allow_drop: bool = False
) -> Exported:
    """Write GPTQModel's ``quantize_config.json`` for ``plan`` (``out``: a ``.json`` file or a directory) after
    checking the plan against ``model`` (as in :func:`export_llmcompressor`)."""
    check_export(plan, load_plan_model(plan, model))
    config, notes = gptqmodel_config(plan, allow_drop=allow_drop)
    path = Path(out)
    if path.suffix != ".json":
        path = path / "quantize_config.json"
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return Exported(path, tuple(notes))


# ----- packed checkpoint --------------------------------------------------------------------------
def export_checkpoint(
    plan: Plan, model_dir_or_adapter: str | Path | ModelAdapter, database: Database | None, out: str | Path
) -> Exported:
    """Write the packed checkpoint of ``plan`` (see :mod:`layerbudget.experiments.packed_checkpoint`) to the directory ``out``.

    ``database`` holds the variants the search scored; without one, only options that need no
    calibration (``rtn``, ``magnitude``) can be exported.
    """
    adapter = load_plan_model(plan, model_dir_or_adapter)
    check_export(plan, adapter, database)
    manifest = save_compressed(adapter, plan, database, out)
    counts = Counter(e["format"] for e in manifest["units"].values())
    summary = "units by storage format: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return Exported(Path(out), (summary, *manifest["notes"]))


def export_compressed_tensors(
    plan: Plan, model_dir_or_adapter: str | Path | ModelAdapter, database: Database | None, out: str | Path, *,
    allow_drop: bool = False, layout: str = PACK_FORMAT,
) -> Exported:
    """Write ``plan``'s searched weights as a compressed-tensors model directory ``out`` (see
    :mod:`layerbudget.experiments.export_ct`); ``database`` holds the variants the search scored."""
    adapter = load_plan_model(plan, model_dir_or_adapter)
    check_export(plan, adapter, database)
    notes = save_compressed_tensors(plan, adapter, database, out, allow_drop=allow_drop, layout=layout)
    return Exported(Path(out), tuple(notes))


PLAN_EXPORTERS: dict[str, Callable[..., Exported]] = {
    "llmcompressor": export_llmcompressor,
    "gptqmodel": export_gptqmodel,
}
