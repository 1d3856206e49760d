"""Block-by-block calibration: streamed inputs, unit statistics, sub-block influence, output error."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from layerbudget.errors import LayerbudgetError
from layerbudget.options import parse_options
from layerbudget.profiles.calibration import first_block_inputs, outlier_ratio, output_error, run_block
from layerbudget.profiles.database import build_database, database_key, load_or_build_database
from layerbudget.profiles.hessian import HessianAccumulator

VOCAB = 320  # the tiny models' vocabulary (tests/conftest.py)


def _ids(n: int = 6, s: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, s), generator=torch.Generator().manual_seed(seed))


def test_streamed_block_inputs_match_a_full_forward(tiny):
    """Every family: running block by block reproduces what a full forward feeds each block."""
    ids = _ids()
    _, captured = tiny.capture(ids)
    stream = first_block_inputs(tiny, ids, batch_size=4)
    assert len(stream.hidden) == 2  # two batches (4 + 2 windows)
    for b in range(tiny.num_blocks):
        got = torch.cat(stream.hidden)
        assert torch.allclose(got, captured.hidden[b], atol=1e-5, rtol=1e-5), f"block {b}"
        stream = run_block(tiny, b, stream, units=False).outputs


def test_unit_statistics_equal_those_of_full_forward_hooks(tiny):
    ids = _ids()
    accs = {u.name: HessianAccumulator(u.shape[1]) for u in tiny.units}
    modules = dict(tiny.model.named_modules())
    handles = [
        modules[u.name].register_forward_pre_hook(lambda _m, a, n=u.name: accs[n].update(a[0])) for u in tiny.units
    ]
    try:
        tiny.forward(ids)
    finally:
        for h in handles:
            h.remove()
    stream = first_block_inputs(tiny, ids, batch_size=3)
    for b in range(tiny.num_blocks):
        bp = run_block(tiny, b, stream)
        assert set(bp.stats) == {u.name for u in tiny.units if u.block == b}
        for name, st in bp.stats.items():
            assert torch.allclose(st.hessian, accs[name].hessian().float(), rtol=1e-4, atol=1e-6)
            assert torch.allclose(st.x_sqnorm, accs[name].x_sqnorm().float(), rtol=1e-4, atol=1e-6)
        stream = bp.outputs


def test_influence_of_a_pre_ln_sub_block_is_its_residual_change(make_tiny):
    """Llama: influence = 1 − cos(residual before, residual after), computed here from hooks."""
    adapter = make_tiny("llama")
    ids = _ids(4)
    block = adapter.blocks[0]
    got: dict[str, torch.Tensor] = {}
    h1 = block.self_attn.o_proj.register_forward_hook(lambda _m, _a, out: got.__setitem__("attn", out))
    h2 = block.register_forward_pre_hook(
        lambda _m, args, kwargs: got.__setitem__("x", args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    h3 = block.register_forward_hook(lambda _m, _a, out: got.__setitem__("y", out[0] if isinstance(out, tuple) else out))
    try:
        adapter.forward(ids)
    finally:
        for h in (h1, h2, h3):
            h.remove()
    mid = got["x"] + got["attn"]
    want_attn = 1 - float(F.cosine_similarity(got["x"], mid, dim=-1).mean())
    want_mlp = 1 - float(F.cosine_similarity(mid, got["y"], dim=-1).mean())
    bp = run_block(adapter, 0, first_block_inputs(adapter, ids, 4), influence=True)
    assert bp.influence["model.layers.0.attn"] == pytest.approx(want_attn, rel=1e-4, abs=1e-6)
    assert bp.influence["model.layers.0.mlp"] == pytest.approx(want_mlp, rel=1e-4, abs=1e-6)
    # a sub-block that adds nothing has no influence
    stream = first_block_inputs(adapter, ids, 4)  # (restores the dense model first)
    adapter.set_weight("model.layers.0.self_attn.o_proj", torch.zeros(32, 32))
    bp = run_block(adapter, 0, stream, influence=True)
    assert bp.influence["model.layers.0.attn"] == pytest.approx(0.0, abs=1e-6)


def test_influence_of_a_post_ln_sub_block_uses_its_residual_input(make_tiny):
    adapter = make_tiny("bert")
    ids = _ids(4)
    bp = run_block(adapter, 0, first_block_inputs(adapter, ids, 4), influence=True)
    assert set(bp.influence) == {"encoder.layer.0.attn", "encoder.layer.0.mlp"}
    assert all(0 < v < 2 for v in bp.influence.values())


def test_output_error_matches_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 24, generator=gen)
    w = torch.randn(10, 24, generator=gen)
    w_hat = w + 0.1 * torch.randn(10, 24, generator=gen)
    acc = HessianAccumulator(24)
    acc.update(x)
    num, den = output_error(w, w_hat, acc.hessian())
    direct = float((x @ (w - w_hat).T).pow(2).sum()) / float((x @ w.T).pow(2).sum())
    assert num / den == pytest.approx(direct, rel=1e-5)


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    w = torch.ones(4, 10)
    w[0, 0] = 100.0
    assert outlier_ratio(w, torch.ones(10), m=5) == pytest.approx(1 / 40)
    assert outlier_ratio(torch.ones(4, 10), torch.ones(10), m=5) == 0.0


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory, make_tiny):
    adapter = make_tiny("llama")
    opts = parse_options(["dense", "rtn-b3-g32", "gptq-b3-g32", "wanda-0.5"])
    ids = _ids(8, 16)
    db, _ = load_or_build_database(adapter, opts, tmp_path_factory.mktemp("c"), calib=ids, batch_size=4, progress=False)
    return adapter, opts, ids, db


def test_database_records_output_error_influence_and_outliers(tiny_db):
    adapter, _, ids, db = tiny_db
    index = json.loads((db.root / "index.json").read_text())
    assert index["calibration"] == {"windows": 8, "tokens": 128, "inputs": "dense"}
    assert set(db.influence) == {sb.name for sb in adapter.subblocks}
    for u in adapter.units:
        errs = {o: db.output_error(u.name, o) for o in ("rtn-b3-g32", "gptq-b3-g32", "wanda-0.5")}
        assert all(0 < e < 1 for e in errs.values()), errs
        # GPTQ minimises exactly this error, so it beats round-to-nearest on it
        assert errs["gptq-b3-g32"] < errs["rtn-b3-g32"]
        assert 0 <= db.unit_stat(u.name, "outlier_ratio") < 1
        assert db.unit_stat(u.name, "output_norm") > 0


def test_compressed_inputs_change_later_blocks_only(tiny_db, tmp_path):
    adapter, opts, ids, dense_db = tiny_db
    seq_db, _ = load_or_build_database(adapter, opts, tmp_path, calib=ids, batch_size=4, inputs="compressed", progress=False)
    assert seq_db.key != dense_db.key
    for u in adapter.units:
        same = torch.equal(seq_db.weight(u.name, "gptq-b3-g32"), dense_db.weight(u.name, "gptq-b3-g32"))
        assert same == (u.block == 0), u.name  # block 0 sees the same inputs either way
        # options that use no calibration data do not depend on where inputs come from
        assert torch.equal(seq_db.weight(u.name, "rtn-b3-g32"), dense_db.weight(u.name, "rtn-b3-g32"))
    # the adapter is dense again afterwards
    assert all(torch.equal(adapter.dense_weight(u.name), dict(adapter.model.named_modules())[u.name].weight) for u in adapter.units)


def test_key_depends_on_calibration_and_input_mode(tiny_db):
    adapter, opts, _, _ = tiny_db
    rtn = parse_options(["dense", "rtn-b3-g32"])
    assert database_key(adapter, opts, "a") != database_key(adapter, opts, "b")
    assert database_key(adapter, opts, "a", "dense") != database_key(adapter, opts, "a", "compressed")
    # without a calibrated option the input mode changes nothing
    assert database_key(adapter, rtn, "a", "dense") == database_key(adapter, rtn, "a", "compressed")


def test_bad_input_to_the_database_build(make_tiny, tmp_path):
    adapter = make_tiny("llama")
    opts = parse_options(["dense", "gptq-b4-g32"])
    with pytest.raises(LayerbudgetError, match="need calibration data"):
        build_database(adapter, opts, tmp_path / "a", progress=False)
    with pytest.raises(LayerbudgetError, match="calibration inputs must be one of"):
        build_database(adapter, opts, tmp_path / "b", calib=_ids(), inputs="sideways", progress=False)
    name = adapter.units[3].name
    with torch.no_grad():
        dict(adapter.model.named_modules())[name].weight[0, 0] = float("nan")
    adapter._dense[name] = dict(adapter.model.named_modules())[name].weight.detach().clone()
    with pytest.raises(LayerbudgetError, match=f"unit {name} has NaN or Inf weights"):
        build_database(adapter, opts, tmp_path / "c", calib=_ids(), progress=False)
    assert not (tmp_path / "c").exists()


def test_nan_activations_are_reported(make_tiny, tmp_path):
    adapter = make_tiny("llama")
    with torch.no_grad():
        adapter.blocks[0].input_layernorm.weight.fill_(float("nan"))
    with pytest.raises(LayerbudgetError, match="NaN or Inf"):
        build_database(adapter, parse_options(["dense", "rtn-b4-g32"]), tmp_path / "d", calib=_ids(), progress=False)
    assert not (tmp_path / "d").exists()
