"""`layerbudget run` started from the project root on a new local Ray instance with 2 actors.

The driver and the actors (Ray gives them the driver's working directory) have the project root on
``sys.path``, where no folder may hide an installed package; the output holds only the project's
own lines (no Ray start-up notices).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from smallrun import small_run_toml

from layerbudget.plan import Plan

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
PROJECT_LINES = (
    r"database: 36 units, 8 options, (built|reused) \(.+\)",
    r"executor: ray \(2 workers\)",
    r"profile: \d+ \(slot, option\) rows, (measured|reused)",
    r"budget +searcher +avg_bits +fitness +heldout +evaluations +seconds",
    r"avg_bits<=4 +(uniform|ilp) +[\d.]+ +[\d.]+ ± [\d.]+ +[\d.]+ ± [\d.]+ +\d+ +[\d.]+",
    r"held-out differences beyond noise \(paired, \|z\| > 2\): .+",
    r"run directory: .+",
)


def test_ray_run_from_the_root_writes_the_plan_and_prints_only_its_own_lines(tmp_path):
    config = tmp_path / "one-budget.toml"
    config.write_text(small_run_toml("from-root", budgets=(4.0,)))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LAYERBUDGET_EXECUTOR")}
    proc = subprocess.run(
        [sys.executable, "-m", "layerbudget.experiments.cli", "run", str(config), "--workers", "2", "--quiet", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    printed = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 0, "\n".join(printed[-40:])
    assert "executor: ray (2 workers)" in printed
    foreign = [ln for ln in printed if not any(re.fullmatch(p, ln.rstrip()) for p in PROJECT_LINES)]
    assert foreign == [], "lines that are not the project's:\n" + "\n".join(foreign)
    plan = Plan.load(out / "plan.json")
    assert plan.predicted["avg_bits"] <= 4.0 and len(plan.units) == 36
