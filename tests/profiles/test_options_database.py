"""Option grammar and exact costs, compress/decode round trips, and the cached variant database."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.kernels.quant import quantize_groupwise
from layerbudget.options import parse_option, parse_options
from layerbudget.profiles.database import CorruptCache, load_or_build_database, open_database
from layerbudget.profiles.methods import UnitStats, compress, decode, load_codes, store_codes


@pytest.mark.parametrize(
    "name,bits_per_weight",
    [
        ("dense", 16.0),
        ("drop", 0.0),
        ("rtn-b4-g128", 4.25),
        ("gptq-b3-g64", 3.5),
        ("rtn-b8-gch", 8 + 32 / 256),
        ("magnitude-0.5", 9.0),
        ("wanda-2:4", 9.0),
        ("sparsegpt-2:4+gptq-b4-g128", 0.5 * 4 + 32 / 128 + 0.5 * 2),
    ],
)
def test_option_costs_include_metadata(name, bits_per_weight):
    assert parse_option(name).cost_bits((64, 256)) / (64 * 256) == pytest.approx(bits_per_weight)


@pytest.mark.parametrize("bad", ["rtn-b7-g128", "rtn-b4", "foo", "magnitude-1.5", "gptq-b4-g0", "x+y", "rtn-b4-g128+gptq-b4-g128"])
def test_bad_option_names(bad):
    with pytest.raises(LayerbudgetError):
        parse_option(bad)


def test_duplicate_options_and_applicability():
    with pytest.raises(LayerbudgetError, match="listed twice"):
        parse_options(["dense", "dense"])
    assert "does not divide" in parse_option("rtn-b4-g128").applies_to((8, 96))
    assert "divisible by 4" in parse_option("magnitude-2:4").applies_to((8, 6))
    assert parse_option("rtn-b4-g32").applies_to((8, 96)) is None


def _stats(k: int, seed: int = 0) -> UnitStats:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, k, generator=g) @ torch.randn(k, k, generator=g) * 0.3
    return UnitStats(hessian=2 * x.T @ x / len(x), x_sqnorm=(x * x).sum(0))


@pytest.mark.parametrize(
    "name",
    ["rtn-b3-g32", "gptq-b4-g32", "magnitude-0.7", "wanda-0.5", "sparsegpt-0.6", "magnitude-2:4", "sparsegpt-2:4+gptq-b4-g32", "wanda-0.5+rtn-b4-g32"],
)
def test_compress_decode_exact_zero_counts(name):
    opt = parse_option(name)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    tensors = compress(opt, w, _stats(64))
    what = decode(tensors, (16, 64))
    assert what.shape == (16, 64) and torch.isfinite(what).all()
    if opt.sparse:
        assert int((what == 0).sum()) >= opt.zeros((16, 64))
        mask = tensors["mask"]
        assert mask.numel() == (16 * 64 + 7) // 8
    if opt.pattern == "2:4":
        assert ((what.reshape(16, 16, 4) != 0).sum(-1) <= 2).all()
    if name == "rtn-b3-g32":
        codes, scales, zeros = quantize_groupwise(w, 3, 32)
        assert torch.equal(load_codes(tensors, (16, 64)), codes) and torch.equal(tensors["scales"], scales)
        assert tensors["packed"].numel() * 4 == 3 * 16 * 64 // 8  # exactly bits·N·K/8 bytes
    assert (what - w).pow(2).sum() < w.pow(2).sum()


def test_compress_errors():
    w = torch.randn(8, 64)
    with pytest.raises(LayerbudgetError, match="does not apply"):
        compress(parse_option("rtn-b4-g128"), w)
    with pytest.raises(LayerbudgetError, match="NaN or Inf"):
        compress(parse_option("rtn-b4-g32"), w.clone().fill_(float("nan")))
    with pytest.raises(LayerbudgetError, match="calibration statistics"):
        compress(parse_option("gptq-b4-g32"), w, None)


@pytest.fixture(scope="module")
def minilm_small_db(tmp_path_factory):
    from layerbudget.model import load_model

    adapter = load_model()
    cache = tmp_path_factory.mktemp("dbcache")
    opts = parse_options(["dense", "rtn-b4-g128", "magnitude-0.5", "rtn-b4-g768"])
    db, reused = load_or_build_database(adapter, opts, cache, progress=False)
    return adapter, opts, cache, db, reused


def test_database_build_reuse_and_skips(minilm_small_db):
    adapter, opts, cache, db, reused = minilm_small_db
    assert not reused
    unit = adapter.units[0].name
    assert db.unit_options(unit) == ["dense", "rtn-b4-g128", "magnitude-0.5"]
    # g1024 only divides K=1536 of the MLP down projections
    skipped = {(s["unit"], s["option"]) for s in db.skipped}
    assert (unit, "rtn-b4-g768") in skipped
    assert "encoder.layer.0.output.dense" in {u for u, o in skipped} ^ {u.name for u in adapter.units}
    w = db.weight(unit, "rtn-b4-g128")
    dense = adapter.dense_weight(unit)
    assert w.shape == dense.shape and 0 < float((w - dense).abs().max()) < 0.1
    db2, reused2 = load_or_build_database(adapter, opts, cache, progress=False)
    assert reused2 and db2.root == db.root
    assert torch.equal(db2.weight(unit, "rtn-b4-g128"), w)


def test_corrupted_database_is_detected_and_rebuilt(minilm_small_db, tmp_path, caplog):
    import shutil

    adapter, opts, _, db, _ = minilm_small_db
    cache = tmp_path / "c"
    shutil.copytree(db.root, cache / "db" / db.root.name)
    victim = cache / "db" / db.root.name / "units" / "0003.safetensors"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptCache, match="corrupted"):
        open_database(cache / "db" / db.root.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db3, reused = load_or_build_database(adapter, opts, cache, progress=False)
    assert not reused
    assert not [w for w in caught if "rebuilding" in str(w.message)]  # a plain notice, not a Python warning
    assert [r.getMessage() for r in caplog.records if r.name == "layerbudget"][-1].endswith("; rebuilding the database")
    db3.verify()
    index = json.loads((db3.root / "index.json").read_text())
    assert index["model"]["weight_hash"] == adapter.weight_hash()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("k", [64, 40])
def test_code_storage_is_exact_and_minimal(bits, k):
    codes = torch.randint(0, 2**bits, (6, k), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    stored = store_codes(codes, bits)
    assert torch.equal(load_codes(stored, (6, k)), codes)
    payload = stored.get("packed", stored.get("planes"))
    assert payload.numel() * payload.element_size() == -(-bits * 6 * k // 8)
