"""Tests for the model adapter: units, tie groups, sub-blocks, weight swapping, drops, restarts, hashes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.families import family_by_name, family_for_model_type, known_families
from layerbudget.model import DEFAULT_MODEL_NAME, BlockInputs, ModelAdapter, load_model, resolve_model_path

BLOCKS = 2
SEQ = 12

# Per kind: the block list path, then (path inside a block, sub-block, [N, K]) for every unit in order.
LLAMA_UNITS = [
    ("self_attn.q_proj", "attn", (32, 32)),
    ("self_attn.k_proj", "attn", (16, 32)),  # 2 KV heads of 8
    ("self_attn.v_proj", "attn", (16, 32)),
    ("self_attn.o_proj", "attn", (32, 32)),
    ("mlp.gate_proj", "mlp", (64, 32)),
    ("mlp.up_proj", "mlp", (64, 32)),
    ("mlp.down_proj", "mlp", (32, 64)),
]
EXPECTED_UNITS: dict[str, tuple[str, list[tuple[str, str, tuple[int, int]]]]] = {
    "llama": ("model.layers", LLAMA_UNITS),
    "mistral": ("model.layers", LLAMA_UNITS),
    "qwen2": ("model.layers", LLAMA_UNITS),
    "qwen3": ("model.layers", LLAMA_UNITS),
    "gpt2": (
        "transformer.h",
        [
            ("attn.c_attn", "attn", (96, 32)),  # Conv1D stores [32, 96]
            ("attn.c_proj", "attn", (32, 32)),
            ("mlp.c_fc", "mlp", (64, 32)),  # Conv1D stores [32, 64]
            ("mlp.c_proj", "mlp", (32, 64)),  # Conv1D stores [64, 32]
        ],
    ),
    "opt": (
        "model.decoder.layers",
        [
            ("self_attn.q_proj", "attn", (32, 32)),
            ("self_attn.k_proj", "attn", (32, 32)),
            ("self_attn.v_proj", "attn", (32, 32)),
            ("self_attn.out_proj", "attn", (32, 32)),
            ("fc1", "mlp", (64, 32)),
            ("fc2", "mlp", (32, 64)),
        ],
    ),
    "bert": (
        "encoder.layer",
        [
            ("attention.self.query", "attn", (32, 32)),
            ("attention.self.key", "attn", (32, 32)),
            ("attention.self.value", "attn", (32, 32)),
            ("attention.output.dense", "attn", (32, 32)),
            ("intermediate.dense", "mlp", (64, 32)),
            ("output.dense", "mlp", (32, 64)),
        ],
    ),
}
LLAMA_GROUPS = [
    "self_attn.{q_proj,k_proj,v_proj}",
    "self_attn.o_proj",
    "mlp.{gate_proj,up_proj}",
    "mlp.down_proj",
]
# Per kind: the group names inside one block, in order (tied groups first appear at their first unit).
EXPECTED_GROUPS: dict[str, list[str]] = {
    "llama": LLAMA_GROUPS,
    "mistral": LLAMA_GROUPS,
    "qwen2": LLAMA_GROUPS,
    "qwen3": LLAMA_GROUPS,
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "opt": ["self_attn.{q_proj,k_proj,v_proj}", "self_attn.out_proj", "fc1", "fc2"],
    "bert": [
        "attention.self.{query,key,value}",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
}
FAMILY_OF = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gpt2": "gpt2",
    "opt": "opt",
    "bert": "bert",
}

# Kinds whose dropped sub-blocks take parameters other than the unit weight out of the model
# (output-projection biases, BERT's LayerNorm): see test_weight_hash_ignores_dropped_sub_blocks.


def token_ids(n_batch: int = 2, seq: int = SEQ, vocab: int = 300, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[B, S]`` that avoid id 0/1 (used as BOS/pad by the tiny configs)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (n_batch, seq), generator=g)


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert sorted(state) == sorted(snapshot)
    for name, tensor in snapshot.items():
        assert torch.equal(state[name], tensor), f"parameter {name} differs from the dense model"


def random_weight(shape: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def block_io(adapter: ModelAdapter, block: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden-state input, hidden-state output) of one block during ``adapter.forward(ids)``."""
    seen: dict[str, torch.Tensor] = {}

    def pre(_m, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).clone()

    def post(_m, _args, _kwargs, out):
        seen["out"] = (out[0] if isinstance(out, tuple) else out).clone()

    mod = adapter.blocks[block]
    handles = [
        mod.register_forward_pre_hook(pre, with_kwargs=True),
        mod.register_forward_hook(post, with_kwargs=True),
    ]
    try:
        adapter.forward(ids)
    finally:
        for h in handles:
            h.remove()
    return seen["in"], seen["out"]


