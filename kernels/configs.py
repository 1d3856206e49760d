"""Launch configurations (kernel, block sizes, split-K) and the dispatch rule between the three paths.

Block sizes come from a small table rather than ``triton.autotune`` so that the same choice is made
on a CPU host (interpreter tests) and on a GPU, and no timing runs at first call. The table's
values and the dispatch thresholds are read off ``python -m layerbudget.kernels.bench --tune`` on
an H200 (the fastest configuration per path, ``best_path`` for the crossovers; the CSV is under
``profiles/data/latency/``), except the tensor-core tile for M > 64, chosen from the compiled
kernels' static counts (``aot_check --sass``: multiply-adds per issued instruction, no spills), and
the 2:4 tensor-core kernels' pipeline depth at up to 16 rows, chosen from the bytes it keeps in
flight (``benchmarks/kernel_targets.py --sass``); ``--tune`` times both against their alternatives.
Split-K exists for every fused kernel (decode and tensor-core).

Dispatch rule, per format (``lowbit``, ``sparse24``, ``sparse24_quant``) and code width, with CUDA
tensors, fp16/bf16 activations and Triton installed (an entry ``"lowbit/3"`` of a threshold table
holds for 3-bit codes of that format; a format's own entry for the widths without one):

- ``M <= GEMV_MAX_M[format]``: the decode kernel (``kernel="gemv"``, CUDA cores, one FMA per weight);
- ``M < DEQUANT_MIN_M[format]``: the tensor-core kernel (``kernel="tc"``, dequantized tiles in ``tl.dot``; up to
  16 rows of low-bit codes take one dot per packed field, :mod:`.triton_fielddot`, a chunk per step);
- else: a Triton kernel dequantizes the weight once and ``F.linear`` (cuBLAS) multiplies.

On CPU tensors the torch reference runs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .packing import PACK_BITS, chunk_units, chunk_values, fields_per_unit
from .sparse24 import meta_layout

FORMATS = ("lowbit", "sparse24", "sparse24_quant")
KERNELS = ("gemv", "tc")
DISPATCH_PATHS = (*KERNELS, "dequant")  # what the dispatch rule picks among (the bench times each)

# Decode kernel up to this many rows; tensor-core kernel below DEQUANT_MIN_M; dequantize + cuBLAS above.
# Keys: a format, or "format/bits" for one code width of it (``benchmarks/fit_dispatch.py`` prints both).
# On the H200 the dequantize path was the fastest measured at M = 16, 64 and 256 for every format.
GEMV_MAX_M: dict[str, int] = {"lowbit": 4, "sparse24": 4, "sparse24_quant": 4}
DEQUANT_MIN_M: dict[str, int] = {"lowbit": 16, "sparse24": 16, "sparse24_quant": 16}

# Programs wanted in flight to fill a GPU (132 SMs on an H100/H200, a few programs each; one each for
# the tensor-core kernel's large tiles, whose 8 warps hold ~240 registers each).
TARGET_PROGRAMS = 4 * 132
LARGE_TILE_PROGRAMS = 132
MAX_SPLIT_K = 16
GEMV_ROWS = (1, 2, 4)
# What a launch may cap a thread's registers to (``max_registers``): sm_90's ptxas uses 24 under any lower cap,
# and a thread addresses at most 255.
MIN_REGISTERS, MAX_REGISTERS = 24, 255


@dataclass(frozen=True)
class LaunchConfig:
    """One kernel launch: which kernel, tile sizes (``block_k`` in values of K per step) and split-K.

    ``num_stages``: Triton's software-pipelining depth for the tensor-core kernels; for the low-bit
    decode kernel, 2 or more reads each step's packed words one step ahead and 1 reads them in place.
    ``max_registers``: registers per thread the compiler may use (Triton's ``maxnreg``; ``None``: its own
    choice), which sets how many programs an SM holds at once; ``ptxas`` also schedules by it (a cap above
    what it picks alone can make it use more), so a cap is kept only where the bench times it faster.
    """

    kernel: str
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    max_registers: int | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"`kernel` must be one of {KERNELS}, but got kernel={self.kernel!r}.")
        if self.kernel == "gemv" and self.block_m not in GEMV_ROWS:
            raise ValueError(f"gemv `block_m` must be one of {GEMV_ROWS}, but got block_m={self.block_m}.")
        small = 1 if self.kernel == "gemv" else 16
        for name, lo in (("block_m", 1 if self.kernel == "gemv" else 8), ("block_n", small), ("block_k", 16)):
            v = getattr(self, name)
            if v < lo or v & (v - 1):
                raise ValueError(f"`{name}` must be a power of two >= {lo}, but got {name}={v}.")
        if self.split_k < 1 or self.split_k > MAX_SPLIT_K:
            raise ValueError(f"`split_k` must be in [1, {MAX_SPLIT_K}], but got split_k={self.split_k}.")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"`num_warps` must be one of 1, 2, 4, 8, 16, but got num_warps={self.num_warps}.")
        r = self.max_registers
        if r is not None and (not isinstance(r, int) or isinstance(r, bool) or not MIN_REGISTERS <= r <= MAX_REGISTERS):
            raise ValueError(f"`max_registers` must be None or an integer in [{MIN_REGISTERS}, {MAX_REGISTERS}], "
                             f"but got max_registers={r!r}.")

    @property
    def name(self) -> str:
        """The launch as the bench CSVs name it (``config_gemv``/``config_tc``), e.g. ``tc:m16n128k128s1w4p3``,
        with ``r<registers>`` at the end where registers are capped (``gemv:m1n128k128s8w8p2r128``)."""
        return (f"{self.kernel}:m{self.block_m}n{self.block_n}k{self.block_k}s{self.split_k}"
                f"w{self.num_warps}p{self.num_stages}" + ("" if self.max_registers is None else f"r{self.max_registers}"))

    @classmethod
    def from_name(cls, name: str) -> LaunchConfig:
        """The configuration :attr:`name` names; a name of another form is a ``ValueError`` showing the form."""
        got = _NAME.fullmatch(name.strip())
        if got is None:
            raise ValueError("a launch is named like tc:m16n128k128s1w4p3 (kernel:m<rows>n<cols>k<depth>s<split>"
                             f"w<warps>p<stages>, then r<registers> where they are capped), not {name!r}")
        *sizes, regs = got.groups()[1:]
        return cls(got[1], *(int(v) for v in sizes), None if regs is None else int(regs))

    @property
    def launch_options(self) -> dict[str, int]:
        """Triton's launch options for this configuration (``num_warps``, ``num_stages``, and ``maxnreg`` if capped)."""
        cap = {} if self.max_registers is None else {"maxnreg": self.max_registers}
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, **cap}


