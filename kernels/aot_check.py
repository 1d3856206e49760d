"""Compile the Triton kernels ahead of time for a CUDA architecture, with no GPU needed.

The interpreter (``TRITON_INTERPRET=1``) checks numerics on CPU but accepts programs the real
compiler rejects; this check lowers kernel variants through Triton's CUDA backend (TTIR → TTGIR →
PTX → cubin with the ``ptxas`` bundled in the triton wheel) and reports each one's shared memory.
Usage: ``python -m layerbudget.kernels.aot_check [--arch 90] [--all]``; run it without
``TRITON_INTERPRET`` set. Exit status 1 if any variant fails to compile.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field

_GROUP_FOR_MODE = {0: 256, 1: 32, 2: 48}  # a group size that makes each META_MODE valid for the tiles below
_INTS = ("M", "N", "K", "stride_xm", "stride_pn", "stride_sn", "stride_om", "stride_vn", "stride_mn")


@dataclass(frozen=True)
class Variant:
    """One specialization of a kernel: pointer dtypes, constexprs and launch options."""

    kernel: str  # "lowbit" or "sparse"
    ptrs: dict[str, str]
    consts: dict[str, object]
    num_warps: int = 4
    num_stages: int = 3
    name: str = field(default="", compare=False)


def _lowbit(x: str, bits: int, mode: int, split: int, block: tuple[int, int, int], warps: int) -> Variant:
    meta = "*fp16"
    ptrs = {"x_ptr": x, "packed_ptr": "*i32", "scales_ptr": meta, "zeros_ptr": meta, "bias_ptr": "*fp32",
            "out_ptr": "*fp32" if split > 1 else x}
    consts = {"BITS": bits, "GROUP": _GROUP_FOR_MODE[mode], "META_MODE": mode, "META_IN_X": x == meta, "HAS_BIAS": True,
              "SPLIT_K": split, "BLOCK_M": block[0], "BLOCK_N": block[1], "BLOCK_K": block[2]}
    return Variant("lowbit", ptrs, consts, warps, name=f"lowbit x={x} b{bits} meta_mode={mode} split={split} {block}")


def _sparse(x: str, quant: bool, bits: int, mode: int, split: int, block: tuple[int, int, int]) -> Variant:
    ptrs = {"x_ptr": x, "values_ptr": "*i32" if quant else "*fp16", "meta_ptr": "*i32", "scales_ptr": "*bf16",
            "zeros_ptr": "*bf16", "bias_ptr": "*fp16", "out_ptr": "*fp32" if split > 1 else x}
    consts = {"QUANT": quant, "BITS": bits, "GROUP": _GROUP_FOR_MODE[mode], "META_MODE": mode, "META_IN_X": x == "*bf16",
              "HAS_BIAS": True, "SPLIT_K": split, "BLOCK_M": block[0], "BLOCK_N": block[1], "BLOCK_K": block[2]}
    return Variant("sparse", ptrs, consts, name=f"sparse x={x} quant={quant} b{bits} meta_mode={mode} split={split}")


def variants(full: bool = False) -> list[Variant]:
    """A quick set covering every code path, or (``full``) the cross product."""
    if not full:
        return [
            _lowbit("*fp16", 3, 0, 4, (16, 64, 128), 4),
            _lowbit("*bf16", 2, 1, 1, (128, 128, 64), 8),
            _lowbit("*fp16", 4, 2, 1, (32, 64, 64), 4),
            _sparse("*fp16", False, 4, 0, 2, (16, 64, 128)),
            _sparse("*bf16", True, 3, 1, 1, (64, 128, 128)),
        ]
    out = [
        _lowbit(x, b, t, s, blk, w)
        for x, b, t, s, (*blk, w) in itertools.product(
            ("*fp16", "*bf16"), (2, 3, 4, 8), (0, 1, 2), (1, 4), ((16, 64, 128, 4), (128, 128, 64, 8))
        )
    ]
    for x, quant, b, t, s in itertools.product(("*fp16", "*bf16"), (False, True), (3, 4), (0, 1, 2), (1, 2)):
        if quant or (b == 4 and t == 0):
            out.append(_sparse(x, quant, b, t, s, (16, 64, 128)))
    return out


def compile_variant(v: Variant, arch: int) -> int:
    """Compile one variant to a cubin; returns its static shared memory in bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from . import triton_lowbit, triton_sparse

    fn = triton_lowbit._lowbit_matmul_kernel if v.kernel == "lowbit" else triton_sparse._sparse24_matmul_kernel
    sig = {a: v.ptrs[a] if a in v.ptrs else "i32" for a in fn.arg_names if a in v.ptrs or a in _INTS}
    sig.update({c: "constexpr" for c in v.consts})
    src = ASTSource(fn, sig, dict(v.consts))
    opts = {"num_warps": v.num_warps, "num_stages": v.num_stages}
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    return int(kernel.metadata.shared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerbudget.kernels.aot_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    parser.add_argument("--all", action="store_true", help="compile the full cross product of variants")
    args = parser.parse_args(argv)
    from . import triton_lowbit

    if triton_lowbit.INTERPRET:
        print("aot_check: TRITON_INTERPRET is set; unset it to compile for CUDA.", file=sys.stderr)
        return 2
    failed = 0
    for v in variants(args.all):
        try:
            print(f"ok   sm_{args.arch} smem={compile_variant(v, args.arch):>6}  {v.name}")
        except Exception as err:  # report every failing variant, then fail
            failed += 1
            print(f"FAIL sm_{args.arch} {v.name}:", *str(err).strip().splitlines()[-4:], sep="\n    ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
