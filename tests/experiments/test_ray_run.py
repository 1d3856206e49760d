"""A whole run on the Ray executor (profile and searches on actors) equals the same run inline."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

pytest.importorskip("ray")

from layerbudget.experiments.config import config_from_dict  # noqa: E402
from layerbudget.experiments.runner import run_experiment  # noqa: E402
from layerbudget.plan import Plan  # noqa: E402


def _config(cache, kind: str, address: str = "") -> object:
    return config_from_dict(
        {
            "name": f"run-{kind}",
            "data": {"seq_len": 32, "calib_windows": 4, "heldout_windows": 2, "batch_size": 4},
            "options": {"names": ["rtn-b2-g64", "rtn-b4-g128", "rtn-b8-g128"]},
            "budget": {"avg_bits": 3.5},
            "search": {
                "searchers": ["ilp", "evolution"],
                "params": {"evolution": {"generations": 3, "offspring": 4, "stages": [[2, 1], [1, 2]]}},
            },
            "executor": {"kind": kind, "address": address, "workers": 2, "threads_per_worker": 1},
            "output": {"cache_dir": str(cache)},
        }
    )


def test_ray_run_equals_inline_run(ray_cluster, tmp_path):
    logs: list[str] = []
    inline = run_experiment(_config(tmp_path / "c1", "inline"), out=tmp_path / "a", progress=False, log=logs.append)
    ray_run = run_experiment(
        _config(tmp_path / "c2", "ray", ray_cluster.address), out=tmp_path / "b", progress=False, log=logs.append
    )
    assert "executor: inline (1 worker)" in logs and "executor: ray (2 workers)" in logs
    assert sum("profile:" in m and "measured" in m for m in logs) == 2  # both measured their own profile
    pa, pb = (pd.read_parquet(d / "profile.parquet") for d in (tmp_path / "a", tmp_path / "b"))
    pd.testing.assert_frame_equal(pa, pb)
    for name in ("ilp-b0.json", "evolution-b0.json"):
        a, b = (Plan.load(d / "plans" / name) for d in (tmp_path / "a", tmp_path / "b"))
        assert a.units == b.units and a.measured == b.measured
    ca, cb = (pd.read_parquet(d / "candidates.parquet") for d in (tmp_path / "a", tmp_path / "b"))
    pd.testing.assert_frame_equal(ca, cb)
    assert [dataclasses.asdict(p)["units"] for p in inline.plans] == [dataclasses.asdict(p)["units"] for p in ray_run.plans]
