"""A damaged cache entry is rebuilt with a plain `note:` line, not a Python warning with a file and line."""

from __future__ import annotations

import json

from conftest import build_tiny_model

from layerbudget.experiments.cli import main

CONFIG = {
    "data": {"seq_len": 16, "calib_windows": 2, "heldout_windows": 2, "batch_size": 2},
    "options": {"names": ["rtn-b2-g32", "rtn-b4-g32"], "calibration_windows": 4},
    "search": {"searchers": ["uniform"]},
}


def test_cache_rebuild_notices_are_plain_note_lines(tmp_path, monkeypatch, capsys, gpt2_tokenizer):
    model = tmp_path / "llama"
    build_tiny_model("llama").save_pretrained(model)
    gpt2_tokenizer.save_pretrained(model)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAYERBUDGET_CACHE", str(cache))
    config = tmp_path / "exp.toml"
    config.write_text(
        f'[model]\nid = {json.dumps(model.as_posix())}\n'
        + "".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in t.items()) for s, t in CONFIG.items())
    )
    assert main(["run", str(config), "--quiet", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()

    (db,) = (cache / "db").iterdir()
    index = json.loads((db / "index.json").read_text())
    index["units"][0]["output_error"]["rtn-b2-g32"] = 0.0  # still valid JSON
    (db / "index.json").write_text(json.dumps(index))
    (profile,) = (cache / "profile").glob("*.sha256")
    profile.write_text("0" * 64)
    assert main(["run", str(config), "--quiet", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if line.startswith("note: ")]
    assert len(notes) == 2, err
    assert notes[0].startswith("note: database index ") and notes[0].endswith("; rebuilding the database")
    assert notes[1].startswith("note: profile ") and notes[1].endswith("; measuring the profile again")
    assert not [line for line in err if "Warning" in line or ".py:" in line], err
