"""The real Triton compiler accepts every kernel variant (the interpreter is more lenient), and the
package works without Triton installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _env_without_interpreter() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("TRITON_DEFAULT_FP_FUSION", None)
    return env


@pytest.mark.parametrize("inline_ptx", ["1", "0"])
def test_kernels_compile_for_sm90_without_a_gpu(inline_ptx: str) -> None:
    """Both builds: with inline PTX, and the plain-Triton fallback (``LAYERBUDGET_INLINE_PTX=0``)."""
    pytest.importorskip("triton")
    proc = subprocess.run(
        [sys.executable, "-m", "layerbudget.kernels.aot_check", "--arch", "90"],
        capture_output=True, text=True, timeout=300,
        env={**_env_without_interpreter(), "LAYERBUDGET_INLINE_PTX": inline_ptx},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from layerbudget.kernels.aot_check import variants

    assert proc.stdout.count("ok ") == len(variants()), proc.stdout
    assert "FP_FUSION" not in proc.stderr, proc.stderr  # the kernels name their fusion: no default is read


def test_sass_report_compiles_under_a_register_cap(tmp_path) -> None:
    """``--sass --max-registers N`` compiles the chosen decode launches with their registers capped at N (the CSV
    says the cap, the registers within it and the stack its spills take); a cap out of range exits 2 in one line."""
    pytest.importorskip("triton")
    import csv

    out = tmp_path / "sass.csv"
    cmd = [sys.executable, "-m", "layerbudget.kernels.aot_check", "--sass", "--match", "gemv M=1 w4g128", "--csv", str(out)]
    proc = subprocess.run([*cmd, "--max-registers", "40"], capture_output=True, text=True, timeout=300,
                          env=_env_without_interpreter())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = csv.DictReader(out.open())
    assert row["max_registers"] == "40" and 24 <= int(row["regs"]) <= 40 and int(row["stack_bytes"]) > 0, row
    proc = subprocess.run([*cmd, "--max-registers", "300"], capture_output=True, text=True, timeout=300,
                          env=_env_without_interpreter())
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "[24, 255]" in proc.stderr


FUSED = """
from layerbudget.kernels.aot_check import compile_variant, variants
v = next(v for v in variants() if v.kernel == "_gemv_lowbit_kernel")
ptx = compile_variant(v, 90).asm["ptx"]
print(ptx.count("fma.rn.f32"), ptx.count("mul.rn.f32"), ptx.count("mul.f32"))
"""


def test_kernels_contract_multiply_adds_whatever_the_default() -> None:
    """With Triton's default fusion off, the decode kernel still takes its multiply-adds as FMAs."""
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", FUSED], capture_output=True, text=True, timeout=120,
                          env={**_env_without_interpreter(), "TRITON_DEFAULT_FP_FUSION": "0"})
    assert proc.returncode == 0, proc.stderr
    fma, mul_rn, mul = (int(x) for x in proc.stdout.split())
    assert fma > 0 and mul_rn == 0, proc.stdout


def test_every_kernel_launch_names_its_fusion() -> None:
    """Kernels launch only through ``triton_common.launch``, which passes ``enable_fp_fusion=FP_FUSION`` (the
    compiled code must not depend on the installed Triton's default)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "kernels"
    direct, launches = [], 0
    for path in sorted(root.glob("triton_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):  # kernel[grid](...)
                direct.append((path.name, node))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "launch":
                launches += 1
    assert [(name, n.lineno) for name, n in direct if name != "triton_common.py"] == []
    (_, only), = direct
    kw = {k.arg: k.value for k in only.keywords}
    assert isinstance(kw.get("enable_fp_fusion"), ast.Name) and kw["enable_fp_fusion"].id == "FP_FUSION"
    assert launches >= 7


NO_TRITON = """
import sys
sys.modules["triton"] = None  # as if triton were not installed
import torch
from torch import nn
from layerbudget.kernels import modules, ops
lin = nn.Linear(64, 8)
mod = modules.QuantLinear.from_linear(lin, bits=4, group_size=32)
x = torch.randn(3, 64)
torch.testing.assert_close(mod(x), torch.nn.functional.linear(x, mod.dequantized_weight(), lin.bias))
assert not ops.triton_available()
try:
    ops.lowbit_matmul(x.half(), mod.packed_weight(), path="triton")
except ValueError as err:
    assert "not installed" in str(err), err
else:
    raise SystemExit("path='triton' without triton must raise")
"""


def test_package_works_without_triton() -> None:
    subprocess.run([sys.executable, "-c", NO_TRITON], check=True, timeout=120)
