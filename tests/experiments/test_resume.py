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


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    """A config with one quick searcher and a cache shared by the tests below."""
    return {**small_cfg(tmp_path_factory.mktemp("cache")), "search": {"searchers": ["uniform", "ilp"]}}


def test_interrupted_before_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, quick):
    cfg = config_from_dict(quick)
    original = InlineExecutor.evaluate

    def interrupted(self, requests):
        raise KeyboardInterrupt

    monkeypatch.setattr(InlineExecutor, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # no run dir, no .partial, no temporaries
    monkeypatch.setattr(InlineExecutor, "evaluate", original)
    run_experiment(cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "plan.json").is_file() and not partial_dir(tmp_path / "run").exists()


def test_partial_without_checkpoints_does_not_block_the_next_run(tmp_path, quick):
    stale = partial_dir(tmp_path / "run")
    (stale / "checkpoints").mkdir(parents=True)  # what an older layerbudget left when its model failed to load
    (stale / "config.json").write_text("{}")
    run_experiment(config_from_dict(quick), out=tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "plan.json").is_file() and not stale.exists()


def test_overwrite_keeps_the_interrupted_run_until_its_own_search_starts(tmp_path, quick):
    partial = partial_dir(tmp_path / "run")
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "b0-ilp.ckpt").write_bytes(b"another run's checkpoint")
    bad = config_from_dict({**quick, "budget": [{"avg_bits": 1.0}]})
    with pytest.raises(LayerbudgetError, match="infeasible"):
        run_experiment(bad, out=tmp_path / "run", overwrite=True, progress=False, log=lambda m: None)
    assert (partial / "checkpoints" / "b0-ilp.ckpt").read_bytes() == b"another run's checkpoint"
    # the overwriting run neither resumes from nor trips over the old checkpoints
    run_experiment(config_from_dict(quick), out=tmp_path / "run", overwrite=True, progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "plan.json").is_file() and not partial.exists()


def test_sigkill_then_resume_finishes_with_the_uninterrupted_plan(tmp_path, gpt2_tokenizer, monkeypatch,
                                                                 tiny_model_factory):
    """A run killed with SIGKILL mid-search resumes from its .partial to the plan of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from layerbudget.experiments.config import load_config

    model = tmp_path / "llama"
    tiny_model_factory("llama").save_pretrained(model)
    gpt2_tokenizer.save_pretrained(model)
    (tmp_path / "exp.toml").write_text(f"""
name = "killed"
[model]
id = "{model.as_posix()}"
[data]
seq_len = 16
calib_windows = 2
heldout_windows = 2
batch_size = 2
[options]
names = ["rtn-b2-g32", "rtn-b3-g32", "rtn-b4-g32", "rtn-b8-g32"]
calibration_windows = 4
[[budget]]
avg_bits = 4.0
[search]
searchers = ["evolution"]
[search.params.evolution]
generations = 150
offspring = 4
stages = [[2, 1], [1, 2]]
[output]
cache_dir = "{(tmp_path / "cache").as_posix()}"
""")
    run_experiment(load_config(tmp_path / "exp.toml"), out=tmp_path / "ref", progress=False, log=lambda m: None)
    env = {**os.environ, "LAYERBUDGET_EXECUTOR": "inline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerbudget.experiments.cli", "run", "exp.toml", "--quiet", "--out", "run"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    partial = partial_dir(tmp_path / "run")
    deadline = time.monotonic() + 300
    while proc.poll() is None and not list(partial.glob("checkpoints/*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first checkpoint was seen"
    time.sleep(0.2)  # a few more rounds
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (partial / "config.json").is_file() and not (tmp_path / "run").exists()

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--resume", "run"]) == 0
    a, b = Plan.load(tmp_path / "ref" / "plan.json"), Plan.load(tmp_path / "run" / "plan.json")
    assert a.units == b.units and a.measured == b.measured
    assert not partial.exists()