# ---- structure -------------------------------------------------------------------------------------


def test_units_are_named_in_block_order_with_out_in_shapes(tiny, tiny_kind) -> None:
    blocks, units = EXPECTED_UNITS[tiny_kind]
    expected = [
        (f"{blocks}.{b}.{path}", b, f"{blocks}.{b}.{sub}", shape)
        for b in range(BLOCKS)
        for path, sub, shape in units
    ]
    assert [(u.name, u.block, u.subblock, u.shape) for u in tiny.units] == expected
    assert tiny.num_blocks == BLOCKS
    assert tiny.spec.name == FAMILY_OF[tiny_kind]
    assert tiny.task == ("encoder" if tiny_kind == "bert" else "causal")
    for u in tiny.units:
        assert u.numel == u.shape[0] * u.shape[1]
        assert tiny.unit(u.name) == u


def test_unit_shapes_follow_the_stored_weight(tiny, tiny_kind) -> None:
    """``[N, K]`` is the stored shape for nn.Linear and its transpose for GPT-2's Conv1D."""
    for u in tiny.units:
        stored = tuple(tiny.model.get_submodule(u.name).weight.shape)
        assert u.shape == (stored[::-1] if tiny_kind == "gpt2" else stored)
    if tiny_kind == "gpt2":
        assert tuple(tiny.model.get_submodule("transformer.h.0.attn.c_attn").weight.shape) == (32, 96)
        assert tiny.unit("transformer.h.0.attn.c_attn").shape == (96, 32)


def test_dense_weight_is_out_in_in_every_family(tiny) -> None:
    """``module(x) == x @ W.T + b`` with ``W = dense_weight(name)``, including GPT-2's Conv1D."""
    for u in tiny.units:
        module = tiny.model.get_submodule(u.name)
        w = tiny.dense_weight(u.name)
        assert w.dtype == torch.float32 and tuple(w.shape) == u.shape and w.is_contiguous()
        xin = torch.randn(3, 5, u.shape[1], generator=torch.Generator().manual_seed(1))  # [B, S, K]
        bias = module.bias if module.bias is not None else 0.0
        with torch.no_grad():
            torch.testing.assert_close(module(xin), xin @ w.T + bias, atol=1e-5, rtol=1e-5)


def test_tie_groups_per_family(tiny, tiny_kind) -> None:
    blocks, _ = EXPECTED_UNITS[tiny_kind]
    expected = [f"{blocks}.{b}.{g}" for b in range(BLOCKS) for g in EXPECTED_GROUPS[tiny_kind]]
    assert [g.name for g in tiny.groups] == expected
    # every unit is in exactly one group, and a group never spans blocks or sub-blocks
    members = [u.name for g in tiny.groups for u in g.units]
    assert sorted(members) == sorted(u.name for u in tiny.units)
    for g in tiny.groups:
        assert {u.block for u in g.units} == {g.block}
        assert {u.subblock for u in g.units} == {g.subblock}
        assert g.numel == sum(u.numel for u in g.units)
    sizes = [len(g.units) for g in tiny.groups[: len(EXPECTED_GROUPS[tiny_kind])]]
    assert sizes == {
        "gpt2": [1, 1, 1, 1],
        "opt": [3, 1, 1, 1],
        "bert": [3, 1, 1, 1],
    }.get(tiny_kind, [3, 1, 2, 1])


