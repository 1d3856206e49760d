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
    lines = proc.stdout.split("\n\n")[0].strip().splitlines()  # the fitness table comes first
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


def _traced(searcher, seed, steps, evaluations, budget=3.0):
    row = _row("minilm-quant", budget, searcher, seed, steps[-1][1], 1.0)
    row.update(trace=steps, evaluations=evaluations)
    return row


def test_evaluations_to_the_evolutions_final_fitness_are_counted_per_seed(tmp_path):
    rows = [
        _traced("evolution", 0, [[1, 0.9], [200, 0.62], [340, 0.60]], 350),  # target of seed 0: 0.60
        _traced("evolution", 1, [[1, 0.9], [90, 0.70]], 350),  # target of seed 1: 0.70
        _traced("hybrid", 0, [[8, 0.65], [100, 0.60], [300, 0.58]], 350),  # reaches 0.60 at 100
        _traced("hybrid", 1, [[8, 0.75], [130, 0.71]], 350),  # never reaches 0.70
        _traced("ilp", 0, [[1, 0.70]], 1),  # seedless: reaches seed 1's target, not seed 0's
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    png = tmp_path / "curves.png"
    proc = bench("bench_search.py", "--table", str(tmp_path / "rows.json"), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = {line.split()[2]: line.split()[3:] for line in proc.stdout.split("\n\n")[1].strip().splitlines()[2:]}
    # cap, reached/runs, median, worst, runs within cap/3
    assert body["hybrid"] == ["350", "1/2", "100", "100", "1/2"]
    assert body["evolution"] == ["350", "2/2", "215", "340", "1/2"]
    assert body["ilp"] == ["350", "1/2", "1", "1", "1/2"]
    assert png.stat().st_size > 0


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


@pytest.mark.slow
def test_bench_groundtruth_records_returned_hits_and_its_tables(tmp_path):
    """The depth problem with one seed of the evolution: every instance has a qualifying flag, hits
    count returned plans, and the report says which table it used and that it was built now."""
    out = tmp_path / "gt.json"
    env_cache = {"LAYERBUDGET_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_groundtruth.py", "--problems", "depth", "--seeds", "1",
         "--searchers", "evolution", "--out", str(out)],
        cwd=ROOT, env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env_cache},
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    table = report["environment"]["tables"]["depth"]
    assert table["rebuilt"] and len(table["key"]) > 24 and table["plans"] == 4096
    assert "torch" in report["environment"]["versions"]
    rows = report["problems"]["depth"]["rows"]
    assert len(rows) == 11 and all(isinstance(r["qualifies"], bool) for r in rows)
    for r in rows:
        run = r["search"]["evolution"]["runs"][0]
        assert run["hit"] == (run["plan"] == r["real_opt"])
        assert r["qualifies"] == (r["proxy_opt"] != r["real_opt"] and r["feasible"] > 300)
    assert report["targets"]["qualifying"] == sum(r["qualifies"] for r in rows)


def _bench_rows(path, rows):
    cols = ["n", "k", "m", "format", "ms_fp16", "ms_gemv", "ms_tc", "ms_dequant", "max_rel_err"]
    path.write_text("\n".join([",".join(cols)] + [",".join(str(v) for v in r) for r in rows]) + "\n")


def test_fit_dispatch_bounds_the_thresholds_by_the_crossovers(tmp_path):
    nan = "nan"
    rows = []
    for n, k in ((4096, 4096), (8192, 8192), (4096, 14336)):
        rows += [(n, k, 1, "w4g128", 1.0, 0.3, 0.5, 2.0, 0.0), (n, k, 2, "w4g128", 1.0, 0.4, 0.6, 2.0, 0.0),
                 (n, k, 16, "w4g128", 1.0, nan, 0.5, 2.0, 0.0), (n, k, 64, "w4g128", 1.0, nan, 3.0, 2.0, 0.0),
                 (n, k, 256, "w4g128", 1.0, nan, 3.0, 2.5, 0.0), (n, k, 1, "fp16", 1.0, nan, nan, nan, 0.0)]
    rows.append((8192, 8192, 64, "w2g64", 1.0, nan, 0.1, 2.0, 0.5))  # tc fastest but wrong: not counted
    _bench_rows(tmp_path / "bench.csv", rows)
    proc = bench("fit_dispatch.py", str(tmp_path / "bench.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "lowbit (16 rows) fastest path by M: M=1: gemv 3; M=2: gemv 3; M=16: tc 3; M=64: dequant 4;" in lines[0]
    assert "GEMV_MAX_M in [2, 15], DEQUANT_MIN_M in [17, 64]" in lines[1]
    # 4 (configs.py) lies in [2, 15] and stays; 16 does not lie in [17, 64]: the interval's nearest end
    assert "fitted GEMV_MAX_M=4 DEQUANT_MIN_M=17: rule/best 1.000;" in lines[2]
    assert "configs.py now 4, 16: rule/best 1.236" in lines[2]  # M = 16 dequantized: 23.6 ms against 19.1
    assert "sparse24: no rows" in proc.stdout
    assert lines[-1] == "DEQUANT_MIN_M = {'lowbit': 17}"


def test_fit_dispatch_fits_a_code_width_apart_where_its_crossovers_differ(tmp_path):
    nan = "nan"
    rows = []
    for n, k in ((4096, 4096), (8192, 8192)):
        rows += [(n, k, 1, "w4g128", 1.0, 0.3, 0.5, 2.0, 0.0), (n, k, 16, "w4g128", 1.0, nan, 0.5, 0.4, 0.0),
                 (n, k, 1, "w3g128", 1.0, 0.3, 0.4, 2.0, 0.0), (n, k, 16, "w3g128", 1.0, nan, 0.5, 0.4, 0.0),
                 (n, k, 1, "w2g64", 1.0, 0.6, 0.3, 2.0, 0.0), (n, k, 16, "w2g64", 1.0, nan, 0.5, 0.4, 0.0),
                 (n, k, 1, "2:4", 1.0, 0.6, 0.9, 2.0, 0.0)]
    _bench_rows(tmp_path / "bench.csv", rows)
    proc = bench("fit_dispatch.py", str(tmp_path / "bench.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # the decode kernel wins at M = 1 for 3- and 4-bit codes only: the format keeps 4, 2-bit codes get 0
    assert "  lowbit/2 (4 rows) fastest path by M: M=1: tc 2; M=16: dequant 2" in lines
    assert any(line.startswith("    fitted GEMV_MAX_M=0 DEQUANT_MIN_M=16: rule/best 1.000;") for line in lines)
    assert any(line.startswith("    fitted GEMV_MAX_M=4 DEQUANT_MIN_M=16: rule/best 1.000;") for line in lines)
    # with 2-bit codes on the decode kernel (0.6 ms against 0.3, twice): 4.8 ms picked against 4.2 fastest
    assert "  lowbit with a rule per code width: rule/best 1.000; configs.py now: rule/best 1.143" in lines
    assert lines[-2] == "GEMV_MAX_M = {'lowbit': 4, 'lowbit/2': 0, 'sparse24': 4}"
    assert lines[-1] == "DEQUANT_MIN_M = {'lowbit': 16, 'sparse24': 16}"
    assert not any(line.lstrip().startswith("sparse24/") for line in lines)


def test_fit_dispatch_compares_against_the_width_entry_in_use_when_one_width_was_measured(tmp_path, monkeypatch,
                                                                                         capsys):
    import importlib.util

    from layerbudget.kernels import configs

    spec = importlib.util.spec_from_file_location("fit_dispatch", ROOT / "benchmarks" / "fit_dispatch.py")
    fit_dispatch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_dispatch)
    monkeypatch.setitem(configs.GEMV_MAX_M, "lowbit/4", 0)  # 4-bit codes skip the decode kernel today
    rows = [(n, 4096, m, "w4g128", 1.0, 0.3 if m == 1 else "nan", 0.5, 2.0, 0.0) for n in (4096, 8192) for m in (1, 2)]
    _bench_rows(tmp_path / "bench.csv", rows)
    assert fit_dispatch.main([str(tmp_path / "bench.csv")]) == 0
    out = capsys.readouterr().out
    # the rule in use sends M = 1 to the tensor-core kernel (0.5 against 0.3): 2.0 ms picked against 1.6 fastest
    assert "fitted GEMV_MAX_M=1 DEQUANT_MIN_M=16: rule/best 1.000; configs.py now 0, 16: rule/best 1.250" in out
    assert out.splitlines()[-2] == "GEMV_MAX_M = {'lowbit': 1}"


def test_latency_table_drops_only_the_racy_split_k_times_and_keeps_every_column(tmp_path):
    import csv

    cols = "n,k,m,format,weight_bytes,copy_gbps,ms_fp16,ms_gemv,ms_tc,ms_dequant,ms_tinygemm,max_rel_err,config_tc"
    row = "4096,4096,16,w4g128,100,1000,1.0,nan,0.5,2.0,1.0,0.0,tc:m16n64k128s8w4p3"
    (tmp_path / "old.csv").write_text(f"{cols}\n{row}\n")  # before the inline_ptx column: split-K raced
    (tmp_path / "new.csv").write_text(f"{cols},inline_ptx\n{row},1\n{row[:-len('0.0,tc:m16n64k128s8w4p3')]}0.5,"
                                      "tc:m16n64k128s8w4p3,1\n")  # the second row's fused paths disagreed
    proc = bench("latency_table.py", str(tmp_path / "old.csv"), str(tmp_path / "new.csv"),
                 "--out", str(tmp_path / "table.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["inline_ptx"] for r in rows] == ["", "1", "1"]
    assert [r["ms_tc"] for r in rows] == ["nan", "0.5", "nan"]
    assert [r["best_path"] for r in rows] == ["dequant", "tc", "dequant"]
    assert not list(tmp_path.glob("*.tmp"))


def test_kernel_targets_name_the_gpu_and_say_when_it_is_not_the_targets_h200(tmp_path):
    cols = "gpu,n,k,m,format,ms_fp16,ms_gemv,ms_tc,ms_dequant,ms_auto,path_auto,ms_tinygemm,max_rel_err"
    for gpu, warned in (("NVIDIA H200", False), ("NVIDIA H100 80GB HBM3", True)):
        (tmp_path / "bench.csv").write_text(f"{cols}\n{gpu},8192,8192,1,w4g128,3.2,1.0,1.5,4.0,1.5,tc,1.8,0.0\n")
        proc = bench("kernel_targets.py", str(tmp_path / "bench.csv"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.splitlines()
        assert lines[0] == f"Measured on {gpu}."
        assert lines[1].startswith("The targets are set on an H200") == warned


def test_kernel_targets_compare_the_best_right_path_at_every_headline_shape(tmp_path):
    cols = "n,k,m,format,ms_fp16,ms_gemv,ms_tc,ms_dequant,ms_auto,path_auto,ms_tinygemm,max_rel_err"
    rows = ["8192,8192,1,w4g128,3.2,1.0,1.5,4.0,1.5,tc,1.8,0.0",  # best 3.2x, 1.8x of tinygemm
            "8192,28672,1,w4g128,2.9,1.0,nan,4.0,1.0,gemv,1.8,0.0",  # 2.9x: below 3.0
            "8192,8192,1,2:4,2.0,1.0,nan,3.0,1.0,gemv,nan,0.0",  # one shape only
            "8192,8192,256,w2g64,1.0,nan,0.1,1.0,0.1,tc,nan,0.5",  # tc wrong: only dequant counts
            "8192,28672,256,w2g64,1.0,nan,0.1,1.0,0.1,tc,nan,0.5"]
    (tmp_path / "bench.csv").write_text(cols + "\n" + "\n".join(rows) + "\n")
    (tmp_path / "block.csv").write_text("gpu,plan,ms,speedup_vs_fp16\nH,fp16,1,1.0\nH,uniform-w4g128,0.4,2.6\n"
                                        "H,uniform-w4g128/tc,0.3,3.1\n")
    proc = bench("kernel_targets.py", str(tmp_path / "bench.csv"), str(tmp_path / "block.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in proc.stdout.splitlines()}
    assert "3.20x (1.80x vs tinygemm)" in lines[("w4g128", "1")] and lines[("w4g128", "1")].endswith("| no |")
    assert lines[("2:4", "1")].endswith("| partly measured |")
    assert "— / 1.00x" in lines[("w2g64", "256")] and lines[("w2g64", "256")].endswith("| yes |")
    assert lines[("w3g128", "16")].endswith("| not measured |")
    assert "uniform-w4g128: 2.60x over fp16 (target ≥ 2.5x): yes" in proc.stdout
    assert "uniform-w4g128 on the tensor-core kernel: 3.10x over fp16" in proc.stdout


def test_kernel_targets_give_the_issue_share_each_target_needs(tmp_path):
    # an older bench's CSV: only its fp16 times count
    (tmp_path / "old.csv").write_text("n,k,m,format,ms_fp16,ms_triton\n8192,8192,1,fp16,0.048,nan\n"
                                      "8192,8192,1,w4g128,0.048,0.01\n8192,8192,256,fp16,0.045,nan\n")
    (tmp_path / "sass.csv").write_text("arch,variant,instructions_per_weight\nsm_90,gemv M=1 w4g128,2.0\n"
                                       "sm_90,gemv M=1 2:4+w4g64,4.0\nsm_90,tc   M=256 w4g128,3.0\n")
    proc = bench("kernel_targets.py", str(tmp_path / "old.csv"), "--sass", str(tmp_path / "sass.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in proc.stdout.splitlines()}
    # 2 instructions x 8192^2 weights / 32 / 1.045e12 per s = 4.0 us of the 48 / 3 = 16 us the target allows
    assert "| 25% (4.0 of 16.0 µs) | — |" in rows[("w4g128", "1", "decode (2.00)")]
    # per kept value: half the weights, 48 / 3.5 us allowed
    assert "| 29% (4.0 of 13.7 µs) |" in rows[("2:4+w4g64", "1", "decode (4.00)")]
    assert rows[("w4g128", "1", "tensor-core (—)")].endswith("| — | — |")
    # M = 256: the launch's tiles of 128 activation rows take every weight twice; 45 / 0.9 us allowed
    assert "| 24% (12.0 of 50.0 µs) |" in rows[("w4g128", "256", "tensor-core (3.00)")]
    assert "| w4g128 | 1 | — / — (— vs tinygemm) |" in proc.stdout  # its fused time is not read


def test_kernel_targets_give_the_memory_latency_each_kernel_hides(tmp_path):
    (tmp_path / "fp16.csv").write_text("n,k,m,format,ms_fp16\n8192,8192,1,fp16,0.048\n8192,8192,16,fp16,0.05\n")
    (tmp_path / "sass.csv").write_text(
        "arch,variant,warps,regs,stages,shared_bytes,weights_per_thread,instructions_per_weight\n"
        "sm_90,gemv M=1 w4g128,8,74,2,512,64,4.3\n"  # 3 programs per SM by registers (80 x 256 threads each)
        "sm_90,tc   M=16 w4g128,2,188,2,12800,256,2.0\n"  # 5 by registers, but a grid of 512 gives each SM 4
        "sm_90,gemv M=1 w3g128,8,84,2,512,64,5.5\n"  # 84 registers take 88: 2 programs, not 3
        "sm_90,tc   M=1 w3g128,2,128,2,6656,,3.6\n")  # a count without the launch's step: no figure
    proc = bench("kernel_targets.py", str(tmp_path / "fp16.csv"), "--sass", str(tmp_path / "sass.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.split("Memory latency")[1]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in table.splitlines() if line.startswith("|")}
    # w4g128 is 4.25 bits a weight: 3 programs x 16384 weights x 0.53125 B one step ahead = 26112 B per SM; the
    # target (3x over 48 us) streams 8192^2 x 0.53125 B in 16 us, and 26112 B x 132 SMs last 1.55 us of that
    assert "| 1.55 µs (26 KB per SM) | — |" in rows[("w4g128", "1", "decode")]
    # 4 programs x 64 threads x 256 weights one step ahead = 34816 B; 8192^2 x 0.53125 B in 50 / 2.5 = 20 us
    assert "| 2.58 µs (34 KB per SM) |" in rows[("w4g128", "16", "tensor-core")]
    assert rows[("w3g128", "1", "tensor-core")].endswith("| — | — |")
    # 3.25 bits a weight: 2 x 16384 x 0.40625 B = 13312 B per SM; 3.6x over 48 us; no fp16 time at 8192x28672
    assert "| 0.86 µs (13 KB per SM) | — |" in rows[("w3g128", "1", "decode")]
    # a CSV of an older aot_check (no launch columns) gives no memory figures, only the issue shares
    (tmp_path / "old.csv").write_text("arch,variant,instructions_per_weight\nsm_90,gemv M=1 w4g128,2.0\n")
    proc = bench("kernel_targets.py", str(tmp_path / "fp16.csv"), "--sass", str(tmp_path / "old.csv"))
    assert proc.returncode == 0 and "KB per SM" not in proc.stdout and "| 25% (4.0 of 16.0 µs) |" in proc.stdout


def test_kernel_targets_refuse_a_csv_of_another_kind_in_one_line(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    proc = bench("kernel_targets.py", str(tmp_path / "x.csv"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "neither a kernel bench CSV" in proc.stderr


def test_fit_dispatch_refuses_a_file_that_is_not_a_bench_csv_in_one_line(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    proc = bench("fit_dispatch.py", str(tmp_path / "x.csv"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a kernel bench CSV" in proc.stderr


def _gpu_check(tmp_path, budget: str, tests_rc: int) -> tuple[subprocess.CompletedProcess[str], list[int], float]:
    """``gpu_check.sh quick`` with stand-ins for the GPU's commands: ``timeout`` records its limit and takes
    all of it (every step runs to its limit), the kernel tests exit ``tests_rc``."""
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "limits.txt"
    stubs = {
        "nvidia-smi": "echo 'name, driver_version'",
        "python3": "echo python3-stand-in",
        "timeout": f'echo "$1" >> {log}; sleep "$1"\n'
                   f'case "$*" in *--last-failed*) exit 0;; *pytest*) exit {tests_rc};; *) exit 124;; esac',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "GPU_CHECK_SECONDS": budget}
    # start late in a wall-clock second: a clock of whole seconds would tick during the script's preamble
    time.sleep((0.99 - time.time() % 1) % 1)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "quick", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    limits = [int(x) for x in log.read_text().split()] if log.exists() else []
    return proc, limits, time.monotonic() - t0


def test_gpu_check_quick_keeps_within_its_time_budget_when_every_step_runs_to_its_limit(tmp_path):
    proc, limits, seconds = _gpu_check(tmp_path, "20", tests_rc=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the tests take their share (45 %), the rerun of failures is left under 5 s and skipped, the bench takes
    # what the block's reserve leaves, the block is left under 5 s and skipped
    assert limits == [9, 7], (limits, proc.stdout)
    assert "tests without inline PTX: skipped, no time left of GPU_CHECK_SECONDS=20" in proc.stdout
    assert "Llama block: skipped" in proc.stdout
    assert sum(limits) <= 20 and seconds < 20 + 5, (limits, seconds)


def test_gpu_check_refuses_a_time_budget_that_is_not_a_number(tmp_path):
    proc, limits, _ = _gpu_check(tmp_path, "4min", tests_rc=0)
    assert proc.returncode == 2 and limits == []
    assert proc.stderr.strip() == "gpu_check: GPU_CHECK_SECONDS must be a whole number of seconds, not '4min'"


def test_kernel_traffic_checks_the_launches_named(tmp_path):
    """``--launch`` runs the configurations named as the bench CSVs name them (a sweep's winner before it
    enters the table), race-checked; a name it cannot read is a one-line error."""
    pytest.importorskip("triton")
    proc = bench("kernel_traffic.py", "--shape", "256x1024", "--formats", "w3g128", "--ms", "16",
                 "--launch", "tc:m16n128k128s1w4p3,gemv:m1n64k128s1w4p2", "--out", str(tmp_path / "t.md"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| w3g128")]
    assert len(rows) == 1 and "| tc_fields | tc:m16n128k128s1w4p3 | sm_90 |" in rows[0]  # no decode kernel at 16
    bad = bench("kernel_traffic.py", "--launch", "tc:m16n128")
    assert bad.returncode == 2 and "--launch: a launch is named like tc:m16n128k128s1w4p3" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_latency_table_named_for_a_gpu_takes_only_that_gpus_rows(tmp_path):
    cols = "gpu,n,k,m,format,weight_bytes,copy_gbps,ms_fp16,ms_gemv,ms_tc,ms_dequant,ms_tinygemm,max_rel_err,config_tc"
    (tmp_path / "bench.csv").write_text(f"{cols}\nNVIDIA H100 80GB HBM3,4096,4096,1,w4g128,100,1000,1.0,0.4,0.5,2.0,"
                                        "1.0,0.0,tc:m16n64k128s1w4p3\n")
    out = tmp_path / "h200-2026-12-06.csv"
    proc = bench("latency_table.py", str(tmp_path / "bench.csv"), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("latency_table: h200-2026-12-06.csv is the h200 table, for H200 rows, but rows were "
                                   "measured on 'NVIDIA H100 80GB HBM3'; name it h100-<date>.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv"]
    proc = bench("latency_table.py", str(tmp_path / "bench.csv"), "--out", str(tmp_path / "h100-2026-12-06.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "h100-2026-12-06.csv").read_text().splitlines()[1].startswith("NVIDIA H100 80GB HBM3,")
