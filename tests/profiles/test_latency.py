"""Latency tables: kernel formats, roofline, calibration to measured tables, CPU timing, latency budgets."""

from __future__ import annotations

import csv
import math

import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.config import config_from_dict
from layerbudget.kernels.bench import COLUMNS as BENCH_COLUMNS
from layerbudget.kernels.configs import GEMV_MAX_M
from layerbudget.options import parse_option
from layerbudget.problem import Budget, Problem, Slot
from layerbudget.profiles.hardware import GPUS, Hardware, known_targets
from layerbudget.profiles.latency import (
    Launch,
    bench_format_name,
    calibrate,
    kernel_format,
    latency_table,
    launches,
    load_or_build_latency,
    measured_tables,
    roofline_us,
    slot_latency_ns,
)
from layerbudget.search.ilp import solve_ilp


@pytest.mark.parametrize(
    ("option", "shape", "fmt"),
    [
        ("dense", (64, 64), None),
        ("rtn-b4-g128", (4096, 4096), "lowbit"),
        ("gptq-b3-g64", (384, 384), "lowbit"),
        ("rtn-b5-g64", (384, 384), None),  # no 5-bit kernel
        ("wanda-0.5", (384, 384), None),  # unstructured: runs dense
        ("magnitude-2:4", (384, 384), "sparse24"),
        ("magnitude-2:4", (384, 36), None),  # K not divisible by 32
        ("sparsegpt-2:4+gptq-b4-g128", (384, 384), "sparse24_quant"),
        ("magnitude-0.5+rtn-b4-g64", (384, 384), None),
    ],
)
def test_kernel_format(option, shape, fmt):
    got, why = kernel_format(parse_option(option), shape)
    assert got == fmt
    assert (why == "") == (fmt is not None)


def test_roofline_at_decode_is_the_byte_ratio():
    """M=1 on a GPU is memory bound: 4-bit g128 moves (4 + 32/128) / 16 of the dense weight bytes."""
    h100 = GPUS["h100"]
    n = k = 8192
    dense = roofline_us(h100, launches(parse_option("dense"), (n, k), 1, h100)[2])
    fmt, path, kern = launches(parse_option("rtn-b4-g128"), (n, k), 1, h100)
    assert (fmt, path) == ("lowbit", "gemv")
    w4 = roofline_us(h100, kern)
    assert dense == pytest.approx((2 * n * k + 2 * (n + k)) / 3350e9 * 1e6)
    assert dense / w4 == pytest.approx((2 * n * k + 4 * k) / (n * k * 4.25 / 8 + 4 * k), rel=1e-6)
    # large M dequantizes and calls the dense matmul: never faster than dense in this model
    _, path, kern = launches(parse_option("rtn-b4-g128"), (n, k), 4096, h100)
    assert path == "dequant" and len(kern) == 2
    assert roofline_us(h100, kern) > roofline_us(h100, launches(parse_option("dense"), (n, k), 4096, h100)[2])


def test_the_roofline_takes_the_path_of_the_options_code_width(monkeypatch):
    monkeypatch.setitem(GEMV_MAX_M, "lowbit/2", 0)
    h100 = GPUS["h100"]
    paths = [launches(parse_option(name), (4096, 4096), 1, h100)[1] for name in ("rtn-b2-g64", "rtn-b4-g128")]
    assert paths == ["tc", "gemv"]


def test_calibration_recovers_known_efficiencies():
    truth = GPUS["a100"].calibrated(0.7, 0.55, 4.0, "truth")
    rows = []
    for n, k in [(4096, 4096), (8192, 8192), (4096, 14336)]:
        for m in (1, 16, 256, 2048):
            for name in ("dense", "rtn-b4-g128", "rtn-b2-g64"):
                kern = launches(parse_option(name), (n, k), m, truth)[2]
                rows.append((kern, roofline_us(truth, kern)))
    fit = calibrate(GPUS["a100"], rows, "fit")
    assert fit.bw_efficiency == pytest.approx(0.7, abs=0.03)
    assert fit.flop_efficiency == pytest.approx(0.55, abs=0.03)
    assert fit.overhead_us == pytest.approx(4.0, abs=0.5)
    assert fit.source == "fit"


def _write_bench_csv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=BENCH_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in BENCH_COLUMNS})