def test_qkv_and_gate_up_are_tied(tiny, tiny_kind) -> None:
    blocks, _ = EXPECTED_UNITS[tiny_kind]
    by_name = {g.name: g for g in tiny.groups}
    if tiny_kind == "gpt2":
        assert all(len(g.units) == 1 for g in tiny.groups)
        return
    if tiny_kind == "bert":
        qkv = ["attention.self.query", "attention.self.key", "attention.self.value"]
        group = by_name[f"{blocks}.1.attention.self.{{query,key,value}}"]
    else:
        qkv = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
        group = by_name[f"{blocks}.1.self_attn.{{q_proj,k_proj,v_proj}}"]
    assert [u.name for u in group.units] == [f"{blocks}.1.{p}" for p in qkv]
    if FAMILY_OF[tiny_kind] == "llama":
        gate_up = by_name[f"{blocks}.1.mlp.{{gate_proj,up_proj}}"]
        assert [u.name for u in gate_up.units] == [f"{blocks}.1.mlp.gate_proj", f"{blocks}.1.mlp.up_proj"]


def test_tie_false_gives_one_group_per_unit(tiny, tiny_kind) -> None:
    untied = ModelAdapter(tiny.model, FAMILY_OF[tiny_kind], tie=False)
    assert [g.name for g in untied.groups] == [u.name for u in untied.units]
    assert all(len(g.units) == 1 for g in untied.groups)


def test_subblocks_per_family(tiny, tiny_kind) -> None:
    blocks, units = EXPECTED_UNITS[tiny_kind]
    expected = [(f"{blocks}.{b}.{kind}", b, kind) for b in range(BLOCKS) for kind in ("attn", "mlp")]
    assert [(s.name, s.block, s.kind) for s in tiny.subblocks] == expected
    for sb in tiny.subblocks:
        assert sb.units == tuple(f"{blocks}.{sb.block}.{p}" for p, sub, _ in units if sub == sb.kind)
        assert tiny.subblock(sb.name) is sb


def test_minilm_structure(minilm) -> None:
    assert minilm.spec.name == "bert" and minilm.task == "encoder"
    assert minilm.model_id == DEFAULT_MODEL_NAME
    assert minilm.tokenizer is not None
    assert minilm.num_blocks == 6
    assert len(minilm.units) == 36
    assert len(minilm.groups) == 24
    assert len(minilm.subblocks) == 12
    assert minilm.units[0].name == "encoder.layer.0.attention.self.query"
    shapes = {u.name.split(".", 3)[3]: u.shape for u in minilm.units if u.block == 0}
    assert shapes == {
        "attention.self.query": (384, 384),
        "attention.self.key": (384, 384),
        "attention.self.value": (384, 384),
        "attention.output.dense": (384, 384),
        "intermediate.dense": (1536, 384),
        "output.dense": (384, 1536),
    }
    for b in range(6):
        names = [g.name for g in minilm.groups if g.block == b]
        assert names == [
            f"encoder.layer.{b}.attention.self.{{query,key,value}}",
            f"encoder.layer.{b}.attention.output.dense",
            f"encoder.layer.{b}.intermediate.dense",
            f"encoder.layer.{b}.output.dense",
        ]
    assert [s.name for s in minilm.subblocks] == [
        f"encoder.layer.{b}.{k}" for b in range(6) for k in ("attn", "mlp")
    ]


def test_unknown_unit_and_subblock_names_raise(tiny) -> None:
    with pytest.raises(LayerbudgetError, match="no unit 'nope'"):
        tiny.unit("nope")
    with pytest.raises(LayerbudgetError, match="no unit"):
        tiny.restore_weight("nope")
    with pytest.raises(LayerbudgetError, match="no unit"):
        tiny.dense_weight("nope")
    with pytest.raises(LayerbudgetError, match="no droppable sub-block 'nope'"):
        tiny.subblock("nope")
    with pytest.raises(LayerbudgetError, match="no droppable sub-block"):
        tiny.drop(tiny.units[0].name)  # a unit is not a sub-block


def test_adapter_rejects_unknown_or_mismatched_family(make_tiny) -> None:
    model = make_tiny("llama").model
    with pytest.raises(LayerbudgetError, match=r"unknown model family 'nope'; known: bert, gpt2, llama, opt"):
        ModelAdapter(model, "nope")
    with pytest.raises(LayerbudgetError, match=r"no blocks at 'transformer.h'"):
        ModelAdapter(model, "gpt2")


