"""End-to-end runs through the CLI on the embedded MiniLM, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from layerbudget.experiments.cli import main
from layerbudget.plan import Plan

SMALL = """
name = "small"
seed = {seed}
[data]
seq_len = 32
calib_windows = 4
heldout_windows = 4
batch_size = 4
[options]
names = ["rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "rtn-b8-g128"]
[[budget]]
avg_bits = {bits}
[search]
searchers = ["uniform", "ilp"]
[output]
cache_dir = "{cache}"
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def write_config(tmp_path: Path, cache: Path, text: str | None = None, **fmt) -> Path:
    cfg = tmp_path / "exp.toml"
    params = {"seed": 0, "bits": 3.5, "cache": cache.as_posix(), **fmt}
    cfg.write_text((text or SMALL).format(**params))
    return cfg


def run_cli(*args: str) -> int:
    return main(["run", "--quiet", *args])


def test_small_run_writes_complete_run_dir(tmp_path, cache, capsys):
    cfg = write_config(tmp_path, cache)
    out = tmp_path / "run"
    assert run_cli(str(cfg), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "uniform" in printed and "ilp" in printed and f"run directory: {out}" in printed
    for name in ("plan.json", "candidates.parquet", "profile.parquet", "summary.csv", "report.md", "config.json"):
        assert (out / name).is_file(), name
    plan = Plan.load(out / "plan.json")
    assert plan.predicted["avg_bits"] <= 3.5
    assert len(plan.units) == 36
    # tied q/k/v share one option in the plan
    for b in range(6):
        qkv = {plan.units[f"encoder.layer.{b}.attention.self.{p}"] for p in ("query", "key", "value")}
        assert len(qkv) == 1
    prov = plan.provenance
    assert prov["seed"] == 0 and prov["versions"]["torch"] and len(plan.model["weight_hash"]) == 64
    assert prov["profile_hash"] and prov["config"]["budget"] == [{"avg_bits": 3.5}]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["searcher"]) == ["uniform", "ilp"]
    assert (summary["avg_bits"] <= 3.5 + 1e-12).all()
    cands = pd.read_parquet(out / "candidates.parquet")
    assert len(cands) == summary["evaluations"].sum()
    assert (cands["avg_bits"] <= 3.5 + 1e-12).all()
    # the ILP optimises the additive proxy: its proxy is the lowest of every evaluated candidate
    ilp_proxy = cands.loc[cands["searcher"] == "ilp", "proxy"].min()
    assert ilp_proxy <= cands["proxy"].min() + 1e-12


def test_same_seed_same_plan_and_cache_reuse(tmp_path, cache, capsys):
    cfg = write_config(tmp_path, cache)
    assert run_cli(str(cfg), "--out", str(tmp_path / "a")) == 0
    assert run_cli(str(cfg), "--out", str(tmp_path / "b")) == 0
    err = capsys.readouterr().err
    assert "reused" in err
    a, b = Plan.load(tmp_path / "a" / "plan.json"), Plan.load(tmp_path / "b" / "plan.json")
    assert a.units == b.units and a.measured["fitness"] == b.measured["fitness"]


def test_existing_output_dir_refused_then_overwritten(tmp_path, cache, capsys):
    cfg = write_config(tmp_path, cache)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run_cli(str(cfg), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output directory") and "--overwrite" in err and "\n" not in err
    assert (out / "keep.txt").exists()
    assert run_cli(str(cfg), "--out", str(out), "--overwrite") == 0
    assert (out / "plan.json").exists() and not (out / "keep.txt").exists()


BAD_CASES = {
    "unknown option": ('"rtn-b4-g128"', '"rtn-b7-g128"', "supported bits"),
    "unknown key": ("seq_len = 32", "seq_len = 32\nwindow = 3", "unknown config key(s) data.window"),
    "wrong type": ("seq_len = 32", 'seq_len = "long"', "data.seq_len must be an integer, but got 'long'"),
    "infeasible budget": ("avg_bits = {bits}", "avg_bits = 1.0", "ranges from 2.5 to 16"),
    "missing model": ("[data]", '[model]\nid = "./no/such/model"\n[data]', "does not exist"),
    "unknown searcher": ('searchers = ["uniform", "ilp"]', 'searchers = ["magic"]', "unknown searcher 'magic'"),
    "bad budget metric": ("avg_bits = {bits}", "speed = 3", "unknown budget metric 'speed'"),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_config_one_line_error_exit_2_nothing_written(case, tmp_path, cache, capsys):
    old, new, message = BAD_CASES[case]
    assert old in SMALL
    cfg = write_config(tmp_path, cache, SMALL.replace(old, new))
    out = tmp_path / "run"
    assert run_cli(str(cfg), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    assert not out.exists()
    assert not list(tmp_path.glob(".run.tmp-*"))


SEARCHERS = 'searchers = ["uniform", "ilp"]'
BAD_PARAMS = {
    "unknown parameter": ("hybrid", "generatoins = 3", "unknown parameter(s) search.params.hybrid.generatoins; known:"),
    "mistyped parameter": ("evolution", 'offspring = "many"', "search.params.evolution.offspring must be an integer"),
    "out of range": ("ilp", "rounds = 0", "search.params.ilp.rounds must be a positive integer, but got 0"),
    "unknown choice": ("dp", 'reference = "parent"', "search.params.dp.reference must be one of 'dense'"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS), ids=list(BAD_PARAMS))
def test_bad_searcher_parameters_fail_before_anything_is_built(case, tmp_path, capsys):
    searcher, line, message = BAD_PARAMS[case]
    fresh = tmp_path / "cache"
    fresh.mkdir()
    text = SMALL.replace(SEARCHERS, f'searchers = ["{searcher}"]\n[search.params.{searcher}]\n{line}')
    cfg = write_config(tmp_path, fresh, text)
    assert run_cli(str(cfg), "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not any(fresh.iterdir()) and not (tmp_path / "run").exists()  # refused as the config loaded


def test_text_too_short(tmp_path, cache, capsys):
    text = tmp_path / "short.txt"
    text.write_text("only a few words here")
    cfg = write_config(tmp_path, cache, SMALL.replace("seq_len = 32", f'seq_len = 32\nsource = "{text.as_posix()}"'))
    assert run_cli(str(cfg), "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "too short" in err and not (tmp_path / "run").exists()


def test_fresh_windows_beyond_the_text_are_refused_before_the_search(tmp_path, cache, capsys):
    extra = '["uniform", "hybrid"]\n[search.params.hybrid]\nvalidation_windows = 1000000'
    cfg = write_config(tmp_path, cache, SMALL.replace('["uniform", "ilp"]', extra))
    out = tmp_path / "run"
    assert run_cli(str(cfg), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: search.params.hybrid asks for batches of 1000000 fresh calibration windows")
    assert "text 'pydoc' gives" in err[-1] and not any("Traceback" in line for line in err)
    assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))


def test_missing_config_file_and_usage(tmp_path, capsys):
    assert run_cli(str(tmp_path / "nope.toml")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bogus"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out


def test_default_config_is_valid_and_documents_the_embedded_default():
    from layerbudget.experiments.config import load_config

    cfg = load_config()
    assert cfg.model.id == "default" and cfg.data.source == "pydoc"
    assert cfg.data.eval_sources == ("docstrings",) and cfg.data.heldout_windows == 200
    assert [b.to_dict() for b in cfg.budget] == [{"avg_bits": 3.5}]
    assert json.loads(json.dumps(cfg.to_dict()))["search"]["searchers"] == ["uniform", "ilp", "hybrid"]
