"""Packed checkpoints of a plan: every unit with a kernel format stored in it, loaded back as kernel modules.

:func:`save_compressed` writes a checkpoint directory that stores every unit whose option has a
kernel format in that format (:mod:`layerbudget.kernels`), and :func:`load_compressed` rebuilds
the Hugging Face model from it with ``QuantLinear``/``SparseLinear``/``Sparse24QuantLinear``
modules (torch reference on CPU, Triton on GPU) whose outputs match
:func:`~layerbudget.experiments.apply.compress_`.

Checkpoint layout (``CHECKPOINT_VERSION``)::

    config.json                  the model's config, plus a ``quantization_config`` naming layerbudget
    tokenizer files              when the model has a tokenizer
    layerbudget.safetensors      dense tensors under their usual names, stored at fp16 (bf16 for a bf16
                                 model) as the plan counts them; a packed unit ``U`` stores
                                 ``U.packed``/``U.scales``/... as written by the kernels' ``to_tensors``
    layerbudget_checkpoint.json  family, compute dtype, per-unit option and storage format, notes
    layerbudget_plan.json        the plan

The weights file is not named ``model.safetensors``, so plain ``transformers.from_pretrained`` refuses
the directory (no weights file it knows) instead of filling the packed units with random weights.

Storage formats: ``dense`` (the original weight), ``lowbit`` (2/3/4/8-bit ``PackedQuantWeight``),
``sparse24`` (``Sparse24Weight``), ``sparse24_quant`` (``Sparse24QuantWeight``), ``variant`` (an
option without a kernel format — 5/6 bits, unstructured sparsity — in the variant database's own
encoding: bit-plane codes, fp16 kept values and a 1-bit mask, the kept codes only when pruned and
quantized; its bytes are the plan's; decoded to a dense weight when loaded) and ``drop`` (nothing
stored; the module computes zeros).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.apply import compress_, variant_tensors
from layerbudget.families import DROP_ZERO, family_by_name
from layerbudget.kernels.modules import QuantLinear, Sparse24QuantLinear, SparseLinear
from layerbudget.kernels.ops import PackedWeight, format_of
from layerbudget.kernels.quant import dequantize_groupwise
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.sparse24 import CODE_UNIT, Sparse24QuantWeight, Sparse24Weight
from layerbudget.model import ModelAdapter, ResidualPassthrough, ZeroOutput
from layerbudget.options import DENSE, DROP, Option, parse_option
from layerbudget.plan import Plan
from layerbudget.profiles.database import Database
from layerbudget.profiles.latency import kernel_format
from layerbudget.profiles.methods import decode, load_codes, store_codes
from layerbudget.storage import atomic_dir, atomic_write_text

CHECKPOINT_SCHEMA = "layerbudget.checkpoint"
CHECKPOINT_VERSION = 4  # 4: codes in halfword units; 3: fp16 storage, ``variant`` format, own weights file name
MANIFEST = "layerbudget_checkpoint.json"
PLAN_FILE = "layerbudget_plan.json"
WEIGHTS = "layerbudget.safetensors"  # not model.safetensors: transformers must not load it without the packed units
PACKED_FORMATS = ("lowbit", "sparse24", "sparse24_quant")
_MODULES = {"lowbit": QuantLinear, "sparse24": SparseLinear, "sparse24_quant": Sparse24QuantLinear}
_WEIGHTS = {"lowbit": PackedQuantWeight, "sparse24": Sparse24Weight, "sparse24_quant": Sparse24QuantWeight}


# ----- packed formats -----------------------------------------------------------------------------
def _mask(tensors: Mapping[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    n, k = shape
    bits = np.unpackbits(tensors["mask"].numpy(), count=n * k)
    return torch.from_numpy(bits.astype(bool)).reshape(n, k)


def _positions_24(mask: torch.Tensor) -> torch.Tensor | None:
    """uint8 ``[N, K/2]`` kept positions of a mask with exactly two kept values per group of four."""
    n, k = mask.shape
    groups = mask.reshape(n, k // 4, 4)  # [N, K/4, 4]
    if not bool((groups.sum(-1) == 2).all()):
        return None
    key = groups.to(torch.int64) * 4 + (3 - torch.arange(4))  # kept first, then lowest position
    pos = key.topk(2, dim=-1).indices.sort(dim=-1).values  # [N, K/4, 2]
    return pos.reshape(n, k // 2).to(torch.uint8)


def pack_variant(
    option: Option, tensors: Mapping[str, torch.Tensor], shape: tuple[int, int]
) -> tuple[PackedWeight | None, str]:
    """The kernels' packed form of a stored variant, or ``(None, reason)`` when no kernel format fits.

    Packing is lossless: the packed weight dequantizes to exactly what :func:`decode` returns.
    """
    n, k = shape
    fmt, reason = kernel_format(option, shape)
    if fmt is None:
        return None, reason
    if option.pattern == "2:4":
        pos = _positions_24(_mask(tensors, shape))
        if pos is None:
            return None, "the stored mask is not exactly two of every four"
        if option.bits is None:
            return Sparse24Weight.from_positions(tensors["values"].reshape(n, k // 2).contiguous(), pos, shape), ""
        g = option.group_size
        codes = load_codes(dict(tensors), shape)  # [N, K]
        kept = codes.reshape(n, k // 4, 4).gather(-1, pos.reshape(n, k // 4, 2).long()).reshape(n, k // 2)
        # a dense group of g columns holds exactly g/2 kept values, so the scales line up unchanged
        values = PackedQuantWeight.from_codes(kept, tensors["scales"], tensors["zeros"], option.bits,
                                              None if g is None else g // 2, CODE_UNIT)
        return Sparse24QuantWeight.from_positions(values, pos, shape), ""
    return PackedQuantWeight(tensors["packed"].contiguous(), tensors["scales"].contiguous(),
                             tensors["zeros"].contiguous(), option.bits, option.group_size, shape), ""  # type: ignore[arg-type]


def variant_storage(tensors: Mapping[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A stored variant in exactly the bytes its option costs: a pruned + quantized variant keeps only the
    codes of its kept weights (the database stores every code); everything else is stored as it is."""
    out = dict(tensors)
    if "mask" in out and "bits" in out:
        mask = _mask(out, shape)
        kept = load_codes(out, shape)[mask]  # [kept] in row-major order
        out.pop("packed", None)
        out.pop("planes", None)
        out.update(store_codes(kept[None, :], int(out["bits"])))
    return out