def test_family_registry_errors_list_known_names() -> None:
    assert known_families() == ["bert", "gpt2", "llama", "opt"]
    with pytest.raises(LayerbudgetError, match="known: bert, gpt2, llama, opt"):
        family_by_name("falcon")
    with pytest.raises(
        LayerbudgetError, match="supported model types: bert, gpt2, llama, mistral, opt, qwen2"
    ):
        family_for_model_type("t5")
    assert family_for_model_type("mistral").name == "llama"


# ---- weight swapping -------------------------------------------------------------------------------


def test_set_weight_changes_output_and_restore_weight_is_exact(tiny) -> None:
    ids = token_ids()
    ref = tiny.forward(ids)
    snapshot = state_snapshot(tiny.model)
    for i, u in enumerate(tiny.units):
        tiny.set_weight(u.name, random_weight(u.shape, seed=i))
        changed = tiny.forward(ids)
        assert not torch.allclose(changed, ref, atol=1e-6), f"set_weight({u.name}) did not change the output"
        tiny.restore_weight(u.name)
        assert torch.equal(tiny.forward(ids), ref), f"restore_weight({u.name}) is not exact"
    assert_state_equal(tiny.model, snapshot)


def test_set_weight_uses_out_in_orientation(tiny) -> None:
    """After ``set_weight(name, W)`` the module computes ``x @ W.T + b`` (GPT-2 Conv1D included)."""
    for i, u in enumerate(tiny.units):
        w = random_weight(u.shape, seed=10 + i)
        tiny.set_weight(u.name, w)
        module = tiny.model.get_submodule(u.name)
        x = torch.randn(4, u.shape[1], generator=torch.Generator().manual_seed(i))
        bias = module.bias if module.bias is not None else 0.0
        with torch.no_grad():
            torch.testing.assert_close(module(x), x @ w.T + bias, atol=1e-5, rtol=1e-5)
        # dense_weight still returns the original, not the swapped weight
        assert not torch.equal(tiny.dense_weight(u.name), w)


def test_restore_brings_back_every_weight_and_sub_block(tiny) -> None:
    ids = token_ids()
    ref = tiny.forward(ids)
    snapshot = state_snapshot(tiny.model)
    modules = {name: mod for name, mod in tiny.model.named_modules()}
    for i, u in enumerate(tiny.units):
        tiny.set_weight(u.name, random_weight(u.shape, seed=100 + i))
    for sb in tiny.subblocks[:2]:
        tiny.drop(sb.name)
    assert not torch.allclose(tiny.forward(ids), ref, atol=1e-6)
    tiny.restore()
    assert tiny.dropped == frozenset()
    assert torch.equal(tiny.forward(ids), ref)
    assert_state_equal(tiny.model, snapshot)
    assert {name: mod for name, mod in tiny.model.named_modules()} == modules  # the original module objects


def test_set_weight_rejects_wrong_shapes(tiny, tiny_kind) -> None:
    for u in tiny.units:
        n, k = u.shape
        bad_shapes = [(n + 1, k), (n, k - 1), (n * k,)]
        if n != k:
            bad_shapes.append((k, n))  # e.g. the Conv1D storage orientation for GPT-2
        for shape in bad_shapes:
            with pytest.raises(LayerbudgetError, match=rf"{u.name} must have shape \({n}, {k}\)"):
                tiny.set_weight(u.name, torch.zeros(shape))
    with pytest.raises(LayerbudgetError, match="no unit"):
        tiny.set_weight("nope", torch.zeros(2, 2))


def test_set_weight_rejects_wrong_shape_on_minilm(minilm_clean) -> None:
    name = "encoder.layer.0.intermediate.dense"
    with pytest.raises(LayerbudgetError, match=r"must have shape \(1536, 384\), but got \(384, 1536\)"):
        minilm_clean.set_weight(name, torch.zeros(384, 1536))


