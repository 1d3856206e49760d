"""The benchmark scripts run from the project root as users run them (subprocesses: tests never import
a benchmark). The search benchmark's table and argument checks are quick; whole runs are ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _row(config, budget, searcher, seed, fitness, heldout):
    row = {"budget": budget, "searcher": searcher, "seed": seed, "evaluations": 10, "fitness": fitness, "heldout": heldout}
    if config is not None:
        row["config"] = config
    return row


def test_search_table_groups_by_config_budget_and_searcher(tmp_path):
    rows = [
        _row(None, 2.5, "hybrid", 0, 1.0, 2.0),  # written before rows named their config
        _row("minilm-quant", 2.5, "hybrid", 1, 3.0, 4.0),
        _row("minilm-gptq", 2.5, "hybrid", 0, 0.5, 0.7),
        _row("minilm-gptq", 3.0, "ilp", 0, 0.2, 0.3),
        _row("minilm-gptq", 3.0, "uniform", 0, 0.9, 1.1),
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    proc = bench("bench_search.py", "--table", str(tmp_path / "rows.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 + 4
    body = [line.split() for line in lines[1:]]
    # per config: budgets from high to low, searchers in benchmark order
    assert [b[:3] for b in body] == [
        ["minilm-gptq", "3.0", "uniform"],
        ["minilm-gptq", "3.0", "ilp"],
        ["minilm-gptq", "2.5", "hybrid"],
        ["minilm-quant", "2.5", "hybrid"],
    ]
    quant = body[3]
    assert quant[3] == "2"  # both default-config rows in one group
    assert quant[5:8] == ["2.0000", "±", "1.4142"]  # fitness mean ± std of 1 and 3
    assert quant[8:11] == ["3.0000", "±", "1.4142"]


def test_search_benchmark_refuses_a_missing_config_in_one_line(tmp_path):
    proc = bench("bench_search.py", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "out.json"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_bench_scoring_runs_end_to_end(tmp_path):
    """The whole scoring benchmark on 3 candidates, with its own local Ray instance."""
    out = tmp_path / "bench.json"
    proc = bench("bench_scoring.py", "--out", str(out), "--candidates", "3", "--generations", "1", "--offspring", "4",
                 "--repeats", "1", "--cache-dir", str(tmp_path / "cache"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["engine"]) == {"evolution search", "profile (one-at-a-time)"}
    assert all(v["max_rel_diff"] <= 1e-4 for v in result["engine"].values())
    assert result["ray"]["speedup_ray2_vs_ray1"] > 0 and "overhead_ray1_vs_inline" in result["ray"]
    assert result["ray"]["memory"]["object_store_bytes"]["database"] > 0


@pytest.mark.slow
def test_bench_solvers_runs(tmp_path):
    proc = bench("bench_solvers.py", "--units", "50", "--options", "6", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dp vs ilp relative proxy gap" in proc.stdout
