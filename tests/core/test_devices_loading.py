"""Device names checked when the config loads, and damaged model directories as one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.config import config_from_dict
from layerbudget.hf_load import check_device_name, check_family, first_line, require_device
from layerbudget.model import load_model


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:7", "mps", "xpu:1"])
def test_device_names_torch_can_use_are_accepted(name):
    check_device_name(name)
    assert config_from_dict({"model": {"device": name}}).model.device == name


@pytest.mark.parametrize("name", ["tpu9", "gpu", "cuda:", "cuda:-1", "CUDA", "cpu:1", "cuda:0:1", ""])
def test_other_device_names_are_refused_when_the_config_loads(name):
    with pytest.raises(LayerbudgetError, match=r"model.device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'"):
        config_from_dict({"model": {"device": name}})


def test_a_device_this_torch_cannot_use_is_refused_before_loading():
    require_device("cpu")
    if torch.version.cuda is None:
        with pytest.raises(LayerbudgetError, match=r"built without CUDA; use device = 'cpu'"):
            require_device("cuda")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(LayerbudgetError, match="model.device is 'cuda:"):
        require_device(f"cuda:{count}")


def test_unknown_family_is_refused_when_the_config_loads():
    with pytest.raises(LayerbudgetError, match=r"unknown model.family 'gpt5'; known: auto, bert, gpt2, llama, opt"):
        config_from_dict({"model": {"family": "gpt5"}})


def test_family_of_another_model_type_is_refused_and_unregistered_types_may_be_forced():
    assert check_family("auto", "llama", "m") is None
    assert check_family("llama", "mistral", "m").name == "llama"
    assert check_family("llama", "my-llama-variant", "m").name == "llama"  # forcing an unlisted type
    with pytest.raises(LayerbudgetError, match=r"family = 'auto' or 'llama'"):
        check_family("bert", "llama", "m")


def test_first_line_keeps_a_line_that_ends_in_a_colon_with_its_continuation():
    assert first_line(ValueError("Validation error for field 'x':\n    expected int\nmore")) == (
        "Validation error for field 'x': expected int"
    )
    assert first_line(OSError("")) == "OSError"


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory, make_tiny, gpt2_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("llama")
    make_tiny("llama").model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_is_a_one_line_error(saved_llama, tmp_path):
    path = _copy(saved_llama, tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(LayerbudgetError, match=r"could not load the weights of model .*: SafetensorError") as info:
        load_model(str(path))
    assert "\n" not in str(info.value)


def test_weights_of_another_config_name_the_first_mismatch(saved_llama, tmp_path):
    path = _copy(saved_llama, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LayerbudgetError, match=r"'model.layers.0.mlp.down_proj.weight' has shape \[32, 64\] but "
                       r"config.json gives \[32, 96\] \(6 weights differ\)"):
        load_model(str(path))


def test_weights_missing_outside_the_blocks_are_a_notice(saved_llama, tmp_path, caplog, capfd):
    from safetensors.torch import load_file, save_file

    path = _copy(saved_llama, tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    adapter = load_model(str(path))
    assert len(adapter.units) == 14
    notes = [r.getMessage() for r in caplog.records if r.name == "layerbudget"]
    assert len(notes) == 1 and "lacks lm_head.weight; they start random (outside the blocks)" in notes[0]
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_encoder_family_on_a_causal_model_prints_no_load_report(saved_llama, capfd):
    with pytest.raises(LayerbudgetError, match="model.family is 'bert'"):
        load_model(str(saved_llama), family="bert")
    assert capfd.readouterr().err == ""