@pytest.mark.parametrize(
    "kind",
    [
        k
        for k in ("llama", "mistral", "qwen2", "qwen3", "gpt2", "opt", "bert")
    ],
)
def test_dense_weight_is_a_copy(make_tiny, kind: str) -> None:
    adapter = make_tiny(kind)
    ids = token_ids()
    ref = adapter.forward(ids)
    name = adapter.units[0].name
    live = adapter.model.get_submodule(name).weight.detach().clone()
    original = adapter.dense_weight(name)
    w = adapter.dense_weight(name)
    w.add_(1.0)  # mutate the returned tensor
    assert torch.equal(adapter.model.get_submodule(name).weight, live)  # the model is untouched
    assert torch.equal(adapter.dense_weight(name), original)  # and so is the dense reference
    adapter.set_weight(name, torch.zeros(adapter.unit(name).shape))
    adapter.restore()
    assert torch.equal(adapter.forward(ids), ref)


# ---- dropping sub-blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [0, 1], ids=["block0", "block1"])
def test_dropping_both_sub_blocks_makes_the_block_the_identity(tiny, block: int) -> None:
    ids = token_ids()
    x, y = block_io(tiny, block, ids)
    assert not torch.allclose(x, y), "the dense block must not be the identity already"
    for kind in ("attn", "mlp"):  # one sub-block alone is not the identity
        tiny.drop(f"{tiny.spec.blocks}.{block}.{kind}")
        _, y_one = block_io(tiny, block, ids)
        assert not torch.allclose(y_one, x), f"dropping only {kind} must keep the other sub-block's output"
        tiny.undrop(f"{tiny.spec.blocks}.{block}.{kind}")
    tiny.drop(f"{tiny.spec.blocks}.{block}.attn")
    tiny.drop(f"{tiny.spec.blocks}.{block}.mlp")
    assert tiny.dropped == {f"{tiny.spec.blocks}.{block}.attn", f"{tiny.spec.blocks}.{block}.mlp"}
    x2, y2 = block_io(tiny, block, ids)
    if block == 0:
        assert torch.equal(x2, x)  # nothing before block 0 changed
    assert torch.equal(y2, x2), "a block with both sub-blocks dropped must pass its input through"


@pytest.mark.parametrize("block", [0, 1], ids=["block0", "block1"])
@pytest.mark.parametrize("kept", ["attn", "mlp"])
def test_dropping_one_sub_block_leaves_input_plus_the_others_output(
    make_tiny, causal_kind, block: int, kept: str
) -> None:
    """Pre-LN: with one sub-block dropped the block is ``x + out`` (``out``: the kept sub-block's projection)."""
    tiny = make_tiny(causal_kind)
    blocks = tiny.spec.blocks
    other = "mlp" if kept == "attn" else "attn"
    kept_path = {kind: path for kind, path, _ in tiny.spec.drop}[kept]
    tiny.drop(f"{blocks}.{block}.{other}")
    seen: dict[str, torch.Tensor] = {}
    projection = tiny.blocks[block].get_submodule(kept_path)
    handle = projection.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out.clone()))
    try:
        x, y = block_io(tiny, block, token_ids())
    finally:
        handle.remove()
    assert not torch.allclose(seen["out"], torch.zeros_like(seen["out"]))
    out = seen["out"].view_as(x)  # OPT runs its MLP on [B*S, D]
    torch.testing.assert_close(y, x + out, atol=1e-6, rtol=0)


def test_undrop_and_restore_bring_back_the_exact_outputs(tiny) -> None:
    ids = token_ids()
    ref = tiny.forward(ids)
    snapshot = state_snapshot(tiny.model)
    for sb in tiny.subblocks:
        tiny.drop(sb.name)
        tiny.drop(sb.name)  # idempotent
        assert tiny.dropped == {sb.name}
        assert not torch.allclose(tiny.forward(ids), ref, atol=1e-6), f"dropping {sb.name} changed nothing"
        tiny.undrop(sb.name)
        tiny.undrop(sb.name)  # no-op once undropped
        assert tiny.dropped == frozenset()
        assert torch.equal(tiny.forward(ids), ref)
    for sb in tiny.subblocks:
        tiny.drop(sb.name)
    assert tiny.dropped == {sb.name for sb in tiny.subblocks}
    tiny.restore()
    assert torch.equal(tiny.forward(ids), ref)
    assert_state_equal(tiny.model, snapshot)


