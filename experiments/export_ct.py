"""Export a plan's own compressed weights as a compressed-tensors checkpoint (transformers, vLLM).

The written directory is a Hugging Face model directory whose ``config.json`` carries a
``compressed-tensors`` ``quantization_config``; ``transformers`` (with ``compressed-tensors``
installed) and vLLM load it. The weights are the variants the search scored, taken from the variant
database — codes, scales and zeros unchanged, nothing re-calibrated:

- a quantized unit (any method, 2–8 bits) is stored ``pack-quantized``: ``weight_packed`` (its codes,
  ``bits`` per value packed densely along K into int32 words, value ``i`` of a row at bit ``i * bits``),
  ``weight_scale`` (fp16 ``[N, K / g]``), ``weight_zero_point`` (the zeros as signed ``bits``-bit
  integers packed the same way along N) and ``weight_shape``. compressed-tensors stores a code ``q`` as
  ``q - 2**(bits-1)`` offset back by ``2**(bits-1)`` when packed, so the packed fields are the project's
  unsigned codes and ``(q - zero) * scale`` is unchanged. One config group per (bits, group size):
  ``strategy`` ``group`` or ``channel`` (``gch`` options), ``symmetric: false``;
- a pruned + quantized unit has the codes of its pruned weights set to their group's zero point, so
  they dequantize to exactly 0;
- pruned-only units and dense units are stored as fp16 weights and listed in ``ignore``; 2:4 units are
  named in a ``sparsity_config`` (format ``dense``, structure ``2:4``) — compressed-tensors 0.20 has no
  sparse storage format any more;
- dropped sub-blocks are refused unless ``allow_drop``: then a pre-LN family's dropped sub-block is
  written with a zero output projection (weight and bias), which adds nothing to the residual stream —
  exactly the dropped model; post-LN BERT blocks cannot be written this way and are refused.

Targets are anchored regexes of the unit names that also match under a leading prefix
(``bert.encoder.layer.0…`` when a BERT directory is loaded with a head), so a loader that wraps the
base model still finds every unit. Everything else (embeddings, norms, biases, heads) is stored at
fp16 (bf16 for a bf16 model), as the plan's byte count assumes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.apply import variant_tensors
from layerbudget.families import DROP_ZERO
from layerbudget.model import ModelAdapter
from layerbudget.options import DENSE, DROP, Option, parse_option
from layerbudget.plan import Plan
from layerbudget.profiles.database import Database
from layerbudget.profiles.methods import decode, load_codes
from layerbudget.storage import atomic_dir

CT_METHOD = "compressed-tensors"
PACK_FORMAT = "pack-quantized"  # vLLM's W*A16 layout; what llm-compressor writes
NAIVE_FORMAT = "naive-quantized"  # one int8 per code: transformers runs asymmetric weights from it
CT_FORMATS = (PACK_FORMAT, NAIVE_FORMAT)
PLAN_FILE = "layerbudget_plan.json"
WEIGHTS = "model.safetensors"
VLLM_BITS = (4, 8)  # vLLM's compressed-tensors W4A16/W8A16 path


def unit_target(unit: str) -> str:
    """``re:`` target matching module ``unit`` exactly, also under a leading prefix (``bert.``, ``model.``)."""
    return f"re:^(?:.*\\.)?{re.escape(unit)}$"


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """compressed-tensors' ``pack-quantized`` layout of unsigned codes ``[R, C]`` (each below ``2**bits``).

    Each row is a little-endian bit stream: value ``i`` occupies bits ``[i * bits, (i + 1) * bits)``,
    values may straddle two words, and a row is padded with zeros to a multiple of 32 values; the
    result keeps the ``ceil(C * bits / 32)`` int32 words that hold values.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"`bits` must be in [1, 8] for pack-quantized, but got bits={bits}.")
    if codes.ndim != 2:
        raise ValueError(f"`codes` must be 2-D [R, C], but got shape {tuple(codes.shape)}.")
    rows, cols = codes.shape
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"`codes` must lie in [0, {(1 << bits) - 1}] for bits={bits}.")
    padded = -(-cols // 32) * 32
    vals = np.zeros((rows, padded), dtype=np.uint8)
    vals[:, :cols] = c.numpy().astype(np.uint8)
    stream = np.unpackbits(vals[..., None], axis=-1, bitorder="little")[..., :bits]  # [R, C', bits]
    words = np.packbits(stream.reshape(rows, padded * bits), axis=-1, bitorder="little").view("<i4")
    return torch.from_numpy(words[:, : math.ceil(cols * bits / 32)].copy())


def _weights_args(opt: Option) -> dict:
    args: dict[str, object] = {"num_bits": opt.bits, "type": "int", "symmetric": False, "dynamic": False,
                               "observer": "minmax"}
    if opt.group_size is None:
        args.update(strategy="channel", group_size=None)
    else:
        args.update(strategy="group", group_size=opt.group_size)
    return args


def _quantized_tensors(opt: Option, tensors: Mapping[str, torch.Tensor], shape: tuple[int, int],
                       layout: str) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors (``weight_packed`` or ``weight``, scale, zero point) of a stored variant."""
    n, k = shape
    bits = int(opt.bits)  # type: ignore[arg-type]
    codes = load_codes(dict(tensors), shape)  # uint8 [N, K] in [0, 2**bits)
    scales, zeros = tensors["scales"], tensors["zeros"]  # fp16 [N, G], zeros integer-valued
    groups = scales.shape[1]
    if "mask" in tensors:  # pruned weights: the code of their group's zero point dequantizes to 0
        bitmask = np.unpackbits(tensors["mask"].numpy(), count=n * k).astype(bool)
        mask = torch.from_numpy(bitmask).reshape(n, k)
        zero_codes = zeros.float().repeat_interleave(k // groups, dim=1).to(torch.uint8)
        codes = torch.where(mask, codes, zero_codes)
    zero_points = zeros.float().to(torch.int64)  # [N, G] in [0, 2**bits)
    if layout == NAIVE_FORMAT:  # signed codes and zero points, one int8 each
        offset = 1 << (bits - 1)
        return {"weight": (codes.to(torch.int64) - offset).to(torch.int8),
                "weight_scale": scales.contiguous(),
                "weight_zero_point": (zero_points - offset).to(torch.int8)}
    return {
        "weight_packed": pack_codes(codes, bits),
        "weight_scale": scales.contiguous(),
        "weight_zero_point": pack_codes(zero_points.t().contiguous(), bits).t().contiguous(),  # packed along N
        "weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }


def check_ct_dir(out: str | Path) -> None:
    """Raise unless ``out`` is free or an earlier layerbudget compressed-tensors export (which may be replaced)."""
    path = Path(out)
    if not path.exists():
        return
    ours = path.is_dir() and (path / PLAN_FILE).is_file() and (path / "config.json").is_file()
    if ours:
        try:
            method = json.loads((path / "config.json").read_text())["quantization_config"]["quant_method"]
        except (ValueError, KeyError, TypeError):
            method = None
        ours = method == CT_METHOD
    if not ours:
        raise LayerbudgetError(f"output {str(out)!r} exists and is not a layerbudget compressed-tensors export; "
                               "choose another path")


def _drop_rule(adapter: ModelAdapter, plan: Plan, allow_drop: bool) -> set[str]:
    """Units to write as zero output projections for the plan's dropped sub-blocks (checked)."""
    if not plan.dropped:
        return set()
    names = ", ".join(plan.dropped)
    if not allow_drop:
        raise LayerbudgetError(
            f"the plan drops {len(plan.dropped)} sub-block(s) ({names}); pass --allow-drop to write them as zero "
            "output projections (exact for pre-LN models), or use --format checkpoint"
        )
    rules = {kind: (path, rule) for kind, path, rule in adapter.spec.drop}
    zeroed: set[str] = set()
    for name in plan.dropped:
        sb = adapter.subblock(name)
        path, rule = rules[sb.kind]
        if rule != DROP_ZERO:
            raise LayerbudgetError(
                f"the plan drops {name}, a post-LN {adapter.spec.name} sub-block that no standard layer expresses "
                "(a zero projection is not the identity there); use --format checkpoint"
            )
        zeroed.add(f"{adapter.spec.blocks}.{sb.block}.{path}")
    return zeroed


def compressed_tensors_files(
    plan: Plan, adapter: ModelAdapter, database: Database | None, *, allow_drop: bool = False,
    layout: str = PACK_FORMAT,
) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """(tensors, ``quantization_config``, notes) of the export of ``plan``; the plan must fit the model."""
    if layout not in CT_FORMATS:
        raise LayerbudgetError(f"compressed-tensors layout must be one of {', '.join(CT_FORMATS)}, but got {layout!r}")
    zeroed = _drop_rule(adapter, plan, allow_drop)
    options = {u: parse_option(o) for u, o in plan.units.items() if o not in (DENSE, DROP)}
    quantized = {u: o for u, o in options.items() if o.bits is not None}
    if adapter.spec.transposed and quantized:
        raise LayerbudgetError(
            f"compressed-tensors packs nn.Linear weights, but {adapter.spec.name} units are Conv1D modules; "
            "use --format checkpoint"
        )
    model_dtype = next(adapter.model.parameters()).dtype
    dtype = torch.bfloat16 if model_dtype == torch.bfloat16 else torch.float16
    adapter.restore()
    state = {k: v.detach() for k, v in adapter.model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():  # shared tensors (tied embeddings) once: transformers re-ties them
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen[key] = name
        out[name] = t.to(dtype) if t.is_floating_point() else t
    for unit, option in plan.units.items():
        shape = adapter.unit(unit).shape
        if unit in zeroed:
            out[f"{unit}.weight"] = torch.zeros_like(out[f"{unit}.weight"])
            if f"{unit}.bias" in out:
                out[f"{unit}.bias"] = torch.zeros_like(out[f"{unit}.bias"])
        if option in (DENSE, DROP):
            continue
        opt = options[unit]
        tensors = variant_tensors(adapter, database, unit, option)
        if opt.bits is None:  # pruned only: the fp16 kept values in a dense weight
            out[f"{unit}.weight"] = decode(tensors, shape).to(dtype)
            continue
        del out[f"{unit}.weight"]
        out.update({f"{unit}.{k}": v for k, v in _quantized_tensors(opt, tensors, shape, layout).items()})

    groups: dict[tuple[int, int | None], list[str]] = {}
    for unit, opt in quantized.items():
        groups.setdefault((opt.bits, opt.group_size), []).append(unit)  # type: ignore[arg-type]
    config_groups = {
        f"group_{i}": {"targets": [unit_target(u) for u in units], "weights": _weights_args(quantized[units[0]]),
                       "input_activations": None, "output_activations": None, "format": layout}
        for i, units in enumerate(groups.values())
    }
    ignore = [unit_target(u) for u in plan.units if u not in quantized]
    two4 = [u for u, o in options.items() if o.pattern == "2:4"]
    total = sum(adapter.unit(u).numel for u in plan.units)
    zeros = sum(o.zeros(adapter.unit(u).shape) for u, o in options.items() if o.sparse is not None)
    sparsity = {}
    if two4:
        sparsity = {"format": "dense", "sparsity_structure": "2:4", "targets": [unit_target(u) for u in two4],
                    "ignore": [], "global_sparsity": round(zeros / total, 6)}
    from compressed_tensors import __version__ as ct_version

    qconfig = {
        "quant_method": CT_METHOD,
        "format": layout,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": sparsity,
        "transform_config": {},
        "version": ct_version,
    }
    notes = [f"units by storage: {len(quantized)} {layout} (codes, scales and zeros of the searched variants), "
             f"{len(options) - len(quantized)} pruned in fp16, "
             f"{sum(o in (DENSE, DROP) for o in plan.units.values())} dense"]
    if len(options) > len(quantized):
        notes.append("pruned-only units are stored as dense fp16 weights with their zeros (compressed-tensors "
                     f"{ct_version} has no sparse storage format); 2:4 units are named in sparsity_config")
    odd = sorted({o.bits for o in quantized.values() if o.bits not in VLLM_BITS})  # type: ignore[type-var]
    if layout == NAIVE_FORMAT:
        notes.append("naive-quantized stores one int8 per code (8 bits per weight on disk); transformers runs it, "
                     "vLLM runs pack-quantized")
    elif quantized:
        notes.append(f"transformers with compressed-tensors {ct_version} cannot run asymmetric pack-quantized weights "
                     "(its loader expects unpacked zero points); --ct-format naive-quantized writes a copy it runs")
    if odd and layout == PACK_FORMAT:
        notes.append(f"vLLM runs 4- and 8-bit compressed-tensors weights; the {'/'.join(map(str, odd))}-bit units "
                     "load in transformers (dequantized on the first forward), not in vLLM")
    if zeroed:
        notes.append("dropped sub-blocks are written as zero output projections (the model still computes them): "
                     + ", ".join(plan.dropped))
    if not quantized:
        notes.append("the plan quantizes no unit: config_groups is empty and every weight is stored in fp16")
    return out, qconfig, notes


def validate_quantization_config(qconfig: Mapping) -> None:
    """Parse ``qconfig`` with compressed-tensors' own config classes; raise a one-line error if it rejects it."""
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.quantization import QuantizationConfig

    try:
        if qconfig["config_groups"]:
            QuantizationConfig.model_validate(dict(qconfig))
        if qconfig.get("sparsity_config"):
            sparse = dict(qconfig["sparsity_config"])
            SparsityCompressionConfig.load_from_registry(sparse.pop("format"), **sparse)
    except Exception as exc:  # pydantic's ValidationError and registry errors; a bug if it ever fires
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayerbudgetError(f"compressed-tensors rejects the quantization_config written for this plan: {first}") from None


def save_compressed_tensors(
    plan: Plan, adapter: ModelAdapter, database: Database | None, out: str | Path, *, allow_drop: bool = False,
    layout: str = PACK_FORMAT,
) -> list[str]:
    """Write the compressed-tensors model directory of ``plan`` to ``out`` (atomically); returns the notes."""
    from safetensors.torch import save_file

    out = Path(out)
    check_ct_dir(out)
    tensors, qconfig, notes = compressed_tensors_files(plan, adapter, database, allow_drop=allow_drop, layout=layout)
    validate_quantization_config(qconfig)
    dtype = "bfloat16" if any(t.dtype == torch.bfloat16 for t in tensors.values()) else "float16"
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        adapter.model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("torch_dtype", None)
        config["dtype"] = dtype
        config["quantization_config"] = qconfig
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if adapter.tokenizer is not None and hasattr(adapter.tokenizer, "save_pretrained"):
            adapter.tokenizer.save_pretrained(str(tmp))
        plan.save(tmp / PLAN_FILE)
    size = (out / WEIGHTS).stat().st_size
    predicted = plan.predicted.get("bytes")
    notes.append(f"{WEIGHTS}: {size} bytes" + (f"; the plan predicts {int(predicted)} bytes in its own formats"
                                               if predicted else ""))
    return notes
