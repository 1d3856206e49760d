"""Compile the Triton kernels ahead of time for a CUDA architecture, with no GPU needed.

The interpreter (``TRITON_INTERPRET=1``) checks numerics on CPU but accepts programs the real
compiler rejects; this check lowers kernel variants through Triton's CUDA backend (TTIR → TTGIR →
PTX → cubin with the ``ptxas`` bundled in the triton wheel) and reports each one's registers,
spills and shared memory (a variant needing more shared memory than the architecture gives a
program fails: it would compile, then fail at launch). Usage: ``python -m
layerbudget.kernels.aot_check [--arch 90] [--all] [--dump DIR] [--sass [--csv FILE] [--max-registers N]]``
(``--dump`` writes each variant's TTGIR and PTX; ``--sass`` compiles the decode kernels as
:func:`~.configs.pick_config` launches them at 8192x8192 and reports the static instructions per weight
of their K loop, see :mod:`.sass`, with their registers and spill stack, all capped at ``N`` registers
with ``--max-registers``); run it without ``TRITON_INTERPRET`` set. Exit status 1 if any variant fails
to compile.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

_INTS = ("M", "N", "K", "stride_xm", "stride_pn", "stride_sn", "stride_om", "stride_vn", "stride_mn",
         "stride_on")
_PTRS = {
    "lowbit": {"packed_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16"},
    "sparse": {"values_ptr": "*fp16", "meta_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16"},
    "sparse_quant": {"values_ptr": "*i32", "meta_ptr": "*i32", "scales_ptr": "*bf16", "zeros_ptr": "*bf16"},
    "sparse_quant16": {"values_ptr": "*i32", "meta_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16"},
}


@dataclass(frozen=True)
class Variant:
    """One specialization of a kernel: pointer dtypes, constexprs and launch options."""

    module: str  # triton_gemv, triton_lowbit, triton_sparse
    kernel: str
    ptrs: dict[str, str]
    consts: dict[str, object]
    num_warps: int = 4
    num_stages: int = 2
    name: str = field(default="", compare=False)
    weights_per_iter: int = 0  # weights one thread handles per pass through the hot loop (0: not known)
    max_registers: int | None = None  # the launch's ``maxnreg`` (None: the compiler's choice)


def _mm(module: str, kernel: str, fmt: str, x: str, consts: dict, warps: int, stages: int, name: str) -> Variant:
    ptrs = {"x_ptr": x, **_PTRS[fmt], "bias_ptr": "*fp32", "out_ptr": x, "ws_ptr": "*fp32", "lock_ptr": "*i32"}
    return Variant(module, kernel, ptrs, consts, warps, stages, name)


def _gemv(x: str, bits: int, bm: int, split: int, flush: int, prefetch: bool = True) -> Variant:
    consts = {"BITS": bits, "GROUP": 128, "CU": 16, "FLUSH": flush, "EVEN": split == 1, "HAS_BIAS": True,
              "SPLIT_K": split, "PREFETCH": prefetch, "BLOCK_M": bm, "BLOCK_N": 16, "BLOCK_C": 2}
    return _mm("triton_gemv", "_gemv_lowbit_kernel", "lowbit", x, consts, 4, 2,
               f"gemv x={x} b{bits} rows={bm} split={split} flush={flush} read-ahead={prefetch}")


def _gemv24(x: str, quant: bool, bits: int, bm: int, split: int) -> Variant:
    consts = {"QUANT": quant, "BITS": bits, "GROUP": 64, "CU": 16, "FLUSH": 4 if quant else 1, "EVEN": split == 1,
              "WIDE": bits != 3,
              "HAS_BIAS": False,
              "SPLIT_K": split, "BLOCK_M": bm, "BLOCK_N": 16, "BLOCK_C": 2}
    return _mm("triton_gemv", "_gemv_sparse24_kernel", "sparse_quant" if quant else "sparse", x, consts, 4, 2,
               f"gemv 2:4 x={x} quant={quant} b{bits} rows={bm} split={split}")


def _tc(x: str, bits: int, bm: int, bn: int, split: int, warps: int, group: int = 128, jb: int = 2) -> Variant:
    from .triton_lowbit import x_permuted

    consts = {"BITS": bits, "GROUP": group, "CU": 16, "JB": jb, "HAS_BIAS": True, "SPLIT_K": split,
              "X_PERMUTED": x_permuted(bm, bn), "BLOCK_M": bm, "BLOCK_N": bn}
    return _mm("triton_lowbit", "_tc_lowbit_kernel", "lowbit", x, consts, warps, 3,
               f"tc x={x} b{bits} g{group} tile={bn}x{bm} jb={jb} split={split}")


def _fields(x: str, bits: int, group: int, rows: int, bn: int, split: int, warps: int, k: int = 8192) -> Variant:
    """The one-dot-per-field tensor-core kernel (:mod:`.triton_fielddot`) as it launches for rows of ``k``."""
    from .configs import LaunchConfig
    from .triton_fielddot import launch_constants

    cfg = LaunchConfig("tc", rows, bn, 16, split, warps, 2)
    consts = launch_constants(bits, group, k, x == "*bf16", cfg, True)
    return _mm("triton_fielddot", "_tc_fields_kernel", "lowbit", x, consts, warps, 2,
               f"tc fields x={x} b{bits} g{group} tile={bn}x{rows} split={split} warps={warps}")


def _tc24(x: str, quant: bool, bits: int, cu: int, bm: int = 16, split: int = 1) -> Variant:
    from .configs import pick_config, tc24_fields

    fields = tc24_fields(bm, cu, quant)
    consts = {"QUANT": quant, "BITS": bits, "GROUP": 64, "CU": cu, "FLUSH": 4 if cu > 1 else 1, "FIELDS": fields,
              "EVEN": cu == 1, "WIDE": bits != 3, "HAS_BIAS": True, "SPLIT_K": split, "BLOCK_M": bm, "BLOCK_N": 64,
              "BLOCK_C": 4 if cu == 1 else 2}
    stages = pick_config(bm, 8192, 8192, "sparse24_quant" if quant else "sparse24", "tc").num_stages  # as the table
    return _mm("triton_sparse", "_tc_sparse24_kernel", "sparse_quant" if quant else "sparse", x, consts, 4, stages,
               f"tc 2:4 x={x} quant={quant} b{bits} cu={cu} fields={fields} m={bm} split={split}")


def _dequant(bits: int) -> Variant:
    ptrs = {**_PTRS["lowbit"], "out_ptr": "*fp16"}
    consts = {"BITS": bits, "GROUP": 128, "CU": 16, "FLUSH": 8 if bits == 4 else 1, "BLOCK_N": 16, "BLOCK_C": 4}
    return Variant("triton_lowbit", "_dequant_lowbit_kernel", ptrs, consts, name=f"dequant b{bits}")


def _dequant24(quant: bool, bits: int) -> Variant:
    ptrs = {**_PTRS["sparse_quant" if quant else "sparse"], "out_ptr": "*bf16"}
    consts = {"QUANT": quant, "BITS": bits, "GROUP": 64, "CU": 16, "FLUSH": 4, "WIDE": True, "BLOCK_N": 16,
              "BLOCK_C": 2}
    return Variant("triton_sparse", "_dequant_sparse24_kernel", ptrs, consts, name=f"dequant 2:4 quant={quant} b{bits}")


def decode_variants(n: int = 8192, k: int = 8192) -> list[Variant]:
    """The decode kernels as :func:`~.configs.pick_config` launches them for ``[M, K] x [N, K]^T``,
    M = 1, 2, 4, fp16 activations (every low-bit width, 2:4 fp16 and 2:4 + low-bit), and the low-bit
    tensor-core kernels at M = 1, 16, 64, 256."""
    from .configs import field_dots, pick_config
    from .packing import chunk_values, fields_per_unit
    from .triton_gemv import lowbit_constants, sparse24_constants
    from .triton_lowbit import launch_constants as tile_constants
    from .triton_sparse import launch_constants as tc24_constants

    def variant(module: str, kernel: str, fmt: str, consts: dict, cfg, name: str, weights: int) -> Variant:
        """``weights``: what one program handles per pass through the hot loop, spread over its threads"""
        v = _mm(module, kernel, fmt, "*fp16", consts, cfg.num_warps, cfg.num_stages, name)
        return replace(v, weights_per_iter=weights // (32 * cfg.num_warps), max_registers=cfg.max_registers)

    out = []
    for m in (1, 2, 4):
        for bits, group in ((2, 64), (3, 128), (4, 128), (8, 128)):
            cfg = pick_config(m, n, k, "lowbit", bits=bits)
            c = lowbit_constants(bits, group, k, cfg, False)
            out.append(variant("triton_gemv", "_gemv_lowbit_kernel", "lowbit", c, cfg, f"gemv M={m} w{bits}g{group}",
                               cfg.block_n * c["BLOCK_C"] * c["CU"] * fields_per_unit(bits)))
        for quant, bits, group in ((False, 16, 1), (True, 4, 64)):
            cfg = pick_config(m, n, k, "sparse24_quant" if quant else "sparse24")
            c = sparse24_constants(quant, bits, group, k, cfg, True, False)
            e = fields_per_unit(bits if quant else 2)
            # the hot loop is the step loop: every kept value of BLOCK_C chunks
            out.append(variant("triton_gemv", "_gemv_sparse24_kernel", "sparse_quant16" if quant else "sparse", c, cfg,
                               f"gemv M={m} 2:4" + (f"+w{bits}g{group}" if quant else " fp16"),
                               cfg.block_n * c["BLOCK_C"] * c["CU"] * e))
    for m in (1, 16, 64, 256):
        for bits, group in ((2, 64), (3, 128), (4, 128), (8, 128)):
            cfg = pick_config(m, n, k, "lowbit", "tc", bits, group)
            if field_dots(bits, group, k, cfg.block_m):  # tc_lowbit hands these to the one-dot-per-field kernel
                v = _fields("*fp16", bits, group, cfg.block_m, cfg.block_n, cfg.split_k, cfg.num_warps, k)
                v = replace(v, name=f"tc   M={m} w{bits}g{group}", num_stages=cfg.num_stages,
                            max_registers=cfg.max_registers)
                out.append(replace(v, weights_per_iter=cfg.block_n * chunk_values(bits, k) // (32 * cfg.num_warps)))
                continue
            c = tile_constants(bits, group, k, cfg, True)
            out.append(variant("triton_lowbit", "_tc_lowbit_kernel", "lowbit", c, cfg, f"tc   M={m} w{bits}g{group}",
                               cfg.block_n * 2 * c["JB"] * 16))
        for quant, bits, group in ((False, 16, 1), (True, 4, 64)):
            cfg = pick_config(m, n, k, "sparse24_quant" if quant else "sparse24", "tc")
            c = tc24_constants(quant, bits, group, k, cfg, True, False)
            # the hot loop is the field loop: `FIELDS` fields of BLOCK_C chunks
            out.append(variant("triton_sparse", "_tc_sparse24_kernel", "sparse_quant16" if quant else "sparse", c, cfg,
                               f"tc   M={m} 2:4" + (f"+w{bits}g{group}" if quant else " fp16"),
                               cfg.block_n * c["BLOCK_C"] * c["CU"] * c["FIELDS"]))
    return out


def variants(full: bool = False) -> list[Variant]:
    """A quick set covering every kernel, or (``full``) the cross product of the main switches."""
    from .configs import field_dots

    if not full:
        return [
            _gemv("*fp16", 4, 1, 1, 8, False), _gemv("*bf16", 3, 4, 4, 1), _gemv24("*fp16", False, 16, 2, 1),
            _gemv24("*fp16", True, 4, 1, 2), _tc("*fp16", 4, 16, 64, 4, 4, 128, 4), _tc("*bf16", 2, 64, 128, 1, 8, 64, 2),
            _tc("*fp16", 3, 16, 64, 2, 4, 128, 4), _tc("*bf16", 8, 16, 64, 2, 4, 128, 2),
            _fields("*fp16", 4, 128, 8, 128, 4, 2), _fields("*bf16", 2, 128, 8, 64, 1, 4),
            _fields("*fp16", 3, 128, 8, 64, 4, 2),
            _tc24("*fp16", False, 16, 16), _tc24("*bf16", True, 3, 1), _tc24("*fp16", True, 4, 16, 16, 4),
            _dequant(4), _dequant24(True, 8),
        ]
    out = [_gemv(x, b, bm, s, f, pre) for x, b, bm, s, f, pre in itertools.product(
        ("*fp16", "*bf16"), (2, 3, 4, 8), (1, 2, 4), (1, 4), (1, 2), (True, False))]
    out += [_gemv24(x, q, b, bm, s) for x, q, b, bm, s in itertools.product(
        ("*fp16", "*bf16"), (False, True), (2, 3, 4, 8), (1, 4), (1, 2)) if q or b == 2]
    out += [_tc(x, b, bm, bn, s, w, g, jb) for x, b, (bm, bn, w), s, g, jb in itertools.product(
        ("*fp16", "*bf16"), (2, 3, 4, 8), ((16, 64, 4), (64, 128, 8), (128, 128, 8)), (1, 4), (32, 128), (1, 2, 4))
        if jb <= (16 if b == 3 else 32 // b) // 2]
    out += [_fields(x, b, g, rows, bn, s, w) for x, b, g, rows, (bn, w), s in itertools.product(
        ("*fp16", "*bf16"), (2, 3, 4, 8), (32, 64, 128, 8192), (8, 16), ((128, 2), (64, 2), (64, 4)), (1, 4))
        if (x == "*fp16" or b in (2, 4)) and field_dots(b, g, 8192, rows)]
    out += [_tc24(x, q, b, cu, bm, s) for x, q, b, cu, bm, s in itertools.product(
        ("*fp16", "*bf16"), (False, True), (3, 4, 8), (1, 16), (16, 64, 128), (1, 4)) if q or b == 4]
    out += [_dequant(b) for b in (2, 3, 4, 8)] + [_dequant24(q, b) for q in (False, True) for b in (3, 4)]
    return out


def compile_variant(v: Variant, arch: int):
    """Compile one variant to a cubin; returns Triton's compiled kernel (``metadata``, ``asm``)."""
    fn = getattr(importlib.import_module(f"{__package__}.{v.module}"), v.kernel)
    sig = {a: v.ptrs[a] if a in v.ptrs else "i32" for a in fn.arg_names if a in v.ptrs or a in _INTS}
    # as the JIT specializes them at run time for real shapes: pointers and sizes divisible by 16
    return compile_kernel(fn, sig, dict(v.consts), list(sig), v.num_warps, v.num_stages, arch, v.max_registers)