def test_minilm_drop_both_sub_blocks_is_identity_and_restores(minilm_clean) -> None:
    ids = token_ids(seq=10, vocab=30000)
    ref = minilm_clean.forward(ids)
    minilm_clean.drop("encoder.layer.2.attn")
    minilm_clean.drop("encoder.layer.2.mlp")
    x, y = block_io(minilm_clean, 2, ids)
    assert torch.equal(x, y)
    minilm_clean.restore()
    assert minilm_clean.dropped == frozenset()
    assert torch.equal(minilm_clean.forward(ids), ref)


def test_post_ln_opt_has_no_droppable_sub_blocks(make_tiny) -> None:
    """Dropping is the identity only for pre-LN OPT; post-LN OPT (opt-350m) refuses it."""
    adapter = make_tiny("opt", do_layer_norm_before=False)
    assert adapter.subblocks == []
    with pytest.raises(LayerbudgetError, match="no droppable sub-block"):
        adapter.drop("model.decoder.layers.0.attn")


# ---- capture and forward_from ----------------------------------------------------------------------


def test_forward_from_every_start_equals_forward(tiny) -> None:
    ids = token_ids()
    ref = tiny.forward(ids)
    out, inputs = tiny.capture(ids)
    assert torch.equal(out, ref)
    width = 32
    assert len(inputs.hidden) == len(inputs.calls) == tiny.num_blocks
    for h in inputs.hidden:
        assert tuple(h.shape) == (2, SEQ, width)
    assert ref.shape[-1] == (width if tiny.task == "encoder" else tiny.model.config.vocab_size)
    for start in range(tiny.num_blocks):
        torch.testing.assert_close(tiny.forward_from(start, inputs), ref, atol=1e-6, rtol=0)


def test_forward_from_records_the_block_inputs_it_computes(tiny) -> None:
    ids = token_ids()
    _, inputs = tiny.capture(ids)
    for start in range(tiny.num_blocks):
        record: list = [None] * tiny.num_blocks
        out = tiny.forward_from(start, inputs, record)
        assert torch.equal(out, tiny.forward_from(start, inputs))
        assert record[:start] == [None] * start and record[start] is inputs.hidden[start]
        for i in range(start, tiny.num_blocks):
            torch.testing.assert_close(record[i], inputs.hidden[i], atol=1e-6, rtol=0)
            # restarting from a recorded input is the same computation: bit-identical output
            restart = BlockInputs(inputs.hidden[:start] + record[start:], inputs.calls)
            assert torch.equal(tiny.forward_from(i, restart), out)


@pytest.mark.parametrize("block", [0, 1], ids=["block0", "block1"])
def test_forward_from_after_a_change_in_that_block(tiny, block: int) -> None:
    ids = token_ids()
    dense_out, dense_inputs = tiny.capture(ids)
    unit = next(u for u in tiny.units if u.block == block and u.subblock.endswith("mlp"))
    tiny.set_weight(unit.name, random_weight(unit.shape, seed=7))
    changed = tiny.forward(ids)
    assert not torch.allclose(changed, dense_out, atol=1e-6)
    torch.testing.assert_close(tiny.forward_from(block, dense_inputs), changed, atol=1e-6, rtol=0)
    # a dropped sub-block in that block as well
    tiny.drop(f"{tiny.spec.blocks}.{block}.attn")
    changed = tiny.forward(ids)
    torch.testing.assert_close(tiny.forward_from(block, dense_inputs), changed, atol=1e-6, rtol=0)
    tiny.restore()
    torch.testing.assert_close(tiny.forward_from(0, dense_inputs), dense_out, atol=1e-6, rtol=0)


def test_minilm_forward_from_every_start_and_after_a_change(minilm_clean) -> None:
    ids = token_ids(seq=10, vocab=30000, seed=3)
    ref = minilm_clean.forward(ids)
    out, inputs = minilm_clean.capture(ids)
    assert torch.equal(out, ref)
    assert tuple(ref.shape) == (2, 10, 384)
    for start in range(minilm_clean.num_blocks):
        torch.testing.assert_close(minilm_clean.forward_from(start, inputs), ref, atol=1e-6, rtol=0)
    name = "encoder.layer.4.output.dense"
    minilm_clean.set_weight(name, minilm_clean.dense_weight(name) * 0.5)
    changed = minilm_clean.forward(ids)
    assert not torch.allclose(changed, ref, atol=1e-5)
    torch.testing.assert_close(minilm_clean.forward_from(4, inputs), changed, atol=1e-6, rtol=0)