_NAME = re.compile(rf"({'|'.join(KERNELS)}):m(\d+)n(\d+)k(\d+)s(\d+)w(\d+)p(\d+)(?:r(\d+))?")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def split_for(programs: int, steps: int, target: int = TARGET_PROGRAMS, min_steps: int = 2) -> int:
    """Split-K factor (a power of two) that brings ``programs`` towards ``target`` while every split
    keeps at least ``min_steps`` of the ``steps`` K steps."""
    split = 1
    while (split * 2 <= MAX_SPLIT_K and programs * split * 2 <= target
           and steps >= split * 2 * min_steps):
        split *= 2
    return split


def gemv_rows(m: int) -> int:
    """Activation rows per decode program."""
    return 1 if m == 1 else 2 if m == 2 else 4


@functools.lru_cache(maxsize=4096)
def pick_config(m: int, n: int, k: int, fmt: str = "lowbit", kernel: str | None = None,
                bits: int | None = None, group: int | None = None) -> LaunchConfig:
    """The launch for ``y[M, N] = x[M, K] @ W[N, K]^T`` of one format (``kernel=None``: by the dispatch rule);
    ``bits`` and ``group`` (``None``: whole rows): the low-bit width and group size, where they change the launch."""
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {KERNELS} or None, but got kernel={kernel!r}.")
    kernel = kernel or fused_kernel(m, fmt, bits)
    if kernel == "gemv":  # the H200's fastest at M = 1 on the Llama shapes, for most formats
        bm = gemv_rows(m)
        bn, bk, warps = (128, 128, 8) if fmt == "lowbit" else (64, 128, 4)
        if fmt == "lowbit" and bits == 8:  # one 64-value chunk a step: with two, 128 rows spill registers at
            bk = 64  # M = 4, and 64 rows make Triton 3.6 load and convert the activations twice (aot_check --sass)
        stages = 2 if fmt == "lowbit" else 1  # low-bit: read the next step ahead (see triton_gemv)
        split = split_for(_cdiv(n, bn) * _cdiv(m, bm), k_steps("gemv", fmt, k, bits, bm, bk))
        return LaunchConfig("gemv", bm, bn, bk, split, warps, stages)
    target = TARGET_PROGRAMS
    rows = 8 if m <= 8 else 16
    if fmt == "lowbit" and m <= 16 and bits is not None and field_dots(bits, group, k, rows):
        # one dot per field (triton_fielddot), a chunk per step; half the tile for 2/3-bit codes, where 128 rows
        # take (nearly) all 255 registers (and spill in the plain-Triton build, LAYERBUDGET_INLINE_PTX=0); two
        # chunks read ahead (3 stages): twice the bytes in flight of one for a few percent more instructions
        bn, bk = (128 if bits in (4, 8) else 64), chunk_values(bits, k)
        return LaunchConfig("tc", rows, bn, bk, split_for(_cdiv(n, bn) * _cdiv(m, rows), _cdiv(k, bk)), 2, 3)
    if m <= 16:
        bm, bn, bk, warps = 16, 64, 128, 4
    elif m <= 64:
        bm, bn, bk, warps = (32 if m <= 32 else 64), 64, 128, 4
    else:  # large tiles (one program fills an SM): low-bit K steps of 128 feed each dequantized weight to more
        # MMAs; the 2:4 kernels hold every kept value's position (and code) of the step, so their steps stay at 64
        bm, bn, bk, warps = (64 if m <= 128 else 128), 128, (128 if fmt == "lowbit" else 64), 8
        target = LARGE_TILE_PROGRAMS
    split = split_for(_cdiv(n, bn) * _cdiv(m, bm), k_steps("tc", fmt, k, bits, bm, bk), target)
    # the 2:4 kernels at few rows: a step of one field (a few KB), so their loads stay in flight by depth: four
    # steps ahead (more makes the 2:4 + low-bit loop longer, aot_check --sass)
    stages = 5 if fmt != "lowbit" and m <= 16 else 3
    return LaunchConfig("tc", bm, bn, bk, split, warps, stages)