def compile_kernel(fn, signature: dict[str, str], constants: dict, aligned: list[str], num_warps: int,
                   num_stages: int, arch: int, max_registers: int | None = None):
    """Compile Triton kernel ``fn`` for ``sm_<arch>`` with the options every launch of the project uses:
    ``signature`` gives each runtime argument's type (constants are added as constexpr), ``aligned`` the
    arguments marked divisible by 16 (as the JIT marks pointers and sizes that are), ``max_registers`` the
    launch's register cap (``maxnreg``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource
    from triton.language import target_info

    from .triton_common import FP_FUSION

    sig = {**signature, **{c: "constexpr" for c in constants}}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    opts = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": FP_FUSION}  # as launched
    if max_registers is not None:
        opts["maxnreg"] = max_registers
    target = GPUTarget("cuda", arch, 32)

    def this_target():  # what a kernel asks of its target (``cuda_capability_geq``) is the one compiled for
        return target

    this_target.__triton_builtin__ = True
    current, target_info.current_target = target_info.current_target, this_target
    try:
        return triton.compile(ASTSource(fn, sig, constants, attrs), target=target, options=opts)
    finally:
        target_info.current_target = current


# Shared memory one program may use (opt-in maximum per block), by compute capability: a kernel that
# compiles but needs more fails at launch with "out of resources".
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


def smem_fits(shared: int, arch: int) -> bool:
    """Whether ``shared`` bytes per program fit the architecture (unknown architectures: the sm_90 limit)."""
    return shared <= SMEM_LIMIT.get(arch, SMEM_LIMIT[90])


def resources(cubin: bytes) -> tuple[str, str]:
    """(registers, stack bytes) per thread from the cubin, read with the ``cuobjdump`` Triton bundles."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        try:
            text = subprocess.run([str(tool), "--dump-resource-usage", fh.name], capture_output=True, text=True,
                                  timeout=60).stdout
        except OSError:
            return "?", "?"
    regs, stack = re.search(r"REG:(\d+)", text), re.search(r"STACK:(\d+)", text)
    return (regs.group(1) if regs else "?"), (stack.group(1) if stack else "?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerbudget.kernels.aot_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    parser.add_argument("--all", action="store_true", help="compile the cross product of variants")
    parser.add_argument("--dump", type=Path, help="write each variant's TTGIR and PTX into this folder")
    parser.add_argument("--sass", action="store_true",
                        help="count the decode kernels' instructions per weight in their K loop (static SASS)")
    parser.add_argument("--csv", type=Path, help="with --sass: also write the counts to this CSV file")
    parser.add_argument("--match", default="",
                        help="with --sass: only the variants whose name contains this text (or one of several, comma-separated)")
    parser.add_argument("--max-registers", type=int, metavar="N",
                        help="with --sass: compile every variant with its registers capped at N (maxnreg), "
                             "whatever the table says")
    args = parser.parse_args(argv)
    from . import triton_common
    from .configs import MAX_REGISTERS, MIN_REGISTERS

    if triton_common.INTERPRET:
        print("aot_check: TRITON_INTERPRET is set; unset it to compile for CUDA.", file=sys.stderr)
        return 2
    if args.max_registers is not None and not (args.sass and MIN_REGISTERS <= args.max_registers <= MAX_REGISTERS):
        print(f"aot_check: --max-registers goes with --sass and takes a value in [{MIN_REGISTERS}, {MAX_REGISTERS}], "
              f"not {args.max_registers}.", file=sys.stderr)
        return 2
    if args.sass:
        return _sass_report(args.arch, args.csv, args.match, args.max_registers)
    failed = 0
    for i, v in enumerate(variants(args.all)):
        try:
            k = compile_variant(v, args.arch)
        except Exception as err:  # report every failing variant, then fail
            failed += 1
            print(f"FAIL sm_{args.arch} {v.name}:", *str(err).strip().splitlines()[-4:], sep="\n    ")
            continue
        regs, spill = resources(k.asm["cubin"])
        if not smem_fits(k.metadata.shared, args.arch):
            failed += 1
            print(f"FAIL sm_{args.arch} {v.name}: needs {k.metadata.shared} bytes of shared memory, more than the "
                  f"{SMEM_LIMIT.get(args.arch, SMEM_LIMIT[90])} a program may use")
            continue
        print(f"ok   sm_{args.arch} regs={regs:>4} stack={spill:>4} smem={k.metadata.shared:>6}  {v.name}")
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            for ext in ("ttgir", "ptx"):
                (args.dump / f"{i:02d}.{ext}").write_text(str(k.asm.get(ext, "")))
            (args.dump / f"{i:02d}.cubin").write_bytes(k.asm["cubin"])
    return 1 if failed else 0


def _sass_report(arch: int, csv_path: Path | None, match: str = "", max_registers: int | None = None) -> int:
    """Print (and optionally write) the static instruction count per weight of each decode variant, its
    registers and the stack its spills take (``max_registers``: compile every variant with that cap)."""
    import csv

    from . import sass

    rows, failed = [], 0
    chosen = [v for v in decode_variants() if any(part in v.name for part in match.split(","))]
    if max_registers is not None:
        chosen = [replace(v, max_registers=max_registers) for v in chosen]
    if not chosen:
        print(f"aot_check: no variant name contains {match!r}; names look like 'gemv M=1 w4g128'.", file=sys.stderr)
        return 2
    for v in chosen:
        try:
            k = compile_variant(v, arch)
        except Exception as err:  # report every failing variant, then fail
            failed += 1
            print(f"FAIL sm_{arch} {v.name}:", *str(err).strip().splitlines()[-4:], sep="\n    ")
            continue
        if not smem_fits(k.metadata.shared, arch):
            failed += 1
            print(f"FAIL sm_{arch} {v.name}: needs {k.metadata.shared} bytes of shared memory")
            continue
        loop = sass.hot_loop(sass.parse(sass.disassemble(k.asm["cubin"])))
        mix = sass.loop_mix(loop)
        regs, stack = resources(k.asm["cubin"])
        per_weight = len(loop.body) / v.weights_per_iter
        top = " ".join(f"{op}={n}" for op, n in mix.most_common(8))
        cap = "" if v.max_registers is None else f"/{v.max_registers}"
        print(f"sm_{arch} {v.name:<24} loop={len(loop.body):>4} weights/thread={v.weights_per_iter:>3} "
              f"instr/weight={per_weight:5.2f} regs={regs:>3}{cap} stack={stack:>3}  {top}")
        rows.append({"arch": f"sm_{arch}", "variant": v.name, "warps": v.num_warps, "regs": regs,
                     "max_registers": "" if v.max_registers is None else v.max_registers, "stack_bytes": stack,
                     "stages": v.num_stages, "shared_bytes": k.metadata.shared,
                     "loop_instructions": len(loop.body), "weights_per_thread": v.weights_per_iter,
                     "instructions_per_weight": round(per_weight, 3),
                     "mix": " ".join(f"{op}={n}" for op, n in sorted(mix.items()))})
    if csv_path is not None and rows:
        tmp = csv_path.with_name(csv_path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(csv_path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
