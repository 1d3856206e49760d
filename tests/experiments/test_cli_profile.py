"""`layerbudget profile` and latency budgets end to end on the embedded MiniLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from smallrun import SMALL_DATA

from layerbudget.experiments.cli import main
from layerbudget.plan import Plan
from layerbudget.profiles.profile import COLUMNS, read_profile

SMALL = """
name = "prof"
{data}[options]
names = ["rtn-b2-g64", "rtn-b4-g128", "magnitude-2:4", "drop"]
{latency}
[[budget]]
{budget}
[search]
searchers = ["ilp"]
[output]
cache_dir = "{cache}"
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _config(tmp_path: Path, cache: Path, *, latency: str = "", budget: str = "avg_bits = 6.0") -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(SMALL.format(latency=latency, budget=budget, cache=cache.as_posix(), data=SMALL_DATA))
    return path


def test_profile_command_builds_and_writes_every_table(tmp_path, cache, capsys):
    cfg = _config(tmp_path, cache)
    out = tmp_path / "prof"
    assert main(["profile", str(cfg), "--quiet", "--target", "h100", "--target", "a100", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "most sensitive unit slots" in printed.out and "sub-blocks (drop one at a time)" in printed.out
    assert "latency h100 at 1 row(s)" in printed.out and "latency a100" in printed.out
    assert "database" in printed.err and "profile" in printed.err
    profile, meta = read_profile(out / "profile.parquet")
    assert list(profile.table.columns) == COLUMNS and meta["key"] == profile.key
    units = profile.table[profile.table["kind"] == "units"]
    quant = units[units["option"] != "dense"]
    assert quant["output_error"].between(0, 1, inclusive="neither").all()
    assert units["outlier_ratio"].notna().all()
    subs = profile.table[profile.table["kind"] == "subblock"]
    assert len(subs) == 24 and subs["block_influence"].between(0, 2, inclusive="neither").all()
    # the lower bit width has the larger output error on every slot
    pivot = quant.pivot(index="slot", columns="option", values="output_error")
    assert (pivot["rtn-b2-g64"] > pivot["rtn-b4-g128"]).all()
    for t in ("h100", "a100"):
        lat = pd.read_parquet(out / f"latency-{t}.parquet")
        assert set(lat["option"]) == {"dense", "rtn-b2-g64", "rtn-b4-g128", "magnitude-2:4"}
        assert (lat["latency_us"] > 0).all()
    info = json.loads((out / "database.json").read_text())
    assert info["size_bytes"] > 0 and info["calibration"]["windows"] == 128  # options.calibration_windows
    # a second call reuses everything
    assert main(["profile", str(cfg), "--quiet"]) == 0
    assert "reused" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "tpu"], "unknown latency target 'tpu'"),
        (["--tokens", "0"], "--tokens must be a positive integer"),
    ],
)
def test_profile_bad_arguments_exit_2(tmp_path, cache, capsys, args, message):
    cfg = _config(tmp_path, cache)
    assert main(["profile", str(cfg), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_run_with_a_latency_budget(tmp_path, cache, capsys):
    lat = '[latency]\ntarget = "h100"\ntokens = 1'
    probe = _config(tmp_path, cache, latency=lat)
    assert main(["profile", str(probe), "--quiet", "--target", "h100"]) == 0
    dense_us = float(capsys.readouterr().out.split("dense units ")[1].split(" us")[0])
    budget = 0.5 * dense_us
    cfg = _config(tmp_path, cache, latency=lat, budget=f"latency_us = {budget}")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--quiet", "--out", str(out)]) == 0
    plan = Plan.load(out / "plan.json")
    assert plan.predicted["latency_us"] <= budget
    assert math.isfinite(plan.measured["heldout"])
    assert (out / "latency.parquet").is_file()
    assert "latency_us" in pd.read_csv(out / "summary.csv").columns
