"""Interrupted runs resume from their searcher checkpoints and finish with the uninterrupted plan."""

from __future__ import annotations

import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.experiments.cli import main
from layerbudget.experiments.config import config_from_dict
from layerbudget.experiments.runner import partial_dir, run_experiment
from layerbudget.plan import Plan


def small_cfg(cache) -> dict:
    return {
        "name": "resume",
        "data": {"seq_len": 32, "calib_windows": 4, "heldout_windows": 2, "batch_size": 4},
        "options": {"names": ["rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "rtn-b8-g128"]},
        "budget": [{"avg_bits": 3.5}],
        "search": {
            "searchers": ["ilp", "evolution"],
            "params": {"evolution": {"generations": 5, "offspring": 4, "stages": [[2, 1], [1, 2]]}},
        },
        "output": {"cache_dir": str(cache)},
    }


def test_interrupted_run_resumes_to_the_same_plan(tmp_path, monkeypatch):
    cfg = config_from_dict(small_cfg(tmp_path / "cache"))
    run_experiment(cfg, out=tmp_path / "ref", progress=False, log=lambda m: None)

    calls = {"n": 0}
    original = InlineExecutor.evaluate

    def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 6:  # in the middle of the evolution
            raise KeyboardInterrupt
        return original(self, requests)

    monkeypatch.setattr(InlineExecutor, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists() and partial_dir(tmp_path / "run").is_dir()
    with pytest.raises(LayerbudgetError, match="interrupted run exists"):
        run_experiment(cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    monkeypatch.setattr(InlineExecutor, "evaluate", original)

    # the CLI reads the config back from RUN_DIR.partial
    assert main(["run", "--quiet", "--resume", str(tmp_path / "run")]) == 0
    assert not partial_dir(tmp_path / "run").exists()
    for name in ("ilp-b0.json", "evolution-b0.json"):
        a = Plan.load(tmp_path / "ref" / "plans" / name)
        b = Plan.load(tmp_path / "run" / "plans" / name)
        assert a.units == b.units and a.measured == b.measured


def test_resume_without_unfinished_run_is_refused(tmp_path, capsys):
    assert main(["run", "--quiet", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no unfinished run" in capsys.readouterr().err
