"""Benchmark of the packed-weight matmuls against fp16 cuBLAS and torch's int4 tinygemm, written to CSV.

Usage: ``python -m layerbudget.kernels.bench --out FILE.csv [--shapes 4096x4096,...] [--ms 1,16]
[--formats w4g128,2:4] [--jobs 12] [--sweep SWEEP.csv]``. Needs a CUDA GPU and Triton; on any
other host it prints one line and exits with status 2 instead of reporting numbers.

Timing: ``triton.testing.do_bench`` (median of repeated runs; it flushes the L2 cache between
calls, so weights that would fit in L2 are not read from cache). Each row reports, for weight
shape ``N x K`` and ``M`` activation rows, in milliseconds:

- ``inline_ptx``: whether the kernels were built with their inline PTX (1) or from plain Triton
  operations (0, ``LAYERBUDGET_INLINE_PTX=0``; see :mod:`layerbudget.kernels.triton_common`);
- ``ms_gemv`` (decode kernel, ``M <= 4``), ``ms_tc`` (tensor-core kernel), ``ms_dequant``
  (dequantize kernel + ``F.linear``), ``ms_fp16`` (``F.linear`` with the dense fp16 weight) and
  ``ms_auto`` / ``path_auto``: what the dispatching wrapper runs (rule in
  :mod:`layerbudget.kernels.configs`); ``best_path`` is the fastest of the paths timed, the data
  from which the dispatch thresholds are set;
- ``ms_tinygemm``: torch's int4 tinygemm (``aten._weight_int4pack_mm``, bf16 activations, groups
  of 128) on the same shape, with ``tinygemm_vs_bf16`` its speedup over bf16 ``F.linear``; the
  ``peers`` column names the peers that ran (empty when this torch has none);
- ``gbps_auto``: (stored weight bytes incl. metadata + x + y bytes) / ``ms_auto``, and
  ``frac_copy_bw``: that over the device-to-device copy bandwidth measured in the same run
  (``copy_gbps``, counting read + write bytes);
- ``speedup_vs_fp16`` = ``ms_fp16 / ms_auto``, ``speedup_vs_tinygemm`` = ``ms_tinygemm / ms_auto``;
  ``max_rel_err``: the worst error, against the torch reference (``path="reference"``), of the
  paths and launches whose times count; one that is wrong (``WRONG_REL_ERR``) or raises is named in
  ``failed`` with why, and its time counts nowhere (so one failing kernel costs its own numbers only).

``--sweep FILE`` instead times candidate launch configurations of every kernel (the data behind
the tables of :mod:`layerbudget.kernels.configs`). ``--jobs`` compiles every kernel variant first
in that many processes (Triton's disk cache then serves the timing process).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .configs import (
    DEQUANT_MIN_M,
    GEMV_MAX_M,
    GEMV_ROWS,
    KERNELS,
    LaunchConfig,
    dispatch_path,
    field_dots,
    k_steps,
    pick_config,
    split_for,
)
from .ops import (
    PackedWeight,
    choose_path,
    code_bits,
    format_of,
    kernel_supported,
    packed_matmul,
    triton_available,
)
from .quant_weight import PackedQuantWeight
from .sparse24 import Sparse24QuantWeight, Sparse24Weight, magnitude_prune_24

LLAMA_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672))
MINILM_SHAPES = ((384, 384), (1536, 384), (384, 1536))
BATCH_ROWS = (1, 16, 64, 256)
TIMER = "triton.testing.do_bench median, L2 flushed between calls"


@dataclass(frozen=True)
class BenchFormat:
    """One weight format of the benchmark and how to build it from a dense fp16 weight."""

    name: str
    build: Callable[[torch.Tensor], PackedWeight] | None  # None: the fp16 baseline itself
    bits: int | None = None  # the code width (low-bit formats, 2:4 + low-bit) and group size (low-bit) the launch
    group: int | None = None  # table and the dispatch rule are told, as the modules tell them


FORMATS: dict[str, BenchFormat] = {
    f.name: f
    for f in (
        BenchFormat("fp16", None),
        BenchFormat("w4g128", lambda w: PackedQuantWeight.from_dense(w, 4, 128), 4, 128),
        BenchFormat("w3g128", lambda w: PackedQuantWeight.from_dense(w, 3, 128), 3, 128),
        BenchFormat("w2g64", lambda w: PackedQuantWeight.from_dense(w, 2, 64), 2, 64),
        BenchFormat("w8g128", lambda w: PackedQuantWeight.from_dense(w, 8, 128), 8, 128),
        BenchFormat("2:4", lambda w: Sparse24Weight.from_dense(w, prune=True)),
        # 64 kept values per group = 128 dense columns
        BenchFormat("2:4+w4g64", lambda w: Sparse24QuantWeight.from_dense(magnitude_prune_24(w), 4, 64), 4),
    )
}

def kernel_format(name: str) -> str | None:
    """The dispatch table's format (:mod:`.configs`) of a bench format name; ``None`` for the fp16 baseline."""
    if FORMATS[name].build is None:
        return None
    return "lowbit" if name.startswith("w") else "sparse24" if name == "2:4" else "sparse24_quant"