def field_dots(bits: int, group: int | None, k: int, rows: int) -> bool:
    """Whether the one-dot-per-field tensor-core kernel (:mod:`.triton_fielddot`) takes rows of ``k`` codes of
    ``bits`` bits in groups of ``group`` (``None``: whole rows), ``rows`` activation rows per program: 2/3/4/8-bit
    codes, up to 16 rows, chunks of at least 8 units (a dot's K of 16) whose fields (``2 C`` values each) stay in
    one group."""
    if bits not in (2, 3, 4, 8) or rows > 16:
        return False
    cu = chunk_units(bits, k)
    return cu >= 8 and (group or k) % (2 * cu) == 0


def threshold_key(fmt: str, bits: int | None = None) -> str:
    """The key of a threshold table that holds for ``fmt`` with ``bits``-bit codes (``None``: the format's own)."""
    _check_format(fmt)
    if bits is None or fmt == "sparse24":  # 2:4 fp16 has no codes
        return fmt
    if bits not in PACK_BITS:
        raise ValueError(f"`bits` must be one of {PACK_BITS} or None for format {fmt!r}, but got bits={bits!r}.")
    return f"{fmt}/{bits}"


def check_thresholds(table: dict[str, int]) -> None:
    """Raise ``ValueError`` unless every format has an entry and every other key is ``"format/bits"`` of a code
    width (see :func:`threshold_key`), every value a non-negative integer."""
    missing = [f for f in FORMATS if f not in table]
    known = set(FORMATS) | {f"{f}/{b}" for f in FORMATS if f != "sparse24" for b in PACK_BITS}
    unknown = sorted(set(table) - known)
    if missing or unknown:
        raise ValueError(f"a dispatch threshold table needs an entry per format {list(FORMATS)} and takes "
                         f"\"format/bits\" keys with bits in {PACK_BITS}, but lacks {missing} and has unknown {unknown}.")
    bad = {key: v for key, v in table.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0}
    if bad:
        raise ValueError(f"dispatch thresholds must be non-negative integers, but got {bad}.")


def _threshold(table: dict[str, int], fmt: str, bits: int | None) -> int:
    key = threshold_key(fmt, bits)
    return table.get(key, table[fmt])