# ---- hashes and parameter counts -------------------------------------------------------------------


def test_weight_hash_is_stable_and_sensitive(make_tiny, tiny_kind) -> None:
    a, b = make_tiny(tiny_kind), make_tiny(tiny_kind)
    h = a.weight_hash()
    assert re.fullmatch("[0-9a-f]{64}", h)
    assert b.weight_hash() == h
    assert make_tiny(tiny_kind, seed=1).weight_hash() != h
    # one unit weight differs by one element
    model = copy.deepcopy(a.model)
    with torch.no_grad():
        model.get_submodule(a.units[-1].name).weight.view(-1)[3] += 1e-3
    assert ModelAdapter(model, a.spec).weight_hash() != h
    # one non-unit parameter differs (the first norm/embedding parameter)
    model = copy.deepcopy(a.model)
    unit_params = {f"{u.name}.weight" for u in a.units}
    pname = next(n for n, _ in model.named_parameters() if n not in unit_params)
    with torch.no_grad():
        model.get_parameter(pname).view(-1)[0] += 1e-3
    assert ModelAdapter(model, a.spec).weight_hash() != h


def test_weight_hash_uses_dense_weights_while_a_unit_is_swapped(make_tiny, tiny_kind) -> None:
    reference = make_tiny(tiny_kind).weight_hash()
    adapter = make_tiny(tiny_kind)
    for i, u in enumerate(adapter.units):
        adapter.set_weight(u.name, random_weight(u.shape, seed=i))
    assert adapter.weight_hash() == reference  # first computed while swapped
    adapter.restore()
    assert adapter.weight_hash() == reference


@pytest.mark.parametrize(
    "kind",
    [
        k
        for k in ("llama", "qwen2", "gpt2", "opt", "bert")
    ],
)
def test_weight_hash_ignores_dropped_sub_blocks(make_tiny, kind: str) -> None:
    reference = make_tiny(kind).weight_hash()
    adapter = make_tiny(kind)
    for sb in adapter.subblocks:
        adapter.drop(sb.name)
    assert adapter.weight_hash() == reference


def test_minilm_weight_hash_is_stable_across_constructions(minilm_clean) -> None:
    h = minilm_clean.weight_hash()
    again = ModelAdapter(copy.deepcopy(minilm_clean.model), "bert")
    assert again.weight_hash() == h
    name = "encoder.layer.5.attention.self.key"
    minilm_clean.set_weight(name, torch.zeros(384, 384))
    fresh = ModelAdapter(copy.deepcopy(minilm_clean.model), "bert")  # built from the swapped weights
    assert fresh.weight_hash() != h
    assert minilm_clean.weight_hash() == h


def _unique_param_count(model: torch.nn.Module) -> int:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def test_non_unit_numel_plus_units_is_the_parameter_count(tiny) -> None:
    total = _unique_param_count(tiny.model)
    units = sum(u.numel for u in tiny.units)
    assert tiny.non_unit_numel() + units == total
    assert units == sum(tiny.model.get_submodule(u.name).weight.numel() for u in tiny.units)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_non_unit_numel_counts_tied_embeddings_once(make_tiny, causal_kind, tied: bool) -> None:
    adapter = make_tiny(causal_kind, tie_word_embeddings=tied)
    model = adapter.model
    emb = model.get_input_embeddings().weight
    assert (model.get_output_embeddings().weight is emb) == tied
    units = sum(u.numel for u in adapter.units)
    assert adapter.non_unit_numel() + units == _unique_param_count(model)
    untied_total = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert adapter.non_unit_numel() + units == untied_total - (emb.numel() if tied else 0)


def test_minilm_non_unit_numel(minilm) -> None:
    total = _unique_param_count(minilm.model)
    units = sum(u.numel for u in minilm.units)
    assert units == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert minilm.non_unit_numel() + units == total
    assert 22_000_000 < total < 23_000_000