def test_measured_gpu_tables_are_used_and_calibrate_the_rest(tmp_path):
    n = k = 4096
    base = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-01-01", "n": n, "k": k}
    rows = []
    for m, ms_fp16, ms_w4 in ((1, 0.030, 0.012), (16, 0.031, 0.013), (256, 0.060, 0.070)):
        rows.append({**base, "m": m, "format": "fp16", "weight_bytes": 2 * n * k, "path_auto": "cublas", "ms_auto": ms_fp16})
        path = "gemv" if m == 1 else "tc" if m < 128 else "dequant"
        rows.append({**base, "m": m, "format": "w4g128", "weight_bytes": n * k * 17 // 32, "path_auto": path, "ms_auto": ms_w4})
    _write_bench_csv(tmp_path / "h100-2026-01-01.csv", rows)
    items = [((n, k), "dense"), ((n, k), "rtn-b4-g128"), ((n, k), "rtn-b2-g64")]
    table = latency_table(items, "h100", 16, tables_root=tmp_path).set_index("option")
    assert table.loc["rtn-b4-g128", "latency_us"] == pytest.approx(13.0)
    assert table.loc["dense", "latency_us"] == pytest.approx(31.0)
    assert table.loc["rtn-b4-g128", "source"].startswith("measured NVIDIA H100")
    # no 2-bit row: the roofline, fitted to the measured rows
    assert math.isnan(table.loc["rtn-b2-g64", "measured_us"])
    assert "fitted to 6 measured rows" in table.loc["rtn-b2-g64", "source"]
    assert table.loc["rtn-b2-g64", "latency_us"] == table.loc["rtn-b2-g64", "roofline_us"] > 0
    assert bench_format_name(parse_option("sparsegpt-2:4+gptq-b4-g128"), "sparse24_quant") == "2:4+w4g64"


def test_a_gpu_table_holding_another_gpus_rows_is_refused(tmp_path):
    base = {"date": "2026-01-01", "n": 64, "k": 64, "m": 1, "format": "fp16", "weight_bytes": 8192,
            "path_auto": "cublas", "ms_auto": 0.01}
    _write_bench_csv(tmp_path / "h200-2026-01-01.csv", [{**base, "gpu": "NVIDIA H200"},
                                                         {**base, "gpu": "NVIDIA H100 80GB HBM3", "m": 16}])
    with pytest.raises(LayerbudgetError, match="h200-2026-01-01.csv holds rows measured on 'NVIDIA H100 80GB HBM3'"):
        measured_tables("h200", tmp_path)
    assert len(measured_tables("h200")) > 0  # the committed tables hold their own GPU's rows


def test_cpu_latency_is_measured():
    cpu = Hardware("cpu", bandwidth_gbs=10.0, tflops=0.1, act_bytes=4, source="given")
    table = latency_table([((64, 64), "dense"), ((64, 64), "rtn-b4-g32")], "cpu", 2, cpu=cpu)
    assert (table["measured_us"] > 0).all() and (table["latency_us"] == table["measured_us"]).all()
    assert list(table["path"]) == ["dense", "reference"]
    with pytest.raises(LayerbudgetError, match="unknown latency target"):
        latency_table([((64, 64), "dense")], "tpu", 1)


def _problem() -> Problem:
    opts = ("dense", "rtn-b4-g128", "rtn-b2-g64")
    slots = [Slot(f"u{i}", opts, ((f"u{i}", (256, 256 * (i + 1))),), block=i) for i in range(3)]
    return Problem(slots, proxy={(f"u{i}", o): v for i in range(3) for o, v in zip(opts[1:], (0.1 * (i + 1), 1.0))})


def test_latency_budget_through_the_problem_and_ilp(tmp_path):
    problem = _problem()
    with pytest.raises(LayerbudgetError, match="needs a latency table"):
        problem.check_budget(Budget.from_dict({"latency_us": 1.0}))
    table, reused = load_or_build_latency(problem, "h100", 1, tmp_path)
    assert not reused
    again, reused = load_or_build_latency(problem, "h100", 1, tmp_path)
    assert reused and again.equals(table)
    ns = slot_latency_ns(problem, table)
    problem.set_latency(ns)
    dense = problem.uniform("dense")
    fastest = problem.uniform("rtn-b2-g64")
    assert problem.metric(dense, "latency_us") == pytest.approx(sum(ns[(f"u{i}", "dense")] for i in range(3)) / 1000)
    lo, hi = problem.metric_range("latency_us")
    assert lo == problem.metric(fastest, "latency_us") < hi == problem.metric(dense, "latency_us")
    budget = Budget.from_dict({"latency_us": (lo + hi) / 2})
    plan = solve_ilp(problem, budget)
    assert problem.satisfies(plan, budget)
    assert problem.metric(plan, "latency_us") <= (lo + hi) / 2
    with pytest.raises(LayerbudgetError, match="infeasible"):
        problem.check_budget(Budget.from_dict({"latency_us": lo * 0.9}))


def test_corrupted_latency_cache_is_rebuilt(tmp_path, caplog):
    problem = _problem()
    table, _ = load_or_build_latency(problem, "a100", 1, tmp_path)
    path = next((tmp_path / "latency").glob("a100-*.parquet"))
    path.write_bytes(path.read_bytes()[:-20] + b"x" * 20)
    again, reused = load_or_build_latency(problem, "a100", 1, tmp_path)
    assert not reused and again.equals(table)
    notes = [r.getMessage() for r in caplog.records if r.name == "layerbudget"]
    assert len(notes) == 1 and notes[0].endswith("; measuring the latency table again")


def test_config_latency_section_is_validated():
    assert "cpu" in known_targets() and "h200" in known_targets()
    cfg = config_from_dict({"latency": {"target": "h100", "tokens": 1}, "budget": [{"latency_us": 500.0}]})
    assert cfg.latency.target == "h100"
    with pytest.raises(LayerbudgetError, match="needs \\[latency\\] target"):
        config_from_dict({"budget": [{"latency_us": 500.0}]})
    with pytest.raises(LayerbudgetError, match="unknown latency.target 'v100'"):
        config_from_dict({"latency": {"target": "v100"}})
    with pytest.raises(LayerbudgetError, match="latency.tokens must be a positive integer"):
        config_from_dict({"latency": {"target": "cpu", "tokens": 0}})
    with pytest.raises(LayerbudgetError, match="calibration_inputs"):
        config_from_dict({"options": {"calibration_inputs": "both"}})
    with pytest.raises(LayerbudgetError, match="options.calibration_windows must be a positive integer"):
        config_from_dict({"options": {"calibration_windows": 0}})


def test_roofline_counts_overhead_per_kernel():
    hw = Hardware("x", bandwidth_gbs=1.0, tflops=1.0, overhead_us=2.0)
    assert roofline_us(hw, [Launch(1000.0, 0.0), Launch(0.0, 1e6)]) == pytest.approx(1.0 + 2 + 1.0 + 2)


def test_gpu_targets_are_not_measured_without_their_gpu():
    import torch

    from layerbudget.profiles.latency import live_gpu

    if not torch.cuda.is_available():
        assert all(live_gpu(t) is None for t in GPUS)
    assert live_gpu("cpu") is None
