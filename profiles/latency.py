"""Latency of every (weight shape, option) on a target: measured on this CPU, roofline for GPUs.

One matmul ``y = x Wᵀ`` with ``x: [M, K]`` and ``W: [N, K]`` runs as what deployment runs:

- options with a kernel format (2/3/4/8-bit group-wise, 2:4, 2:4 + 2/3/4/8-bit; see
  :func:`kernel_format`) run the project's packed kernels: on a GPU the decode kernel up to
  ``GEMV_MAX_M`` rows, the tensor-core kernel below ``DEQUANT_MIN_M`` rows, else a dequantize
  kernel + dense matmul (:mod:`layerbudget.kernels.configs`); on the CPU the torch reference;
- ``dense`` and options without a kernel format (unstructured sparsity, 5/6-bit codes) run as a
  dense matmul in the activation dtype.

Targets: ``cpu`` is *measured* here (median wall time of the module's CPU path at the current
torch thread count); a GPU target is measured with the project's kernels when that GPU is present
(``triton.testing.do_bench``, fp16 activations); otherwise it uses a measured table from ``profiles/data/latency/`` when one
has the exact (shape, format, M), and otherwise the roofline ``Σ_kernels max(bytes / bandwidth,
FLOPs / peak) + overhead``, with bandwidth, peak and overhead fitted to that GPU's measured tables
when there are any (:func:`calibrate`), else the datasheet peaks (:mod:`.hardware`). Bytes count the
stored weight with its metadata plus activations in and out.
"""

from __future__ import annotations

import csv
import math
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from layerbudget.errors import LayerbudgetError
from layerbudget.kernels.configs import dispatch_path
from layerbudget.kernels.ops import packed_matmul
from layerbudget.kernels.packing import PACK_BITS, k_multiple
from layerbudget.kernels.quant_weight import PackedQuantWeight
from layerbudget.kernels.sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24
from layerbudget.notices import notice
from layerbudget.options import Option, parse_option
from layerbudget.problem import Problem
from layerbudget.profiles.database import CorruptCache
from layerbudget.profiles.hardware import CPU, GPUS, Hardware, measure_cpu
from layerbudget.storage import content_hash, hash_matches, latency_file, package_dir, write_with_hash

LATENCY_VERSION = 1
COLUMNS = [
    "target", "n", "k", "m", "option", "format", "path", "weight_bytes", "flops", "roofline_us", "measured_us",
    "latency_us", "source",
]