def gemv_max_m(fmt: str, bits: int | None = None) -> int:
    """Most rows the decode kernel takes for one format and code width (see module docstring)."""
    return _threshold(GEMV_MAX_M, fmt, bits)


def dequant_min_m(fmt: str, bits: int | None = None) -> int:
    """Fewest rows the dequantize path takes for one format and code width (see module docstring)."""
    return _threshold(DEQUANT_MIN_M, fmt, bits)


def dispatch_path(m: int, fmt: str, bits: int | None = None) -> str:
    """``"gemv"``, ``"tc"`` or ``"dequant"``: the path the rule gives ``m`` rows of one format and code width."""
    if m >= dequant_min_m(fmt, bits):  # first, as in the modules: a decode range reaching past it is cut there
        return "dequant"
    return fused_kernel(m, fmt, bits)


def fused_kernel(m: int, fmt: str, bits: int | None = None) -> str:
    """The fused kernel for ``m`` rows of one format and code width, whatever ``DEQUANT_MIN_M`` says: ``"gemv"``
    up to ``GEMV_MAX_M``, else ``"tc"`` (what a launch on the Triton path takes)."""
    return "gemv" if m <= gemv_max_m(fmt, bits) else "tc"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown kernel format {fmt!r}; known formats: {sorted(FORMATS)}.")


def tc_step_fields(bits: int, k: int, group: int, block_k: int) -> int | None:
    """``JB``: fields of each halfword one tensor-core step takes, a power of two up to ``E / 2`` whose run
    of ``2 * JB * CU`` values (the dot's K) holds at least 16, as near ``block_k`` as allowed; ``None`` when
    no run qualifies or a field's ``2 CU`` values would span two quantization groups (then dequantize)."""
    cu, h = chunk_units(bits, k), fields_per_unit(bits) // 2
    if group % (2 * cu):
        return None
    fits = [jb for jb in (1, 2, 4, 8) if jb <= h and 2 * jb * cu >= 16]
    if not fits:
        return None
    near = [jb for jb in fits if 2 * jb * cu <= max(16, block_k)]
    return max(near) if near else min(fits)


def tc24_fields(block_m: int, cu: int, quant: bool) -> int:
    """Fields per iteration of the 2:4 tensor-core kernel's field loop. Codes (``quant``) up to 64 activation
    rows: 4, unrolled, so each field's position shifts (and for 2/4/8-bit codes its code shifts) are
    constants and a group's scale is read once per run. Otherwise one step (a field, two with one unit
    per chunk): above 64 rows one stage's activations stay within every architecture's shared memory,
    and kept fp16/bf16 values, read per field, would be copied through shared memory when unrolled."""
    return 4 if quant and block_m <= 64 else (1 if cu > 1 else 2)


def tc24_chunks(cu: int, block_k: int, fields: int = 1) -> int:
    """Chunks per 2:4 tensor-core step (a power of two): an iteration's ``fields`` fields span ``block_k``
    dense columns, and one field's tile at least 16 (a dot's K)."""
    per_chunk = 2 * cu if cu > 1 else 4  # dense columns one field (pair of fields) of a chunk covers
    steps = fields if cu > 1 else max(1, fields // 2)
    block_c = max(1, block_k // (per_chunk * steps), -(-16 // per_chunk))
    return 1 << (block_c - 1).bit_length()


def tc24_steps(k: int, bits: int | None, block_m: int, block_k: int) -> int:
    """Steps (of :func:`tc24_chunks` chunks) of the 2:4 tensor-core kernel along a row of ``k`` dense columns
    whose kept values are ``bits``-bit codes (``None``: 16-bit values, laid out as 2-bit codes)."""
    e, chunk = meta_layout(k, bits)
    cu = chunk // e
    return _cdiv((k // 2) // chunk, tc24_chunks(cu, block_k, tc24_fields(block_m, cu, bits is not None)))


def k_steps(kernel: str, fmt: str, k: int, bits: int | None, block_m: int, block_k: int) -> int:
    """Steps along a row of ``k`` columns of one launch (what split-K divides): ``block_k`` values of K (kept
    values for 2:4) a step, but the 2:4 tensor-core kernel's steps of :func:`tc24_chunks` chunks."""
    if kernel == "tc" and fmt != "lowbit":
        return tc24_steps(k, bits if fmt == "sparse24_quant" else None, block_m, block_k)
    return _cdiv(k if fmt == "lowbit" else k // 2, block_k)
