"""Pareto fronts, Pareto and heatmap figures of run directories, and the `plot`/`show` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from smallrun import small_run_toml

from layerbudget.experiments.cli import main
from layerbudget.experiments.plots import (
    heatmap_figure,
    option_bits_per_weight,
    pareto_figure,
    pareto_front,
    plot_pareto,
    plot_plan_heatmap,
)
from layerbudget.plan import Plan

SMALL = small_run_toml("plots")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run with two budgets and two searchers (database cached for the whole session)."""
    from layerbudget.experiments.config import load_config
    from layerbudget.experiments.runner import run_experiment

    root = tmp_path_factory.mktemp("plots")
    (root / "small.toml").write_text(SMALL)
    run_experiment(load_config(root / "small.toml"), out=root / "run-a", progress=False, log=lambda m: None)
    return root / "run-a"


def _png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path)


# ----- pareto_front -------------------------------------------------------------------------------
FRONTS = {
    "staircase": ([(1, 5), (2, 3), (3, 4), (4, 1), (5, 1)], [0, 1, 3]),
    "unsorted input": ([(4, 1), (1, 5), (3, 4), (2, 3)], [1, 3, 0]),
    "equal points keep the first": ([(1, 2), (1, 2), (0, 3)], [2, 0]),
    "same cost, lowest value wins": ([(2, 5), (2, 1), (2, 3)], [1]),
    "same value, lowest cost wins": ([(3, 1), (1, 1), (2, 1)], [1]),
    "one point dominates all": ([(2, 2), (1, 1), (3, 1), (1, 3)], [1]),
    "non-finite ignored": ([(1, float("nan")), (2, 2), (float("inf"), 0), (3, 1)], [1, 3]),
    "empty": ([], []),
}


@pytest.mark.parametrize("case", list(FRONTS), ids=list(FRONTS))
def test_pareto_front_known_sets(case):
    points, expected = FRONTS[case]
    assert pareto_front(points) == expected


def _brute_front(pts: np.ndarray) -> list[int]:
    """The definition: not dominated by any point, first of equal points, sorted by cost."""
    firsts = {tuple(p): i for i, p in reversed(list(enumerate(pts)))}
    keep = [i for i in range(len(pts))
            if firsts[tuple(pts[i])] == i
            and not any((pts[j] <= pts[i]).all() and (pts[j] < pts[i]).any() for j in range(len(pts)))]
    return sorted(keep, key=lambda i: pts[i, 0])


def test_pareto_front_equals_brute_force_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.integers(0, 8, size=(40, 2)).astype(float)  # many ties
        front = pareto_front(pts)
        assert front == _brute_front(pts)
        assert all(pts[a, 1] > pts[b, 1] for a, b in zip(front, front[1:]))


def test_option_bits_per_weight():
    assert option_bits_per_weight("dense") == 16.0 and option_bits_per_weight("drop") == 0.0
    assert option_bits_per_weight("rtn-b4-g128") == pytest.approx(4.25)
    assert option_bits_per_weight("gptq-b3-gch") == pytest.approx(3 + 32 / 4096)
    assert option_bits_per_weight("magnitude-2:4") == pytest.approx(9.0)  # fp16 halves + 2-bit indices
    assert option_bits_per_weight("rtn-b2-g96") == pytest.approx(2 + 32 / 96)  # group not dividing 4096


# ----- figures ------------------------------------------------------------------------------------
def test_plot_pareto_writes_png_and_svg_atomically(run_dir, tmp_path):
    written = plot_pareto([run_dir], tmp_path / "pareto.png")
    assert [p.name for p in written] == ["pareto.png", "pareto.svg"]
    assert _png(written[0]).shape[0] > 400
    assert written[1].read_text()[:200].lstrip().startswith("<?xml") and "<svg" in written[1].read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "pareto.svg"]  # no temp files left


def test_overlay_labels_each_run_and_searcher(run_dir, tmp_path):
    other = tmp_path / "run-b"
    shutil.copytree(run_dir, other)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text to read the legend
        plot_pareto([run_dir, other], tmp_path / "both.svg")
    svg = (tmp_path / "both.svg").read_text()
    for label in ("run-a / uniform", "run-a / ilp", "run-b / uniform", "run-b / ilp"):
        assert label in svg, label
    assert (tmp_path / "both.png").is_file()