COLUMNS = (
    "gpu", "date", "torch", "triton", "inline_ptx", "timer", "copy_gbps", "peers", "n", "k", "m", "format", "bits_per_weight",
    "weight_bytes", "path_auto", "ms_fp16", "ms_gemv", "ms_tc", "ms_dequant", "ms_auto", "ms_tinygemm",
    "tinygemm_vs_bf16", "gbps_auto", "frac_copy_bw", "speedup_vs_fp16", "speedup_vs_tinygemm", "best_path",
    "max_rel_err", "config_gemv", "config_tc", "failed",
)
SWEEP_COLUMNS = ("gpu", "n", "k", "m", "format", "kernel", "block_m", "block_n", "block_k", "split_k", "num_warps",
                 "num_stages", "ms", "ms_fp16", "speedup_vs_fp16", "max_rel_err")
NAN = float("nan")
WRONG_REL_ERR = 1e-2  # a result this far from the torch reference (relative to its largest value) is wrong


def inline_ptx() -> int:
    """1 when the compiled kernels use their inline PTX, 0 for the plain-Triton build."""
    from .triton_common import INLINE_PTX

    return int(INLINE_PTX.value)


def _bench(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second, GB/s) of a ``nbytes`` buffer."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6)).item()


def _checked_time(run: Callable[[], torch.Tensor], ref: torch.Tensor, timer: Callable[[Callable[[], object]], float],
                  label: str, failed: list[str]) -> tuple[float, float] | None:
    """``(ms, relative error)`` of one path or launch whose result matches ``ref``; ``None``, with a note in
    ``failed``, when it raises (compilation, resources) or is wrong: its time then counts nowhere."""
    try:
        err = rel_err(run(), ref)
        if not err < WRONG_REL_ERR:
            failed.append(f"{label}: wrong (rel err {err:.2g})")
            return None
        return timer(run), err
    except Exception as exc:  # one failing kernel must not cost the run the other rows
        failed.append(f"{label}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1][:160]}")
        return None


# ----- peers ---------------------------------------------------------------------------------------
def tinygemm_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm") and hasattr(torch.ops.aten, "_convert_weight_to_int4pack")


def tinygemm_case(dense: torch.Tensor, group: int = 128, inner_k_tiles: int = 8):
    """Torch's int4 tinygemm operands for ``dense: [N, K]`` (bf16, asymmetric 4-bit, groups of ``group``).

    Returns ``(run(x) -> y, dequantized bf16 weight)``; tinygemm computes ``(q - 8) * s + zero``.
    """
    n, k = dense.shape
    wg = dense.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = ((hi - lo) / 15).clamp(min=1e-8)
    z = (-lo / s).round()
    q = (wg / s + z).round().clamp(0, 15)
    deq = ((q - z) * s).reshape(n, k).to(torch.bfloat16)
    q = q.reshape(n, k).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).contiguous(), inner_k_tiles)
    zero_fp = (8 - z) * s
    sz = torch.cat([s.reshape(n, -1, 1), zero_fp.reshape(n, -1, 1)], 2).transpose(0, 1).contiguous()
    sz = sz.to(torch.bfloat16)
    return (lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, group, sz)), deq


