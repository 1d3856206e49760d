"""Kernel launches as the package makes them, compiled and run through :mod:`.ptx_sim` on the CPU.

:func:`record` runs a call (``lowbit_matmul(..., path="triton")``, a dequantize, ...) with every kernel launch
captured instead of run; :func:`compile_ptx` compiles the captured launches for a CUDA architecture in a
process without the Triton interpreter (as a GPU build would: pointers and sizes divisible by 16
marked so), with inline PTX or as the plain-Triton build; :func:`emulate` runs one launch's PTX on its
own inputs (a data race raises) and returns every pointer argument's bytes afterwards and the reads each one
saw.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .ptx_sim import Machine, Traffic, parse

_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
          torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.int64: "i64"}
_LAUNCHERS = ("triton_gemv", "triton_lowbit", "triton_fielddot", "triton_sparse")  # modules that call launch()

_COMPILE = r"""
import importlib, json, sys
from layerbudget.kernels.aot_check import compile_kernel
from layerbudget.kernels.triton_common import INLINE_PTX
assert bool(INLINE_PTX) == (sys.argv[1] == "1"), "LAYERBUDGET_INLINE_PTX did not reach the kernels"
sys.path[:0] = sys.argv[2:]
out = []
for spec in json.load(sys.stdin):
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    consts = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["constants"].items()}
    c = compile_kernel(fn, spec["signature"], consts, spec["aligned"], spec["num_warps"], spec["num_stages"],
                       spec["arch"], spec["max_registers"])
    out.append({"ptx": c.asm["ptx"], "shared": c.metadata.shared})
json.dump(out, sys.stdout)
"""


@dataclass
class Launch:
    """One kernel launch: the kernel (module and name), grid, arguments by name, constants, options and the
    architecture to build it for."""

    module: str
    kernel: str
    grid: tuple[int, int, int]
    args: dict[str, object]
    constants: dict[str, object]
    num_warps: int
    num_stages: int
    arch: int = 90
    max_registers: int | None = None  # the launch's ``maxnreg``

    def spec(self) -> dict:
        """What the compiling process needs, as JSON: the signature Triton's JIT would specialize."""
        sig = {n: (f"*{_TYPES[v.dtype]}" if isinstance(v, torch.Tensor) else "i32") for n, v in self.args.items()}
        aligned = [n for n, v in self.args.items()
                   if isinstance(v, torch.Tensor) or (isinstance(v, int) and v % 16 == 0)]
        return {"module": self.module, "kernel": self.kernel, "signature": sig, "constants": self.constants,
                "aligned": aligned, "num_warps": self.num_warps, "num_stages": self.num_stages, "arch": self.arch,
                "max_registers": self.max_registers}


def record(call: Callable[[], object]) -> tuple[object, list[Launch]]:
    """``call()`` with every kernel launch of the package captured instead of run: what it returns (outputs
    left as allocated) and the launches in order."""
    launches: list[Launch] = []

    def capture(kernel, grid, *args, **kwargs) -> None:
        warps, stages, regs = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3), kwargs.pop("maxnreg", None)
        positional = [n for n in kernel.arg_names if n not in kwargs]
        launches.append(Launch(kernel.fn.__module__, kernel.fn.__name__, tuple(grid) + (1,) * (3 - len(grid)),
                               dict(zip(positional, args, strict=True)), kwargs, warps, stages,
                               max_registers=regs))

    modules = [importlib.import_module(f"{__package__}.{name}") for name in _LAUNCHERS]
    saved = [m.launch for m in modules]
    try:
        for m in modules:
            m.launch = capture
        result = call()
    finally:
        for m, launch in zip(modules, saved, strict=True):
            m.launch = launch
    return result, launches


def compile_ptx(launches: list[Launch], inline_ptx: bool = True, paths: tuple[str, ...] = ()) -> list[dict]:
    """Each launch's kernel compiled for its architecture (``{"ptx", "shared"}``), in a process without the
    interpreter, with inline PTX or as the plain-Triton build (``LAYERBUDGET_INLINE_PTX=0``); ``paths`` go on
    that process's ``sys.path`` (for kernels outside the package)."""
    flag = "1" if inline_ptx else "0"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["LAYERBUDGET_INLINE_PTX"] = flag
    proc = subprocess.run([sys.executable, "-c", _COMPILE, flag, *paths], capture_output=True, text=True,
                          timeout=900, env=env, input=json.dumps([ln.spec() for ln in launches]))
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {len(launches)} launches failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's storage from its first element on, as bytes (its strides keep their meaning)."""
    raw = torch.empty(0, dtype=torch.uint8).set_(t.detach().cpu().untyped_storage()).numpy()
    return raw[t.storage_offset() * t.element_size():].copy()


def emulate(launch: Launch, compiled: dict, programs: list[tuple[int, int, int]] | None = None,
            check_races: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Traffic]]:
    """Run the launch's PTX (its whole grid, or ``programs``, in that order) on copies of its inputs, checking
    for data races (:mod:`.ptx_races`) unless told not to: every pointer argument's bytes afterwards, and the
    global reads of each (by argument name)."""
    kernel = parse(compiled["ptx"])
    arrays = {n: _bytes(v) for n, v in launch.args.items() if isinstance(v, torch.Tensor)}
    values = [arrays.get(n, v) for n, v in launch.args.items()]
    values += [None] * (len(kernel.params) - len(values))  # the scratch pointers Triton adds
    machine = Machine(kernel, launch.num_warps, compiled["shared"], check_races)
    machine.run(values, launch.grid, programs=programs)
    names = {p: n for (p, _), n in zip(kernel.params, launch.args, strict=False)}
    return arrays, {names[p]: t for p, t in machine.traffic.items()}


def as_tensor(raw: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """The first ``like.numel()`` elements of ``raw`` (bytes) as a tensor of ``like``'s dtype and shape."""
    n = like.numel() * like.element_size()
    return torch.frombuffer(bytearray(raw[:n].tobytes()), dtype=like.dtype).view(like.shape)