# ---- resolving and loading -------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [None, "", "default"], ids=["none", "empty", "default"])
def test_resolve_default_is_the_embedded_minilm(model_id) -> None:
    path = Path(resolve_model_path(model_id))
    assert (path / "config.json").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "bert"


@pytest.mark.parametrize(
    "model_id",
    ["./no/such/dir", "/no/such/dir", "~/no/such/layerbudget-dir", "no/such/dir"],
    ids=["relative", "absolute", "home", "nested"],
)
def test_missing_local_path_raises_naming_it(model_id: str) -> None:
    with pytest.raises(LayerbudgetError, match="does not exist") as info:
        resolve_model_path(model_id)
    assert repr(model_id) in str(info.value)
    with pytest.raises(LayerbudgetError, match="does not exist"):
        load_model(model_id)


def test_hub_id_passes_through_resolution() -> None:
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"


def test_directory_without_config_json_raises(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(LayerbudgetError, match="has no config.json") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    with pytest.raises(LayerbudgetError, match="has no config.json"):
        resolve_model_path(str(tmp_path / "weights.bin"))  # a file, not a model directory


SUPPORTED_TYPES = ("bert", "gpt2", "llama", "mistral", "opt", "qwen2", "qwen3")


def test_unsupported_model_type_lists_supported_types(tmp_path: Path) -> None:
    from transformers import T5Config

    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(LayerbudgetError, match="model type 't5' is not supported") as info:
        load_model(str(tmp_path))
    for t in SUPPORTED_TYPES:
        assert t in str(info.value)


def test_hand_written_unsupported_config_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(LayerbudgetError, match=r"not supported; supported model types: bert, gpt2, llama"):
        load_model(str(tmp_path))


def test_unreadable_config_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LayerbudgetError, match="could not load model"):
        load_model(str(tmp_path))


@pytest.fixture
def saved_tiny(tmp_path: Path, make_tiny, gpt2_tokenizer):
    """Factory: save a tiny model of ``kind`` and the tiny tokenizer to a directory; returns (adapter, dir)."""

    def save(kind: str, with_tokenizer: bool = True):
        adapter = make_tiny(kind)
        path = tmp_path / kind
        adapter.model.save_pretrained(path)
        if with_tokenizer:
            gpt2_tokenizer.save_pretrained(path)
        return adapter, path

    return save


def test_load_model_round_trip(saved_tiny, tiny_kind) -> None:
    adapter, path = saved_tiny(tiny_kind)
    loaded = load_model(str(path))
    assert loaded.spec.name == FAMILY_OF[tiny_kind]
    assert loaded.model_id == str(path)
    assert loaded.tokenizer is not None
    assert [u.name for u in loaded.units] == [u.name for u in adapter.units]
    assert loaded.weight_hash() == adapter.weight_hash()
    ids = token_ids()
    torch.testing.assert_close(loaded.forward(ids), adapter.forward(ids), atol=1e-6, rtol=0)


def test_load_model_family_and_dtype_options(saved_tiny) -> None:
    _, path = saved_tiny("mistral")
    assert load_model(str(path), family="llama").spec.name == "llama"
    with pytest.raises(LayerbudgetError, match=r"unknown model family 'nope'; known: bert, gpt2, llama, opt"):
        load_model(str(path), family="nope")
    with pytest.raises(LayerbudgetError, match=r"model.family is 'gpt2', but model .* has model type 'mistral', "
                       r"which is family 'llama'; use family = 'auto' or 'llama'"):
        load_model(str(path), family="gpt2")
    with pytest.raises(LayerbudgetError, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
        load_model(str(path), dtype="int8")
    half = load_model(str(path), dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    name = half.units[0].name
    assert half.dense_weight(name).dtype == torch.float32


def test_model_directory_without_tokenizer(saved_tiny) -> None:
    adapter, path = saved_tiny("llama", with_tokenizer=False)
    try:
        loaded = load_model(str(path))
    except LayerbudgetError as exc:
        assert "tokenizer" in str(exc)
    else:  # loading without a tokenizer is acceptable too
        assert loaded.weight_hash() == adapter.weight_hash()