# ----- configurations --------------------------------------------------------------------------------
def candidates(kernel: str, m: int, quick: bool = False) -> list[LaunchConfig]:
    """Launch configurations the sweep tries for one kernel at ``m`` rows (split-K filled in per shape);
    ``quick``: a smaller set around the usual winners."""
    if kernel == "gemv":
        bm = 1 if m == 1 else 2 if m == 2 else 4
        grid = ((32, 64, 128), (512, 1024), (4, 8), (1, 2)) if quick else ((16, 32, 64, 128), (256, 512, 1024),
                                                                            (4, 8), (1, 2))
        return [LaunchConfig("gemv", bm, bn, bk, 1, w, s) for bn, bk, w, s in itertools.product(*grid)
                if bn * bk <= 64 * 1024]
    if m <= 16:
        rows = 8 if m <= 8 else 16  # two-warp tiles: the one-dot-per-field kernel's (low-bit, triton_fielddot)
        tiles = [(rows, 64, 2), (rows, 128, 2), (16, 128, 4)]
        tiles += [] if quick else [(16, 64, 4), (16, 128, 8)]
    elif m <= 64:
        tiles = [(64, 64, 4), (64, 128, 4)] if quick else [(64, 64, 4), (64, 128, 4), (64, 128, 8)]
    else:
        tiles = [(128, 128, 8)] if quick else [(64, 128, 8), (128, 128, 8), (128, 256, 8), (256, 128, 8)]
    steps = ((128, 256), (2, 3)) if quick else ((64, 128, 256), (2, 3))
    return [LaunchConfig("tc", bm, bn, bk, 1, w, s) for (bm, bn, w), bk, s in itertools.product(tiles, *steps)]


def with_split(cfg: LaunchConfig, m: int, n: int, k: int, fmt: str, bits: int | None = None) -> list[LaunchConfig]:
    """``cfg`` without split-K, and with the split-K the table's rule would give its tiles (``bits``: the 2:4
    + low-bit format's code width, which sets the 2:4 tensor-core kernel's steps)."""
    split = split_for(-(-n // cfg.block_n) * -(-m // cfg.block_m), k_steps(cfg.kernel, fmt, k, bits, cfg.block_m,
                                                                          cfg.block_k))
    if split == 1:
        return [cfg]
    return [cfg, replace(cfg, split_k=split)]


def row_candidates(kernel: str, m: int, n: int, k: int, fmt: str, bits: int | None = None,
                   group: int | None = None) -> list[LaunchConfig]:
    """The table's configuration and a few alternatives that the bench times per row (the fastest is
    reported, with its configuration, so the table can be refitted from the CSV)."""
    base = pick_config(m, n, k, fmt, kernel, bits, group)
    if kernel == "gemv":
        alts = [(64, 128, 4, 2), (128, 128, 8, 2), (128, 128, 8, 1), (128, 256, 4, 2)]  # stages 1: no read-ahead
        shapes = [LaunchConfig("gemv", base.block_m, bn, bk, 1, w, st) for bn, bk, w, st in alts]
        if base.num_warps == 8:  # the table's launch held to two programs per SM (65536 registers): Triton 3.9
            shapes.append(replace(base, max_registers=128))  # gives the 2-bit decode kernel 140 (one program)
    elif m <= 16:
        shapes = [LaunchConfig("tc", 16, 128, 128, 1, 4, 3)]
        if fmt != "lowbit":  # the table's tile two steps ahead instead of four
            shapes.append(LaunchConfig("tc", base.block_m, base.block_n, base.block_k, 1, base.num_warps, 3))
        if fmt == "lowbit" and bits is not None and field_dots(bits, group, k, base.block_m):
            # a one-dot-per-field launch: the other tile width, four warps, and one chunk read ahead instead of two
            other = 64 if base.block_n == 128 else 128
            shapes = [LaunchConfig("tc", base.block_m, other, base.block_k, 1, 2, base.num_stages),
                      LaunchConfig("tc", base.block_m, 128, base.block_k, 1, 4, base.num_stages),
                      LaunchConfig("tc", base.block_m, base.block_n, base.block_k, 1, 2, 2), *shapes]
    elif m <= 64:
        shapes = [LaunchConfig("tc", 64, 128, 128, 1, 8, 3)]
    else:  # smaller K steps, and a narrower tile with fewer warps
        shapes = [LaunchConfig("tc", base.block_m, 128, 64, 1, 8, 3), LaunchConfig("tc", base.block_m, 64, 128, 1, 4, 3)]
    out = [base]
    for cfg in shapes:
        for c in with_split(cfg, m, n, k, fmt, bits):
            if c not in out:
                out.append(c)
    return out


