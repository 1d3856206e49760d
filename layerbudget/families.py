"""Model-family registry: where blocks, compressible Linear units, tie groups and sub-blocks live.

A family is data, not code paths: the dotted paths of the block list, of each unit inside a block
(with the sub-block it belongs to), the groups of units that deployment engines require to share
one scheme (q/k/v, gate/up), how a sub-block is dropped, and the modules applied after the last
block to turn hidden states into the fitness output (final norm + LM head for causal LMs).
"""

from __future__ import annotations

from dataclasses import dataclass

from layerbudget.errors import LayerbudgetError

ATTN = "attn"
MLP = "mlp"

# How a sub-block is dropped (replaced by the identity on the residual stream):
# - "zero": replace the named output projection by a module that returns zeros (pre-LN blocks,
#   where the sub-block's contribution is added to the residual stream);
# - "passthrough": replace the named module ``f(hidden, input_tensor)`` by one that returns
#   ``input_tensor`` (post-LN BERT blocks, where the module adds the residual and normalises).
DROP_ZERO = "zero"
DROP_PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class FamilySpec:
    """Where the parts of one model family live, relative to the loaded model or to one block."""

    name: str
    model_types: tuple[str, ...]
    task: str  # "encoder" (fitness on final hidden states) or "causal" (fitness on next-token logits)
    blocks: str  # dotted path of the nn.ModuleList of blocks
    units: tuple[tuple[str, str], ...]  # (path inside a block, sub-block) for every compressible unit
    ties: tuple[tuple[str, ...], ...]  # unit paths that must share one option
    drop: tuple[tuple[str, str, str], ...]  # (sub-block, module path inside a block, DROP_* rule)
    tail: tuple[str, ...] = ()  # dotted paths applied after the last block, in order (None skipped)
    transposed: bool = False  # GPT-2 Conv1D stores weights as [in, out]
    # config attributes under which dropping is not the identity (post-LN variants): (name, value)
    no_drop_when: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.task not in ("encoder", "causal"):
            raise ValueError(f"`task` must be 'encoder' or 'causal', but got {self.task!r}.")
        paths = {p for p, _ in self.units}
        for group in self.ties:
            missing = [p for p in group if p not in paths]
            if missing:
                raise ValueError(f"tie group {group} of family {self.name!r} names unknown units {missing}.")


    def drop_supported(self, config: object) -> bool:
        """False when this model's config makes dropping a sub-block something other than the identity."""
        return not any(getattr(config, k, None) == v for k, v in self.no_drop_when)


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to the registry (its name and model types must be new)."""
    if spec.name in _FAMILIES:
        raise ValueError(f"family {spec.name!r} is already registered.")
    _FAMILIES[spec.name] = spec
    return spec


def known_families() -> list[str]:
    return sorted(_FAMILIES)


def family_by_name(name: str) -> FamilySpec:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise LayerbudgetError(f"unknown model family {name!r}; known: {', '.join(known_families())}") from None


def family_for_model_type(model_type: str) -> FamilySpec:
    for spec in _FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    types = sorted(t for s in _FAMILIES.values() for t in s.model_types)
    raise LayerbudgetError(
        f"model type {model_type!r} is not supported; supported model types: {', '.join(types)}"
    )


register_family(
    FamilySpec(
        name="bert",
        model_types=("bert",),
        task="encoder",
        blocks="encoder.layer",
        units=(
            ("attention.self.query", ATTN),
            ("attention.self.key", ATTN),
            ("attention.self.value", ATTN),
            ("attention.output.dense", ATTN),
            ("intermediate.dense", MLP),
            ("output.dense", MLP),
        ),
        ties=(("attention.self.query", "attention.self.key", "attention.self.value"),),
        drop=((ATTN, "attention.output", DROP_PASSTHROUGH), (MLP, "output", DROP_PASSTHROUGH)),
    )
)

register_family(
    FamilySpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        task="causal",
        blocks="model.layers",
        units=(
            ("self_attn.q_proj", ATTN),
            ("self_attn.k_proj", ATTN),
            ("self_attn.v_proj", ATTN),
            ("self_attn.o_proj", ATTN),
            ("mlp.gate_proj", MLP),
            ("mlp.up_proj", MLP),
            ("mlp.down_proj", MLP),
        ),
        ties=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("mlp.gate_proj", "mlp.up_proj"),
        ),
        drop=((ATTN, "self_attn.o_proj", DROP_ZERO), (MLP, "mlp.down_proj", DROP_ZERO)),
        tail=("model.norm", "lm_head"),
    )
)

register_family(
    FamilySpec(
        name="gpt2",
        model_types=("gpt2",),
        task="causal",
        blocks="transformer.h",
        units=(("attn.c_attn", ATTN), ("attn.c_proj", ATTN), ("mlp.c_fc", MLP), ("mlp.c_proj", MLP)),
        ties=(),
        drop=((ATTN, "attn.c_proj", DROP_ZERO), (MLP, "mlp.c_proj", DROP_ZERO)),
        tail=("transformer.ln_f", "lm_head"),
        transposed=True,
    )
)

register_family(
    FamilySpec(
        name="opt",
        model_types=("opt",),
        task="causal",
        blocks="model.decoder.layers",
        units=(
            ("self_attn.q_proj", ATTN),
            ("self_attn.k_proj", ATTN),
            ("self_attn.v_proj", ATTN),
            ("self_attn.out_proj", ATTN),
            ("fc1", MLP),
            ("fc2", MLP),
        ),
        ties=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),),
        drop=((ATTN, "self_attn.out_proj", DROP_ZERO), (MLP, "fc2", DROP_ZERO)),
        tail=("model.decoder.final_layer_norm", "model.decoder.project_out", "lm_head"),
        no_drop_when=(("do_layer_norm_before", False),),  # post-LN OPT (e.g. opt-350m)
    )
)
