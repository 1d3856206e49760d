"""The database index is covered by the integrity check: edits that keep it valid JSON are caught."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from layerbudget.options import parse_options
from layerbudget.profiles.database import INDEX_HASH, CorruptCache, load_or_build_database, open_database


@pytest.fixture(scope="module")
def tiny_db(make_tiny, tmp_path_factory):
    """A calibrated database of a tiny Llama (output errors and outlier ratios in its index)."""
    adapter = make_tiny("llama")
    calib = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    opts = parse_options(["dense", "rtn-b4-g32", "gptq-b3-g32", "wanda-0.5"])
    cache = tmp_path_factory.mktemp("integrity")
    db, _ = load_or_build_database(adapter, opts, cache, calib=calib, batch_size=2, progress=False)
    return adapter, opts, calib, db


EDITS = ("output_error", "outlier_ratio", "options", "unit sha256", "influence", "index hash deleted")


@pytest.mark.parametrize("edit", EDITS)
def test_index_edits_that_stay_valid_json_are_detected_and_rebuilt(tiny_db, tmp_path, caplog, edit):
    adapter, opts, calib, db = tiny_db
    root = tmp_path / "db" / db.root.name
    shutil.copytree(db.root, root)
    index = json.loads((root / "index.json").read_text())
    unit = index["units"][2]
    if edit == "output_error":
        unit["output_error"]["gptq-b3-g32"] *= 0.5
    elif edit == "outlier_ratio":
        unit["outlier_ratio"] += 0.25
    elif edit == "options":
        unit["options"] = unit["options"][:1]
    elif edit == "unit sha256":  # a unit file swapped together with the hash recorded for it
        unit["sha256"] = "0" * 64
    elif edit == "influence":
        index["influence"] = {k: 0.0 for k in index["influence"]}
    if edit == "index hash deleted":
        (root / INDEX_HASH).unlink()
    else:
        (root / "index.json").write_text(json.dumps(index, indent=1))
    with pytest.raises(CorruptCache, match="index.json is missing, edited or corrupted"):
        open_database(root)
    rebuilt, reused = load_or_build_database(adapter, opts, tmp_path, calib=calib, batch_size=2, progress=False)
    assert not reused and rebuilt.root == root and rebuilt.index == db.index
    notes = [r.getMessage() for r in caplog.records if r.name == "layerbudget"]
    assert len(notes) == 1 and notes[0].endswith("; rebuilding the database"), notes
    open_database(root)  # whole again


def test_untouched_database_opens(tiny_db):
    _, _, _, db = tiny_db
    assert open_database(db.root).index == db.index
    assert (db.root / INDEX_HASH).read_text().strip() != ""