def variant_weight(tensors: Mapping[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """The float32 ``[N, K]`` weight of a :func:`variant_storage` dict (what :func:`decode` gives the database's)."""
    if "mask" in tensors and "bits" in tensors:
        mask = _mask(tensors, shape)
        codes = torch.zeros(shape, dtype=torch.uint8)
        codes[mask] = load_codes(dict(tensors), (1, int(mask.sum())))[0]
        return dequantize_groupwise(codes, tensors["scales"], tensors["zeros"]) * mask
    return decode(dict(tensors), shape)


# ----- save ---------------------------------------------------------------------------------------
def check_checkpoint_dir(out: str | Path) -> None:
    """Raise unless ``out`` is free or an earlier layerbudget checkpoint (which may be replaced)."""
    path = Path(out)
    if path.exists() and not (path.is_dir() and (path / MANIFEST).is_file()):
        raise LayerbudgetError(f"output {str(out)!r} exists and is not a layerbudget checkpoint; choose another path")


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to save (each storage once) and aliases ``name -> saved name`` for tied weights."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        ptr = t.untyped_storage().data_ptr()
        t = t.clone() if (t.numel() and ptr in storages) or not t.is_contiguous() else t
        storages.add(ptr)
        seen[key] = name
        out[name] = t
    return out, aliases


def save_compressed(adapter: ModelAdapter, plan: Plan, database: Database | None, out: str | Path) -> dict:
    """Write the packed checkpoint of ``plan`` on ``adapter``'s model to ``out``; returns the manifest.

    ``out`` must not exist, or be an earlier layerbudget checkpoint (it is replaced atomically). The
    adapter is restored to the dense model afterwards.
    """
    from safetensors.torch import save_file

    out = Path(out)
    check_checkpoint_dir(out)
    compress_(adapter, plan, database)
    try:
        model_dtype = next(adapter.model.parameters()).dtype
        store = torch.bfloat16 if model_dtype == torch.bfloat16 else torch.float16  # what the plan counts
        state = {k: (v.to(store) if v.is_floating_point() else v) for k, v in adapter.model.state_dict().items()}
        units: dict[str, dict] = {}
        fallbacks: dict[tuple[str, str], list[str]] = {}
        for unit, option in plan.units.items():
            shape = adapter.unit(unit).shape
            entry = {"option": option, "shape": list(shape)}
            if option == DENSE:
                entry["format"] = "dense"
            elif option == DROP:
                state.pop(f"{unit}.weight", None)
                state.pop(f"{unit}.bias", None)
                entry["format"] = "drop"
            else:
                stored = variant_tensors(adapter, database, unit, option)
                packed, reason = pack_variant(parse_option(option), stored, shape)
                if packed is None:
                    del state[f"{unit}.weight"]
                    state.update({f"{unit}.{k}": v for k, v in variant_storage(stored, shape).items()})
                    entry["format"] = "variant"
                    fallbacks.setdefault((option, reason), []).append(unit)
                else:
                    del state[f"{unit}.weight"]
                    state.update(packed.to_tensors(f"{unit}."))
                    entry["format"] = format_of(packed)
            units[unit] = entry
        tensors, aliases = _dedupe(state)
        dtype = str(model_dtype).removeprefix("torch.")
        notes = [
            f"{opt} ({len(us)} unit(s)) stored in the variant database's encoding and decoded to a dense weight "
            f"when loaded: {why}"
            for (opt, why), us in sorted(fallbacks.items())
        ]
        manifest = {
            "schema": CHECKPOINT_SCHEMA,
            "version": CHECKPOINT_VERSION,
            "model": dict(plan.model),
            "family": adapter.spec.name,
            "dtype": dtype,
            "storage_dtype": str(store).removeprefix("torch."),
            "dropped": list(plan.dropped),
            "units": units,
            "aliases": aliases,
            "notes": notes,
        }
        with atomic_dir(out) as tmp:
            save_file({k: v.to("cpu") for k, v in tensors.items()}, str(tmp / WEIGHTS),
                      metadata={"format": "pt", "layerbudget_checkpoint": str(CHECKPOINT_VERSION)})
            adapter.model.config.save_pretrained(tmp)
            config = json.loads((tmp / "config.json").read_text())
            # other loaders find no weights file they know (WEIGHTS) and refuse; this names the loader
            config["quantization_config"] = {"quant_method": "layerbudget", "version": CHECKPOINT_VERSION,
                                             "loader": "layerbudget.experiments.packed_checkpoint.load_compressed"}
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if adapter.tokenizer is not None and hasattr(adapter.tokenizer, "save_pretrained"):
                adapter.tokenizer.save_pretrained(str(tmp))
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            plan.save(tmp / PLAN_FILE)
    finally:
        adapter.restore()
    return manifest


# ----- load ---------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict:
    """The checkpoint manifest of ``path``, validated (schema, version, formats)."""
    root = Path(path)
    if not (root / MANIFEST).is_file() or not (root / WEIGHTS).is_file():
        raise LayerbudgetError(f"{str(path)!r} is not a layerbudget checkpoint (no {MANIFEST} or {WEIGHTS})")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LayerbudgetError(f"{root / MANIFEST} is not valid JSON: {exc}") from None
    if manifest.get("schema") != CHECKPOINT_SCHEMA or manifest.get("version") != CHECKPOINT_VERSION:
        raise LayerbudgetError(
            f"{root / MANIFEST} has schema/version {manifest.get('schema')!r}/{manifest.get('version')!r}; "
            f"expected {CHECKPOINT_SCHEMA!r}/{CHECKPOINT_VERSION}"
        )
    formats = ("dense", "variant", "drop", *PACKED_FORMATS)
    for unit, entry in manifest.get("units", {}).items():
        if entry.get("format") not in formats:
            raise LayerbudgetError(f"{root / MANIFEST}: unit {unit} has unknown format {entry.get('format')!r}")
    return manifest


def _out_features(module: nn.Module) -> int:
    if hasattr(module, "out_features"):
        return int(module.out_features)
    if hasattr(module, "nf"):  # GPT-2 Conv1D
        return int(module.nf)
    raise LayerbudgetError(f"cannot tell the output size of {type(module).__name__}")


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def load_compressed(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint written by :func:`save_compressed`, in eval mode on ``device``.

    Packed units become ``QuantLinear``/``SparseLinear``/``Sparse24QuantLinear`` modules, dropped
    sub-blocks the identity on the residual stream, as in :meth:`ModelAdapter.drop`.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    root = Path(path)
    manifest = read_manifest(root)
    spec = family_by_name(manifest["family"])
    config = AutoConfig.from_pretrained(str(root))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(manifest["dtype"])
    if dtype is None:
        raise LayerbudgetError(f"{root / MANIFEST} names unsupported dtype {manifest['dtype']!r}")
    loader = AutoModel if spec.task == "encoder" else AutoModelForCausalLM
    model = loader.from_config(config, dtype=dtype)
    blocks = model.get_submodule(spec.blocks)
    rules = {kind: (p, rule) for kind, p, rule in spec.drop}
    for name in manifest["dropped"]:
        block, _, kind = name[len(spec.blocks) + 1:].partition(".")
        if kind not in rules:
            raise LayerbudgetError(f"{root / MANIFEST} drops {name!r}, which family {spec.name!r} cannot drop")
        sub_path, rule = rules[kind]
        target = blocks[int(block)]
        original = target.get_submodule(sub_path)
        _replace(target, sub_path, ZeroOutput(_out_features(original)) if rule == DROP_ZERO else ResidualPassthrough())
    tensors = load_file(str(root / WEIGHTS))
    packed_units: list[str] = []
    for unit, entry in manifest["units"].items():
        fmt = entry["format"]
        if fmt == "drop":
            try:
                model.get_submodule(unit)
            except AttributeError:
                continue  # replaced by its sub-block's drop rule
            _replace(model, unit, ZeroOutput(int(entry["shape"][0])))
        elif fmt == "variant":
            prefix = f"{unit}."
            own = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
            bias = own.pop("bias", None)
            try:
                weight = variant_weight(own, tuple(entry["shape"]))
            except (KeyError, ValueError, RuntimeError, LayerbudgetError) as exc:
                raise LayerbudgetError(f"checkpoint tensors of {unit} are damaged: {exc}") from None
            tensors[f"{unit}.weight"] = weight.t() if spec.transposed else weight
            if bias is not None:
                tensors[f"{unit}.bias"] = bias
        elif fmt in PACKED_FORMATS:
            prefix = f"{unit}."
            own = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
            bias = own.pop("bias", None)
            try:
                weight = _WEIGHTS[fmt].from_tensors(own)
            except ValueError as exc:
                raise LayerbudgetError(f"checkpoint tensors of {unit} are damaged: {exc}") from None
            if list(weight.shape) != list(entry["shape"]):
                raise LayerbudgetError(f"checkpoint stores {unit} with shape {weight.shape}, expected {entry['shape']}")
            _replace(model, unit, _MODULES[fmt].from_packed(weight, None if bias is None else bias.to(dtype)))
            packed_units.append(prefix)
    for alias, saved in manifest.get("aliases", {}).items():
        tensors[alias] = tensors[saved]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(packed_units))]  # loaded by from_packed
    if missing or unexpected:
        raise LayerbudgetError(
            f"checkpoint {str(path)!r} does not fit its config: {len(missing)} missing tensor(s) "
            f"{missing[:2]}, {len(unexpected)} unexpected {unexpected[:2]}"
        )
    return model.to(device).eval()