# ----- precompiling -----------------------------------------------------------------------------------
def _small_weight(name: str, n: int = 256, k: int = 1024) -> PackedWeight:
    """A weight with the same kernel specialization (bits, group, chunk, divisibility) as the bench shapes."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    return FORMATS[name].build(torch.randn(n, k, device="cuda", dtype=torch.float16, generator=gen) * 0.02)


def _compile_job(job: tuple[str, int, LaunchConfig | None]) -> str:
    name, m, cfg = job
    try:
        w = _small_weight(name)
        x = torch.randn(m, w.k, device="cuda", dtype=torch.float16)
        packed_matmul(x, w, path="dequant" if cfg is None else "triton", config=cfg)
        torch.cuda.synchronize()
        return ""
    except Exception as err:  # reported, the timing run shows the failure again
        return f"{name} M={m} {cfg}: {err}"


def precompile(jobs: list[tuple[str, int, LaunchConfig | None]], workers: int) -> None:
    """Compile every (format, M, config) in ``workers`` processes so the timing run finds them cached."""
    if workers <= 1 or not jobs:
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    t0 = time.time()
    unique = list(dict.fromkeys(jobs))
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        failures = [f for f in pool.map(_compile_job, unique) if f]
    for f in failures:
        print("compile failed:", f, file=sys.stderr)
    print(f"precompiled {len(unique)} variants in {time.time() - t0:.0f} s with {workers} processes", flush=True)


# ----- rows ------------------------------------------------------------------------------------------------
def kernel_paths(m: int, fmt: str) -> list[str]:
    return (["gemv"] if m <= max(GEMV_ROWS) else []) + ["tc"]


def bench_shape(
    n: int,
    k: int,
    ms: tuple[int, ...],
    formats: list[str],
    copy_gbps: float,
    device: str = "cuda",
    timer: Callable[[Callable[[], object]], float] = _bench,
    peers: bool = True,
    tune: bool = False,
) -> Iterator[dict]:
    """The rows for one weight shape ``[N, K]``, each as soon as it is measured (``device``/``timer`` are
    swappable for a CPU smoke test); ``tune``: each kernel path reports the fastest of :func:`row_candidates`."""
    gen = torch.Generator(device=device).manual_seed(n * 100003 + k)
    dense = torch.randn(n, k, device=device, dtype=torch.float16, generator=gen) * 0.02
    weights = {name: FORMATS[name].build(dense) for name in formats if FORMATS[name].build is not None}
    tiny = None
    if peers and device == "cuda" and tinygemm_available() and k % 1024 == 0:
        try:
            tiny = tinygemm_case(dense)
        except RuntimeError as exc:
            print(f"tinygemm failed, no peer timed: {exc}", file=sys.stderr)
    for m in ms:
        x = torch.randn(m, k, device=device, dtype=torch.float16, generator=gen)
        io_bytes = 2 * m * (k + n)
        ms_fp16 = timer(lambda: F.linear(x, dense))  # noqa: B023 - called before the loop moves on
        ms_tiny = ratio_tiny = NAN
        if tiny is not None:
            run, deq = tiny
            xb = x.to(torch.bfloat16)
            try:  # a torch whose tinygemm changed its signature costs the peer column only
                ms_tiny = timer(lambda: run(xb))  # noqa: B023
                ratio_tiny = timer(lambda: F.linear(xb, deq)) / ms_tiny  # noqa: B023
            except RuntimeError as exc:
                print(f"tinygemm failed, no peer timed: {exc}", file=sys.stderr)
                tiny = None
        for name in formats:
            row = {"n": n, "k": k, "m": m, "format": name, "ms_fp16": ms_fp16, "ms_tinygemm": ms_tiny,
                   "tinygemm_vs_bf16": ratio_tiny, "peers": "tinygemm-w4g128-bf16" if tiny is not None else ""}
            if name == "fp16":
                row.update(bits_per_weight=16.0, weight_bytes=2 * n * k, path_auto="cublas", ms_gemv=NAN, ms_tc=NAN,
                           ms_dequant=NAN, ms_auto=ms_fp16, best_path="cublas", max_rel_err=0.0, config_gemv="",
                           config_tc="", failed="")
            else:
                w = weights[name]
                fmt, width, group = format_of(w), code_bits(w), FORMATS[name].group  # as the modules tell the table
                ref = packed_matmul(x, w, path="reference")  # torch only: no kernel checks itself
                failed: list[str] = []
                times, configs, err = {"gemv": NAN, "tc": NAN}, {"gemv": "", "tc": ""}, 0.0
                supported = kernel_supported(w)
                if supported:
                    for kern in kernel_paths(m, fmt):
                        for cfg in (row_candidates(kern, m, n, k, fmt, width, group) if tune
                                    else [pick_config(m, n, k, fmt, kern, width, group)]):
                            got = _checked_time(lambda: packed_matmul(x, w, path="triton", config=cfg), ref,  # noqa: B023
                                                timer, cfg.name, failed)
                            if got is not None:
                                err = max(err, got[1])
                                if not got[0] >= times[kern]:  # first, or faster
                                    times[kern], configs[kern] = got[0], cfg.name
                got = _checked_time(lambda: packed_matmul(x, w, path="dequant"), ref, timer, "dequant", failed)  # noqa: B023
                ms_dequant = NAN if got is None else got[0]
                err = err if got is None else max(err, got[1])
                path = choose_path(x, fmt, supported=supported, bits=width)
                if path == "triton":
                    path = dispatch_path(m, fmt, width)
                timed = {"gemv": times["gemv"], "tc": times["tc"], "dequant": ms_dequant}
                if path not in timed:  # the CPU reference (a smoke run without a GPU)
                    timed[path] = timer(lambda: packed_matmul(x, w, path=path))  # noqa: B023
                right = [(t, p) for p, t in timed.items() if not math.isnan(t)]
                row.update(bits_per_weight=w.bits_per_weight, weight_bytes=w.nbytes, path_auto=path,
                           ms_gemv=times["gemv"], ms_tc=times["tc"], ms_dequant=ms_dequant, ms_auto=timed[path],
                           best_path=min(right)[1] if right else "", max_rel_err=err, config_gemv=configs["gemv"],
                           config_tc=configs["tc"], failed="; ".join(failed))
            gbps = (row["weight_bytes"] + io_bytes) / (row["ms_auto"] * 1e-3) / 1e9
            row.update(gbps_auto=gbps, frac_copy_bw=gbps / copy_gbps, speedup_vs_fp16=ms_fp16 / row["ms_auto"],
                       speedup_vs_tinygemm=ms_tiny / row["ms_auto"])
            yield row


def sweep_shape(n: int, k: int, ms: tuple[int, ...], formats: list[str], kernels: list[str],
                quick: bool = False, device: str = "cuda",
                timer: Callable[[Callable[[], object]], float] = _bench) -> list[dict]:
    """Time every candidate launch configuration of ``kernels`` for one shape (rows of SWEEP_COLUMNS)."""
    gen = torch.Generator(device=device).manual_seed(n * 100003 + k)
    dense = torch.randn(n, k, device=device, dtype=torch.float16, generator=gen) * 0.02
    rows = []
    for name in formats:
        if FORMATS[name].build is None:
            continue
        w = FORMATS[name].build(dense)
        fmt = format_of(w)
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.float16, generator=gen)
            ms_fp16 = timer(lambda: F.linear(x, dense))  # noqa: B023
            ref = packed_matmul(x, w, path="reference")
            for kern in kernels:
                if kern == "gemv" and m > max(GEMV_ROWS):
                    continue
                best = math.inf
                for base in candidates(kern, m, quick):
                    for cfg in with_split(base, m, n, k, fmt, FORMATS[name].bits):
                        try:
                            err = rel_err(packed_matmul(x, w, path="triton", config=cfg), ref)
                            t = timer(lambda: packed_matmul(x, w, path="triton", config=cfg))  # noqa: B023
                        except Exception as exc:  # an invalid config (shared memory, ...) is skipped
                            print(f"  {name} M={m} {cfg}: {type(exc).__name__}", flush=True)
                            continue
                        best = min(best, t)
                        rows.append({"n": n, "k": k, "m": m, "format": name, **asdict(cfg), "ms": t,
                                     "ms_fp16": ms_fp16, "speedup_vs_fp16": ms_fp16 / t, "max_rel_err": err})
                print(f"{n}x{k} M={m} {name} {kern}: best x{ms_fp16 / best:.2f} vs fp16", flush=True)
    return rows


def _parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (s.lower().split("x") for s in text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"shapes must look like 4096x4096,8192x28672 (NxK), got {text!r}") from err


def _jobs(shapes, ms, formats, sweep: bool, kernels: list[str], quick: bool = False, tune: bool = False
          ) -> list[tuple[str, int, LaunchConfig | None]]:
    jobs: list[tuple[str, int, LaunchConfig | None]] = []
    for (n, k), m, name in itertools.product(shapes, ms, formats):
        if FORMATS[name].build is None:
            continue
        fmt, bits, group = kernel_format(name), FORMATS[name].bits, FORMATS[name].group
        jobs.append((name, m, None))
        if sweep:
            jobs += [(name, m, c) for kern in kernels if not (kern == "gemv" and m > max(GEMV_ROWS))
                     for base in candidates(kern, m, quick) for c in with_split(base, m, n, k, fmt, bits)]
        else:
            jobs += [(name, m, c) for kern in kernel_paths(m, fmt)
                     for c in (row_candidates(kern, m, n, k, fmt, bits, group) if tune
                               else [pick_config(m, n, k, fmt, kern, bits, group)])]
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerbudget.kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--shapes", type=_parse_shapes, default=LLAMA_SHAPES + MINILM_SHAPES,
                        help="NxK list, comma separated")
    parser.add_argument("--ms", default=",".join(map(str, BATCH_ROWS)), help="activation rows M, comma separated")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"subset of {','.join(FORMATS)}")
    parser.add_argument("--sweep", action="store_true", help="time candidate launch configurations instead")
    parser.add_argument("--kernels", default="gemv,tc", help="kernels the sweep tries (gemv, tc)")
    parser.add_argument("--quick", action="store_true", help="the sweep tries fewer configurations")
    parser.add_argument("--tune", action="store_true",
                        help="each kernel path reports the fastest of a few configurations (and which)")
    parser.add_argument("--jobs", type=int, default=1, help="processes compiling the kernels before timing")
    args = parser.parse_args(argv)
    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats {unknown}; known: {list(FORMATS)}")
    kernels = args.kernels.split(",")
    if set(kernels) - set(KERNELS):
        parser.error(f"--kernels takes gemv and/or tc, got {args.kernels!r}")
    if not torch.cuda.is_available() or not triton_available():
        print("bench: needs a CUDA GPU and Triton; none on this host, so no numbers are reported.", file=sys.stderr)
        return 2
    import triton

    ms = tuple(int(v) for v in args.ms.split(","))
    precompile(_jobs(args.shapes, ms, formats, args.sweep, kernels, args.quick, args.tune), args.jobs)
    gpu = torch.cuda.get_device_name()
    if args.sweep:
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS)
            writer.writeheader()
            for n, k in args.shapes:
                for name in formats:  # written format by format: a time limit keeps what was measured
                    for row in sweep_shape(n, k, ms, [name], kernels, args.quick):
                        writer.writerow({"gpu": gpu, **row})
                    fh.flush()
        return 0
    copy_gbps = copy_bandwidth_gbps()
    common = {
        "gpu": gpu, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton.__version__, "inline_ptx": inline_ptx(), "timer": TIMER,
        "copy_gbps": copy_gbps,
    }
    print(f"{gpu}: copy bandwidth {copy_gbps:.0f} GB/s; decode kernel up to M = GEMV_MAX_M {GEMV_MAX_M}, "
          f"dequantize from M = DEQUANT_MIN_M {DEQUANT_MIN_M}", flush=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for n, k in args.shapes:
            for row in bench_shape(n, k, ms, formats, copy_gbps, tune=args.tune):
                writer.writerow({**common, **row})
                print(f"{n:>6}x{k:<6} M={row['m']:<4} {row['format']:<10} {row['path_auto']:<8} "
                      f"{row['ms_auto']:.4f} ms  {row['gbps_auto']:.0f} GB/s ({row['frac_copy_bw']:.2f} of copy)  "
                      f"x{row['speedup_vs_fp16']:.2f} vs fp16  x{row['speedup_vs_tinygemm']:.2f} vs tinygemm "
                      f"best={row['best_path']}", flush=True)
                if row["failed"]:
                    print(f"  failed: {row['failed']}", flush=True)
                fh.flush()  # a time limit keeps every row measured so far
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