def test_latency_column_adds_a_cost_axis(run_dir, tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for name, read, write in (("candidates.parquet", pd.read_parquet, "to_parquet"), ("summary.csv", pd.read_csv, "to_csv")):
        frame = read(run / name)
        frame["latency:h100"] = frame["avg_bits"] * 0.1
        getattr(frame, write)(run / name, index=False)
    plain = _png(plot_pareto([run_dir], tmp_path / "plain.png")[0])
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        wide = _png(plot_pareto([run], tmp_path / "wide.svg")[1])
    assert wide.shape[1] > plain.shape[1] * 1.3  # three cost columns instead of two
    assert "latency:h100" in (tmp_path / "wide.svg").read_text()


def test_plan_heatmap_shows_dense_and_drop(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    plan = Plan.load(run / "plan.json")
    units = dict(plan.units)
    sub = "encoder.layer.5.mlp"
    for u in ("encoder.layer.5.intermediate.dense", "encoder.layer.5.output.dense"):
        units[u] = "drop"
    units["encoder.layer.0.attention.output.dense"] = "dense"
    Plan(plan.model, units, dropped=(sub,), searcher="manual", budget={"avg_bits": 4.0}).save(run / "plans" / "manual-b0.json")
    written = plot_plan_heatmap(run, run / "plan_heatmap.png")
    assert written == [run / "plan_heatmap.png"]
    image = _png(written[0])
    assert image.shape[0] > image.shape[1] * 0.6  # 36 unit rows make a tall figure


def test_heatmap_column_labels_do_not_overlap(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    plan = Plan.load(run / "plan.json")
    for i in range(6):  # long searcher names and two-constraint budgets: wider than a column
        Plan(plan.model, dict(plan.units), searcher=f"a-searcher-with-a-long-name-{i}",
             budget={"avg_bits": 3.0 + i / 8, "bytes": 12_345_678 + i}).save(run / "plans" / f"long{i}-b{i}.json")
    fig = heatmap_figure(run)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert len(boxes) >= 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    title = ax.title.get_window_extent(renderer)
    assert not any(title.overlaps(b) for b in boxes)
    plt.close(fig)


def test_pareto_axes_print_plain_values_without_an_offset(run_dir, tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lo, hi = pd.read_parquet(run / "candidates.parquet")["fitness"].agg(["min", "max"])
    for name, read, write in (("candidates.parquet", pd.read_parquet, "to_parquet"), ("summary.csv", pd.read_csv, "to_csv")):
        frame = read(run / name)  # values that share their leading digits: matplotlib would print "+2.883e1"
        frame["fitness"] = 28.83 + (frame["fitness"] - lo) / (hi - lo) * 1e-3
        if "fitness_se" in frame.columns:
            frame["fitness_se"] = frame["fitness_se"] / (hi - lo) * 1e-3
        getattr(frame, write)(run / name, index=False)
    fig = pareto_figure([run])
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == "", axis.get_offset_text().get_text()
    calibration = fig.axes[0]  # the first row: calibration fitness of every candidate
    assert any(t.get_text().startswith("28.8") for t in calibration.get_yticklabels())
    plt.close(fig)


def test_write_run_plots_labels_a_temporary_directory_by_its_final_name(run_dir, tmp_path):
    """What the runner calls inside its temporary run directory before the rename."""
    from layerbudget.experiments.plots import write_run_plots

    tmp = tmp_path / ".final.tmp-123"
    shutil.copytree(run_dir, tmp)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        written = write_run_plots(tmp, name="final")
    assert [p.name for p in written] == ["pareto.png", "pareto.svg", "plan_heatmap.png"]
    svg = (tmp / "pareto.svg").read_text()
    assert "final" in svg and "tmp-123" not in svg


# ----- CLI ----------------------------------------------------------------------------------------
def test_cli_plot_one_run_writes_into_the_run(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["plot", str(run)]) == 0
    for name in ("pareto.png", "pareto.svg", "plan_heatmap.png"):
        assert (run / name).is_file(), name
    assert f"wrote {run / 'pareto.png'}" in capsys.readouterr().out


def test_cli_plot_several_runs_to_out(run_dir, tmp_path):
    out = tmp_path / "figs" / "cmp.png"
    assert main(["plot", str(run_dir), str(run_dir), "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".svg").is_file()


@pytest.mark.parametrize("make", ["missing", "unfinished"])
def test_cli_plot_bad_run_dir_one_line_error(make, tmp_path, capsys):
    run = tmp_path / "run"
    if make == "unfinished":
        run.mkdir()
        (run / "summary.csv").write_text("budget,searcher\n")
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert ("does not exist" if make == "missing" else "candidates.parquet") in err


def test_cli_show_prints_summary_and_option_counts(run_dir, capsys):
    assert main(["show", str(run_dir)]) == 0
    out = capsys.readouterr().out
    plan = Plan.load(run_dir / "plan.json")
    assert "uniform" in out and "ilp" in out and "avg_bits<=4" in out and "heldout" in out
    for option in set(plan.units.values()):
        assert option in out
    assert f"plan.json: {plan.searcher}" in out


@pytest.mark.parametrize("content", ["nothing", "broken plan"])
def test_cli_show_without_finished_plan(content, run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "summary.csv", run / "summary.csv")
    if content == "broken plan":
        (run / "plan.json").write_text(json.dumps({"schema": "layerbudget.plan", "version": 1})[:-3])
    assert main(["show", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert ("no finished plan.json" if content == "nothing" else "not valid JSON") in err