# ----- what runs ----------------------------------------------------------------------------------
def kernel_format(option: Option, shape: tuple[int, int]) -> tuple[str | None, str]:
    """The kernels' format that runs ``option`` on a ``[N, K]`` weight, or ``(None, why it runs dense)``."""
    _, k = shape
    if option.is_dense:
        return None, "dense"
    if option.bits is not None and option.bits not in PACK_BITS:
        return None, f"{option.bits}-bit codes have no kernel format (kernels pack {'/'.join(map(str, PACK_BITS))} bits)"
    if option.sparse is not None and option.pattern != "2:4":
        return None, "unstructured sparsity has no kernel format (kernels run 2:4 only)"
    if option.pattern == "2:4":
        if k % 32:
            return None, f"2:4 kernels need K divisible by 32, but K={k}"
        if option.bits is None:
            return "sparse24", ""
        g = option.group_size
        if (g is not None and g % 2) or (k // 2) % k_multiple(option.bits):
            return None, (
                f"2:4 + {option.bits}-bit kernels need an even group size and K/2 divisible by "
                f"{k_multiple(option.bits)}"
            )
        return "sparse24_quant", ""
    if k % k_multiple(option.bits):  # type: ignore[arg-type]
        return None, f"K={k} is not a multiple of {k_multiple(option.bits)} needed to pack {option.bits}-bit codes"  # type: ignore[arg-type]
    return "lowbit", ""


@dataclass(frozen=True)
class Launch:
    """One kernel of a matmul: the bytes it moves and the FLOPs it does."""

    nbytes: float
    flops: float


def launches(option: Option, shape: tuple[int, int], m: int, hw: Hardware) -> tuple[str | None, str, list[Launch]]:
    """(format, path, kernels) of one matmul of ``m`` rows on ``hw`` (see the module docstring)."""
    n, k = shape
    fmt, _ = kernel_format(option, shape)
    a = hw.act_bytes
    io = a * m * (k + n)
    flops = 2.0 * m * n * k
    dense = Launch(a * n * k + io, flops)
    if fmt is None:
        return None, "dense", [dense]
    packed = math.ceil(option.cost_bits(shape) / 8)
    path = dispatch_path(m, fmt, option.bits)
    if hw.name != CPU and path != "dequant":
        return fmt, path, [Launch(packed + io, flops)]
    return fmt, ("reference" if hw.name == CPU else "dequant"), [Launch(packed + a * n * k, 0.0), dense]


def roofline_us(hw: Hardware, kernels: Iterable[Launch]) -> float:
    """``Σ max(bytes / (bandwidth · eff), FLOPs / (peak · eff)) + overhead`` in microseconds."""
    total = 0.0
    for kern in kernels:
        t_mem = kern.nbytes / (hw.bandwidth_gbs * 1e9 * hw.bw_efficiency)
        t_math = kern.flops / (hw.tflops * 1e12 * hw.flop_efficiency)
        total += max(t_mem, t_math) * 1e6 + hw.overhead_us
    return total


# ----- measurement on this CPU ----------------------------------------------------------------------
def _weight(option: Option, shape: tuple[int, int], fmt: str | None, gen: torch.Generator, device: str = "cpu"):
    """A random weight of ``shape`` in the form that runs ``option`` (fp32 on the CPU, fp16 on a GPU)."""
    n, k = shape
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device, torch.float32 if device == "cpu" else torch.float16)
    if fmt == "lowbit":
        return PackedQuantWeight.from_dense(w, option.bits, option.group_size)
    if fmt == "sparse24":
        return Sparse24Weight.from_dense(w, prune=True)
    if fmt == "sparse24_quant":
        g = option.group_size
        return Sparse24QuantWeight.from_dense(magnitude_prune_24(w), option.bits, None if g is None else g // 2)
    return w


def measure_cpu_us(option: Option, shape: tuple[int, int], m: int, *, min_seconds: float = 0.05, repeats: int = 7) -> float:
    """Median wall time (µs) of the CPU path that runs ``option`` on ``[N, K]`` for ``m`` fp32 rows."""
    fmt, _ = kernel_format(option, shape)
    gen = torch.Generator().manual_seed(shape[0] * 7919 + shape[1])
    weight = _weight(option, shape, fmt, gen)
    x = torch.randn(m, shape[1], generator=gen)
    fn = (lambda: F.linear(x, weight)) if fmt is None else (lambda: packed_matmul(x, weight))
    with torch.inference_mode():
        fn()
        t = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t, 1e-7)
        inner = max(1, int(min_seconds / once / repeats))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t) / inner)
    times.sort()
    return times[len(times) // 2] * 1e6


# ----- measurement on a present GPU -------------------------------------------------------------------
GPU_NAMES = {"h100": "H100", "h200": "H200", "a100": "A100", "l40s": "L40S", "rtx4090": "RTX 4090"}


def is_target_gpu(target: str, name: str) -> bool:
    """Whether a CUDA device named ``name`` (``NVIDIA H100 80GB HBM3``) is the GPU of latency target ``target``."""
    return target in GPU_NAMES and GPU_NAMES[target].lower() in name.lower()


def foreign_gpus(target: str, names: Iterable[str]) -> list[str]:
    """The device names among ``names`` that are not ``target``'s GPU (sorted, each once)."""
    return sorted({g for g in names if not is_target_gpu(target, g)})


def live_gpu(target: str) -> str | None:
    """The CUDA device name when ``target``'s GPU is present here (latency is then measured), else None."""
    if target not in GPU_NAMES or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return name if is_target_gpu(target, name) else None


def measure_gpu_us(option: Option, shape: tuple[int, int], m: int) -> float:
    """Median time (µs, ``triton.testing.do_bench``, L2 flushed) of what runs ``option`` on this GPU, fp16."""
    from triton.testing import do_bench

    fmt, _ = kernel_format(option, shape)
    gen = torch.Generator().manual_seed(shape[0] * 7919 + shape[1])
    weight = _weight(option, shape, fmt, gen, "cuda")
    x = torch.randn(m, shape[1], generator=gen).to("cuda", torch.float16)
    fn = (lambda: F.linear(x, weight)) if fmt is None else (lambda: packed_matmul(x, weight))
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1e3


# ----- measured GPU tables ---------------------------------------------------------------------------
def bench_format_name(option: Option, fmt: str | None) -> str:
    """The ``format`` name ``layerbudget.kernels.bench`` writes for an option (``fp16`` when dense)."""
    if fmt is None:
        return "fp16"
    g = "ch" if option.group_size is None else option.group_size
    if fmt == "lowbit":
        return f"w{option.bits}g{g}"
    if fmt == "sparse24":
        return "2:4"
    half = "ch" if option.group_size is None else option.group_size // 2  # group of kept values
    return f"2:4+w{option.bits}g{half}"


def measured_tables(target: str, root: Path | None = None) -> pd.DataFrame | None:
    """Every committed ``kernels.bench`` CSV for ``target`` (``<target>-*.csv``), or ``None``; a
    :class:`LayerbudgetError` if a table holds rows of another GPU (by their ``gpu`` column)."""
    base = Path(root) if root is not None else package_dir("layerbudget.profiles") / "data" / "latency"
    files = sorted(base.glob(f"{target}-*.csv")) if base.is_dir() else []
    if not files:
        return None
    frames = []
    for f in files:
        with open(f, newline="") as fh:
            frames.append(pd.DataFrame(list(csv.DictReader(fh))))
        others = foreign_gpus(target, frames[-1].get("gpu", ()))
        if others:
            raise LayerbudgetError(f"latency table {f} holds rows measured on {others[0]!r}; a {target}-*.csv table "
                                   f"holds only {GPU_NAMES[target]} rows (a table is named for the GPU it was measured on)")
    df = pd.concat(frames, ignore_index=True)
    for col in ("n", "k", "m", "weight_bytes"):
        df[col] = df[col].astype(int)
    df["ms_auto"] = df["ms_auto"].astype(float)
    return df


def _table_launches(row, a: int = 2) -> list[Launch]:
    n, k, m = int(row.n), int(row.k), int(row.m)
    io, flops = a * m * (k + n), 2.0 * m * n * k
    if row.path_auto in ("gemv", "tc", "triton"):  # one fused launch
        return [Launch(int(row.weight_bytes) + io, flops)]
    dense = Launch(a * n * k + io, flops)
    return [dense] if row.path_auto == "cublas" else [Launch(int(row.weight_bytes) + a * n * k, 0.0), dense]


def calibrate(hw: Hardware, rows: list[tuple[list[Launch], float]], source: str) -> Hardware:
    """Fit bandwidth/peak efficiencies and per-kernel overhead to measured ``(kernels, µs)`` rows.

    Grid search over the two efficiencies (5 %–100 %); for each pair the overhead is the median of
    the per-kernel residuals (clamped at 0); the fit minimises the mean absolute relative error.
    """
    if not rows:
        return hw
    grid = np.linspace(0.05, 1.0, 39)
    best = (math.inf, hw)
    measured = np.array([us for _, us in rows])
    for bw in grid:
        for fl in grid:
            base = hw.calibrated(float(bw), float(fl), 0.0, source)
            pred = np.array([roofline_us(base, ks) for ks, _ in rows])
            counts = np.array([len(ks) for ks, _ in rows])
            overhead = max(0.0, float(np.median((measured - pred) / counts)))
            err = float(np.mean(np.abs(pred + overhead * counts - measured) / measured))
            if err < best[0]:
                best = (err, hw.calibrated(float(bw), float(fl), overhead, source))
    return best[1]


def gpu_model(target: str, root: Path | None = None) -> tuple[Hardware, pd.DataFrame | None]:
    """The GPU's roofline (calibrated on its measured tables when present) and those tables."""
    hw = GPUS[target]
    table = measured_tables(target, root)
    if table is None:
        return hw, None
    rows = [(_table_launches(r), float(r.ms_auto) * 1e3) for r in table.itertuples()]
    gpus = ", ".join(sorted(set(table["gpu"]))) if "gpu" in table else target
    return calibrate(hw, rows, f"roofline fitted to {len(rows)} measured rows ({gpus})"), table


# ----- the table ------------------------------------------------------------------------------------
def latency_table(
    items: Iterable[tuple[tuple[int, int], str]],
    target: str,
    m: int,
    *,
    cpu: Hardware | None = None,
    tables_root: Path | None = None,
) -> pd.DataFrame:
    """Latency of every distinct ``((N, K), option)`` for ``m`` rows on ``target``."""
    if target != CPU and target not in GPUS:
        raise LayerbudgetError(f"unknown latency target {target!r}; known: {CPU}, {', '.join(GPUS)}")
    if target == CPU:
        hw, table = (cpu or measure_cpu()), None
    else:
        hw, table = gpu_model(target, tables_root)
    lookup = {}
    if table is not None:
        for r in table.itertuples():
            lookup[(r.n, r.k, r.m, r.format)] = (float(r.ms_auto) * 1e3, f"measured {r.gpu} {r.date}")
    live = live_gpu(target)
    rows = []
    for shape, name in sorted(set(items)):
        opt = parse_option(name)
        fmt, path, kernels = launches(opt, shape, m, hw)
        roof = roofline_us(hw, kernels)
        measured, source = math.nan, hw.source
        if target == CPU:
            measured, source = measure_cpu_us(opt, shape, m), hw.source
        elif live is not None:
            measured, source = measure_gpu_us(opt, shape, m), f"measured live {live}"
        elif (shape[0], shape[1], m, bench_format_name(opt, fmt)) in lookup:
            measured, source = lookup[(shape[0], shape[1], m, bench_format_name(opt, fmt))]
        rows.append(
            {
                "target": target, "n": shape[0], "k": shape[1], "m": m, "option": name, "format": fmt or "dense",
                "path": path, "weight_bytes": math.ceil(opt.cost_bits(shape) / 8) if not opt.is_dense else 2 * shape[0] * shape[1],
                "flops": 2.0 * m * shape[0] * shape[1], "roofline_us": roof, "measured_us": measured,
                "latency_us": measured if math.isfinite(measured) else roof, "source": source,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def problem_items(problem: Problem) -> list[tuple[tuple[int, int], str]]:
    """Every distinct (unit shape, option) of the problem's unit slots."""
    return sorted({(shape, o) for s in problem.slots if not s.is_subblock for o in s.options for _, shape in s.units})


def slot_latency_ns(problem: Problem, table: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Integer nanoseconds of every (unit slot, option): the sum over the slot's units."""
    us = {((int(r.n), int(r.k)), r.option): float(r.latency_us) for r in table.itertuples()}
    out = {}
    for s in problem.slots:
        if s.is_subblock:
            continue
        for o in s.options:
            missing = [u for u, shape in s.units if (shape, o) not in us]
            if missing:
                raise LayerbudgetError(f"the latency table lacks option {o!r} for the shape of {missing[0]}")
            out[(s.name, o)] = sum(round(us[(shape, o)] * 1000) for _, shape in s.units)
    return out


def machine_id() -> dict:
    """What a CPU measurement depends on (it is cached per machine, thread count and torch version)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "threads": torch.get_num_threads(), "torch": torch.__version__}


def load_or_build_latency(problem: Problem, target: str, m: int, cache_dir: Path) -> tuple[pd.DataFrame, bool]:
    """The cached latency table of this problem's (shape, option) pairs on ``target``, or a new one."""
    items = problem_items(problem)
    parts = {"version": LATENCY_VERSION, "target": target, "m": m, "items": items}
    if target == CPU:
        parts["machine"] = machine_id()
    else:
        table = measured_tables(target)
        parts["tables"] = None if table is None else content_hash(table.to_dict(orient="list"))
        parts["live"] = live_gpu(target) and {"gpu": live_gpu(target), **machine_id()}
    key = content_hash(parts)
    path = latency_file(cache_dir, target, key)
    recorded = hash_matches(path)
    if recorded is not None:
        try:
            if not recorded:
                raise CorruptCache(f"latency table {path} does not match its recorded hash")
            return pd.read_parquet(path), True
        except (CorruptCache, OSError, ValueError) as exc:
            notice(f"{exc}; measuring the latency table again")
    table = latency_table(items, target, m)
    write_with_hash(path, lambda p: table.to_parquet(p, index=False))
    return table, False
