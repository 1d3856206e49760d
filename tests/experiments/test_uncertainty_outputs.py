"""Runs report every measured figure with its standard error, on every evaluation text, and compare
searchers paired over windows: summary.csv, comparisons.csv, report.md, ``show``, the Pareto plot."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from layerbudget.experiments.cli import main
from layerbudget.plan import Plan

STORY = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed far out at sea, "
    "and their crews counted on the beam to find the harbour in the fog. One winter the storms came early. "
)


def toml(cache: Path, story: Path, sources: str | None = None) -> str:
    sources = sources if sources is not None else f'["docstrings", "{story.as_posix()}"]'
    return f"""
name = "noise"
[data]
seq_len = 32
calib_windows = 4
heldout_windows = 6
batch_size = 4
eval_sources = {sources}
[options]
names = ["rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "rtn-b8-g128"]
[[budget]]
avg_bits = 3.5
[[budget]]
avg_bits = 4.5
[search]
searchers = ["uniform", "ilp"]
[output]
cache_dir = "{cache.as_posix()}"
"""


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "story.txt"
    path.write_text(STORY * 12, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, story) -> Path:
    root = tmp_path_factory.mktemp("noise")
    cfg = root / "noise.toml"
    cfg.write_text(toml(root / "cache", story))
    assert main(["run", "--quiet", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run"


LABELS = ("heldout", "heldout:docstrings", "heldout:story")


def test_summary_has_every_text_with_its_standard_error(run):
    summary = pd.read_csv(run / "summary.csv")
    for col in ("fitness", *LABELS):
        assert col in summary.columns and col + "_se" in summary.columns, col
        assert (summary[col] > 0).all() and (summary[col + "_se"] > 0).all(), col
        assert (summary[col + "_se"] < summary[col]).all(), col
    cols = list(summary.columns)
    assert cols.index("fitness") < cols.index("fitness_se") < cols.index("heldout") < cols.index("heldout:story")
    plan = Plan.load(run / "plan.json")
    for col in ("fitness", *LABELS):
        assert math.isfinite(plan.measured[col]) and plan.measured[col + "_se"] > 0
    texts = plan.provenance["data"]["eval_texts"]
    assert texts["heldout:docstrings"]["source"] == "docstrings" and texts["heldout:story"]["windows"] == 6
    assert texts["heldout"]["source"] == "pydoc" and len(texts["heldout:story"]["text_sha256"]) == 64


def test_comparisons_pair_every_searcher_at_every_budget_on_every_set(run):
    comp = pd.read_csv(run / "comparisons.csv")
    assert len(comp) == 2 * 4  # 2 budgets x (calibration + 3 held-out sets) x 1 pair
    assert set(comp["set"]) == {"fitness", *LABELS}
    assert (comp["a"] == "uniform").all() and (comp["b"] == "ilp").all()
    summary = pd.read_csv(run / "summary.csv")
    for _, c in comp.iterrows():
        rows = summary[summary["budget"] == c["budget"]].set_index("searcher")
        col = c["set"]
        assert c["a_value"] == pytest.approx(rows.loc["uniform", col], rel=1e-4)
        assert c["b_value"] == pytest.approx(rows.loc["ilp", col], rel=1e-4)
        assert c["difference"] == pytest.approx(c["b_value"] - c["a_value"], abs=1e-9)
        assert c["se"] >= 0 and bool(c["beyond_noise"]) == (abs(c["z"]) > 2)


def test_report_shows_errors_and_which_differences_exceed_noise(run):
    report = (run / "report.md").read_text()
    assert "## Searcher differences" in report and "±" in report
    assert "`heldout:docstrings`: 6 windows of docstrings" in report
    assert "| heldout:story | ilp − uniform |" in report
    assert "Beyond noise held out" in report or "No held-out difference" in report
    table = report.split("## Results")[1].split("## Searcher differences")[0]
    assert table.count("±") == 2 * 2 * 4  # every row: fitness and three held-out sets


def test_show_prints_values_with_errors(run, capsys):
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("budget"))
    assert "heldout:docstrings" in header and "heldout:story" in header
    assert out.count("±") >= 2 * 2 * 4
    assert "held-out differences beyond noise (paired, |z| > 2):" in out


def test_pareto_plot_draws_error_bars_for_every_text(run, tmp_path, monkeypatch):
    from layerbudget.experiments import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, sibling=False: figures.append(fig) or [out])
    plots.plot_pareto([run], tmp_path / "p.png")
    (fig,) = figures
    axes = fig.axes
    assert len(axes) == 2 * (1 + len(LABELS))  # (calibration + 3 texts) rows x (avg_bits, bytes)
    labels = [ax.get_ylabel() for ax in axes]
    assert any("heldout:story" in label for label in labels)
    for ax in axes:  # every panel has error bars on the chosen plans
        assert any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers), ax.get_ylabel()


BAD_SOURCES = {
    "missing file": ('["no/such/text.txt"]', "neither a built-in text"),
    "the calibration text": ('["pydoc"]', "lists the calibration text 'pydoc'"),
    "twice": ('["docstrings", "docstrings"]', "lists a text twice"),
    "not a list": ('"docstrings"', "data.eval_sources must be a list of strings"),
    "empty name": ('[""]', "must list text sources"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES), ids=list(BAD_SOURCES))
def test_bad_eval_source_one_line_error_exit_2(case, tmp_path, story, capsys):
    sources, message = BAD_SOURCES[case]
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml(tmp_path / "cache", story, sources))
    assert main(["run", "--quiet", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # refused before any work


def test_too_short_eval_text_is_refused(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.", encoding="utf-8")
    cfg = tmp_path / "short.toml"
    cfg.write_text(toml(tmp_path / "cache", short, f'["{short.as_posix()}"]'))
    assert main(["run", "--quiet", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "evaluation text" in err and "too short" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
