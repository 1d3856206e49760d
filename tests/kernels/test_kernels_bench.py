"""The benchmark refuses on a host without CUDA instead of reporting numbers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on CPU-only hosts")
def test_bench_refuses_without_gpu(tmp_path) -> None:
    out = tmp_path / "bench.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "layerbudget.kernels.bench", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "CUDA" in proc.stderr
    assert not out.exists()


def test_bench_rejects_unknown_format(tmp_path) -> None:
    from layerbudget.kernels.bench import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x.csv"), "--formats", "w5g7"])


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bench_small_run_on_gpu(tmp_path) -> None:
    from layerbudget.kernels.bench import main

    out = tmp_path / "bench.csv"
    assert main(["--out", str(out), "--shapes", "1024x1024", "--ms", "1,64"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 2 * 7


def test_bench_rows_smoke(device: str) -> None:
    """Every format and column of a row with a fake timer (the interpreter stands in for a GPU on CPU hosts)."""
    from layerbudget.kernels.bench import COLUMNS, FORMATS, bench_shape

    calls = []

    def fake_timer(fn) -> float:
        fn()
        calls.append(1)
        return 1.0 + len(calls) % 2

    rows = list(bench_shape(24, 128, (1, 3), list(FORMATS), copy_gbps=100.0, device=device, timer=fake_timer))
    assert [r["format"] for r in rows] == list(FORMATS) * 2
    for row in rows:
        assert set(row) | {"gpu", "date", "torch", "triton", "inline_ptx", "timer", "copy_gbps"} == set(COLUMNS)
        assert row["max_rel_err"] < 2e-3
        assert row["weight_bytes"] * 8 == pytest.approx(row["bits_per_weight"] * 24 * 128)
    by_name = {r["format"]: r for r in rows}
    assert by_name["w4g128"]["bits_per_weight"] == pytest.approx(4.25)
    assert by_name["2:4"]["bits_per_weight"] == pytest.approx(9.0)
    assert by_name["2:4+w4g64"]["bits_per_weight"] == pytest.approx(3.25)  # 4*0.5 + 2*0.5 (positions) + 32/64*0.5
    m3 = [r for r in rows if r["m"] == 3 and r["format"] != "fp16"]
    assert all(r["best_path"] in ("gemv", "tc", "dequant", "reference") for r in m3)
    assert all(r["ms_gemv"] == r["ms_gemv"] and r["ms_tc"] == r["ms_tc"] for r in m3)  # both kernels timed


def test_bench_rows_keep_going_past_a_failing_or_wrong_path(device: str, monkeypatch) -> None:
    """A launch that raises and a path that is wrong are named in ``failed``; their times count nowhere,
    and the other paths and formats are still measured."""
    from layerbudget.kernels import bench

    real = bench.packed_matmul

    def flaky(x, w, bias=None, *, path="auto", config=None):
        if path == "triton" and config is not None and config.kernel == "tc":
            raise RuntimeError("ptxas error\nout of resource: shared memory")
        y = real(x, w, bias, path=path, config=config)
        return y * 1.5 if path == "dequant" else y

    monkeypatch.setattr(bench, "packed_matmul", flaky)
    rows = list(bench.bench_shape(24, 128, (3,), ["w4g128", "2:4"], copy_gbps=100.0, device=device,
                                  timer=lambda fn: (fn(), 1.0)[1]))
    assert [r["format"] for r in rows] == ["w4g128", "2:4"]
    for row in rows:
        assert row["ms_gemv"] == 1.0 and row["config_gemv"]  # the decode kernel was right and timed
        assert row["ms_tc"] != row["ms_tc"] and row["ms_dequant"] != row["ms_dequant"]  # NaN: failed, wrong
        assert "tc:" in row["failed"] and "RuntimeError: out of resource: shared memory" in row["failed"]
        assert "dequant: wrong (rel err 0.5)" in row["failed"]
        assert row["max_rel_err"] < bench.WRONG_REL_ERR


def test_launch_names_read_back_as_the_configurations_the_bench_times() -> None:
    """The names the bench CSVs give launches (``config_gemv``/``config_tc``) parse back to the same
    configurations, so a sweep's winner can be race-checked or entered by name."""
    from layerbudget.kernels.bench import candidates, row_candidates
    from layerbudget.kernels.configs import LaunchConfig

    every = [cfg for kernel in ("gemv", "tc") for m in (1, 16, 256) for cfg in candidates(kernel, m)]
    timed = [cfg for kernel, m in (("gemv", 1), ("tc", 16), ("tc", 256)) for fmt, bits, group in
             (("lowbit", 2, 64), ("lowbit", 4, 128), ("sparse24", None, None))
             for cfg in row_candidates(kernel, m, 8192, 8192, fmt, bits, group)]
    capped = [cfg for cfg in timed if cfg.max_registers is not None]
    # the low-bit decode table's launch (8 warps) is also timed held to two programs per SM, split-K kept
    assert capped and all(c.kernel == "gemv" and c.max_registers == 128 and c.split_k > 1 for c in capped)
    every += timed
    assert len(every) > 20 and len({c.name for c in every}) == len(set(every))
    for cfg in every:
        assert LaunchConfig.from_name(cfg.name) == cfg
    assert LaunchConfig.from_name(" gemv:m4n32k256s8w2p1 ") == LaunchConfig("gemv", 4, 32, 256, 8, 2, 1)
    assert LaunchConfig.from_name("gemv:m1n128k128s8w8p2r128") == LaunchConfig("gemv", 1, 128, 128, 8, 8, 2, 128)
    assert LaunchConfig("gemv", 1, 128, 128, 8, 8, 2, 96).launch_options == {"num_warps": 8, "num_stages": 2,
                                                                            "maxnreg": 96}
    assert "maxnreg" not in LaunchConfig("tc", 16, 64, 128).launch_options
    for bad in ("tc:m16n128", "mma:m16n128k128s1w4p3", "tc:m16n128k128s1w4p3x", "tc:m16n128k48s1w4p3",
                "tc:m16n128k128s1w4p3r", "gemv:m1n128k128s8w8p2r8", "gemv:m1n128k128s8w8p2r256"):
        with pytest.raises(ValueError, match="tc:m16n128k128s1w4p3|block_k|max_registers"):
            LaunchConfig.from_name(bad)
    with pytest.raises(ValueError, match="max_registers"):
        LaunchConfig("gemv", 1, 128, 128, max_registers=True)
