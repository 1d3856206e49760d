"""The depth and sparsity baselines end to end: profile features reach ShortGPT and OWL through a run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from smallrun import SMALL_DATA

from layerbudget.experiments.cli import main
from layerbudget.plan import Plan

TOML = """
name = "{name}"
{data}[options]
names = {options}
[[budget]]
{budget}
[search]
searchers = {searchers}
[output]
cache_dir = "{cache}"
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _run(tmp_path: Path, cache: Path, **fields) -> Path:
    cfg = tmp_path / f"{fields['name']}.toml"
    cfg.write_text(TOML.format(cache=cache.as_posix(), data=SMALL_DATA, **fields))
    out = tmp_path / fields["name"]
    assert main(["run", str(cfg), "--quiet", "--out", str(out)]) == 0
    return out


def test_depth_baselines_drop_what_the_budget_asks(tmp_path, cache):
    out = _run(tmp_path, cache, name="depth", options='["drop"]', budget="dropped = 3",
               searchers='["shortgpt", "sleb", "dp"]')
    summary = pd.read_csv(out / "summary.csv").set_index("searcher")
    assert summary.loc["shortgpt", "evaluations"] == 1
    assert summary.loc["sleb", "evaluations"] == 12 + 11 + 10
    profile = pd.read_parquet(out / "profile.parquet")
    influence = profile[profile["option"] == "drop"].set_index("slot")["block_influence"]
    plan = Plan.load(out / "plans" / "shortgpt-b0.json")
    assert sorted(plan.dropped) == sorted(influence.nsmallest(3).index)
    for name in ("sleb", "dp"):
        assert len(Plan.load(out / "plans" / f"{name}-b0.json").dropped) == 3


def test_owl_runs_on_a_sparsity_budget(tmp_path, cache):
    out = _run(tmp_path, cache, name="owl", options='["wanda-0.4", "wanda-0.5", "wanda-0.6"]',
               budget="sparsity = 0.5", searchers='["owl", "uniform"]')
    summary = pd.read_csv(out / "summary.csv").set_index("searcher")
    plan = Plan.load(out / "plans" / "owl-b0.json")
    assert plan.predicted["sparsity"] >= 0.5
    assert summary.loc["owl", "evaluations"] >= 1
